"""What a run folder holds: the files a run writes there, whether a run is there, and clearing them.

Torch-free, so that train_imagenet.py's checks of the folder answer before torch loads.
"""
from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

# What a run writes into its folder (the eval commands' default outputs included): a fresh run refuses a folder
# holding a run, and logging.overwrite deletes exactly these.
RUN_OUTPUTS = ("checkpoints", "log.jsonl", "training.png", "tensorboard", "summary.json", "report.md", "report",
               "linear_probe", "knn.json", "linear.json", "semi.json", "tsne.json", "neighbours.json",
               "clusters.json")


def our_checkpoints(folder: str | Path) -> list[Path]:
    """The files a run writes into FOLDER/checkpoints (latest.pt, previous.pt, the epoch snapshots, the temporary
    names of an interrupted save): what counts as a run there, and all that an overwrite deletes there."""
    checkpoints = Path(folder) / "checkpoints"
    if not checkpoints.is_dir():
        return []
    return [path for path in checkpoints.iterdir() if re.fullmatch(r"(latest|previous|epoch_\d{4,})\.pt", path.name)
            or re.fullmatch(r"\.(latest|previous|epoch_\d{4,})\.pt\.(partial|previous)-\d+", path.name)]


def holds_run(folder: str | Path) -> bool:
    """A run's log or checkpoints are there."""
    return (Path(folder) / "log.jsonl").exists() or bool(our_checkpoints(folder))


def holds_other_run(folder: str | Path, checkpoint: str | Path) -> bool:
    """`folder` holds a run that `checkpoint` is not a checkpoint of: resuming `checkpoint` there would replace that
    run's checkpoints and extend its log."""
    own = (Path(folder) / "checkpoints").resolve()
    return holds_run(folder) and Path(checkpoint).resolve().parent != own


def other_run_message(folder, checkpoint) -> str:
    return (f"train.resume={checkpoint}: logging.folder={folder} holds another run, which resuming there would "
            f"overwrite: resume into an empty --logging.folder, or continue {folder}'s own run with "
            "--train.resume=auto")


def run_outputs(folder: str | Path) -> list[Path]:
    """The outputs of a run found in `folder` (empty: it holds no run)."""
    return [Path(folder) / name for name in RUN_OUTPUTS if (Path(folder) / name).exists()]


def clear_run(folder: str | Path) -> None:
    """Delete the run's outputs; in checkpoints/, only the run's own files (a model the user keeps there stays)."""
    for path in run_outputs(folder):
        if path.name == "checkpoints" and path.is_dir() and not path.is_symlink():
            for checkpoint in our_checkpoints(folder):
                checkpoint.unlink()
            with contextlib.suppress(OSError):
                path.rmdir()  # when nothing else is left in it
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
