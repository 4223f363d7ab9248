"""A run folder's evaluation report: each command writes its own section; report.md joins them.

Sections live in FOLDER/report/NAME.md (figures beside them, linked relatively), so commands run in any order
or again (a rerun replaces its section) and report.md always shows every result the folder has.
"""
from __future__ import annotations

from pathlib import Path

from dataset_prep.staging import StagedPath

SECTION_ORDER = ("demo", "knn", "linear", "semi", "tsne", "neighbours", "clusters")


def report_dir(folder: str | Path) -> Path:
    path = Path(folder) / "report"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_section(folder: str | Path, name: str, markdown: str) -> Path:
    """Write (or replace) section NAME and rebuild FOLDER/report.md; returns report.md's path."""
    sections = report_dir(folder)
    replace_text(sections / f"{name}.md", markdown.rstrip() + "\n")
    return rebuild(folder)


def rebuild(folder: str | Path) -> Path:
    sections = sorted(report_dir(folder).glob("*.md"), key=lambda p: (_rank(p.stem), p.stem))
    body = "\n".join(_relink(p.read_text(), p.parent.name) for p in sections)
    path = Path(folder) / "report.md"
    replace_text(path, "# Evaluation report\n\n" + body)
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def replace_text(path: Path, text: str) -> None:
    with StagedPath(str(path)) as staged:
        Path(staged.temporary).write_text(text)


def _rank(name: str) -> int:
    return SECTION_ORDER.index(name) if name in SECTION_ORDER else len(SECTION_ORDER)


def _relink(markdown: str, subfolder: str) -> str:
    """Sections link their figures as ](file.png); report.md sits one level up."""
    return markdown.replace("](./", f"]({subfolder}/")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
