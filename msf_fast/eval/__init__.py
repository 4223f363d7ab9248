"""Evaluation of a pretrained backbone: the `python -m msf_fast.eval ...` commands (see cli.py).

arguments.py (every command's options, torch-free), knn.py (k-NN search and votes), knn_command.py (`knn`),
linear_probe.py (the probe's protocol), probe_commands.py (`linear`, `semi`), figures/ (`tsne`, `neighbours`,
`clusters`), report.py (report.md from sections), common.py (what they share).
"""

PROG = "python -m msf_fast.eval"  # the name every message of these commands starts with, as in their usage line


def main(argv: list[str] | None = None) -> int:
    from msf_fast.eval.cli import main as run
    return run(argv)
