"""Where a run keeps its checkpoints, when it writes them, and what it resumes from.

    RUN/checkpoints/latest.pt        the whole training state: every `checkpoint_every` epochs, every
                                     `checkpoint_minutes` (step-exact, mid-epoch), on preemption and at the end
    RUN/checkpoints/previous.pt      the latest.pt before the last save: what resume=auto falls back to when
                                     latest.pt is damaged
    RUN/checkpoints/epoch_NNNN.pt    a snapshot every `snapshot_every` epochs, epoch 0 (the initialisation)
                                     included: the inputs of the figures over training

Only the writing rank (rank 0) writes. A state is built only when it is written, at most once per step. Every
file appears atomically (temporary name, fsync, rename); a save that fails leaves the previous files as they were.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from dataset_prep.progress import stops_deferred
from dataset_prep.staging import StagedPath
from msf_fast.checkpoint import ORIGINAL, OURS, atomic_save, read_checkpoint
from msf_fast.stopping import RunStopped

StateFn = Callable[[], dict]


class RunCheckpoints:
    def __init__(self, run_folder: str | Path, checkpoint_every: int, snapshot_every: int,
                 checkpoint_minutes: float = 0.0, writer: bool = True):
        self.folder = Path(run_folder) / "checkpoints"
        self.latest = self.folder / "latest.pt"
        self.previous = self.folder / "previous.pt"
        self.checkpoint_every, self.snapshot_every, self.writer = checkpoint_every, snapshot_every, writer
        self.seconds_between = 60 * checkpoint_minutes
        self.saved_step = -1  # the step latest.pt holds (-1: none written or resumed from)
        self.latest_damaged = False  # resumed from previous.pt: the next save must not make latest.pt the previous
        self._saved_at = time.monotonic()

    def save(self, step: int, state: StateFn, snapshot_epoch: int | None = None) -> Path | None:
        """latest.pt as of `step` (None on a rank that does not write); the latest.pt it replaces becomes
        previous.pt; with `snapshot_epoch`, also that epoch's snapshot. RunStopped (exit 1) when it cannot be
        written."""
        if not self.writer:
            return None
        content = state() if self.saved_step != step else None
        # a second Ctrl-C waits the second or so the files take: inside torch.save it surfaced as a failed write
        # (exit 1), and between the renames it left .partial files
        with stops_deferred():
            self._write(step, content, snapshot_epoch)
        self._saved_at = time.monotonic()
        return self.latest

    def _write(self, step: int, content: dict | None, snapshot_epoch: int | None) -> None:
        try:
            if content is not None:
                if self.latest.exists() and not self.latest_damaged:
                    self._link(self.latest, self.previous)
                atomic_save(content, self.latest)
                self.saved_step, self.latest_damaged = step, False
            if snapshot_epoch is not None:
                self._link(self.latest, self.snapshot_path(snapshot_epoch))
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            kept = f"; {self.latest} (step {self.saved_step}) is intact" if self.latest.exists() else ""
            raise RunStopped(f"cannot write the checkpoint {self.latest}: {write_failure(error, self.folder)}{kept}",
                             exit_code=1) from None

    def due_at_epoch_end(self, epoch: int) -> bool:
        return bool(self.checkpoint_every and epoch % self.checkpoint_every == 0) or self.snapshot_due(epoch)

    def snapshot_due(self, epoch: int) -> bool:
        return bool(self.snapshot_every and epoch % self.snapshot_every == 0)

    def due_by_time(self) -> bool:
        return self.writer and self.seconds_between > 0 and time.monotonic() - self._saved_at >= self.seconds_between

    def snapshot_path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.pt"

    def resumable(self, map_location, warn: Callable[[str], None]) -> tuple[Path, dict] | None:
        """(path, state) of the newest readable checkpoint, latest.pt or else previous.pt (with a warning); None
        when there is none. ValueError when they exist but none can be read."""
        problems = []
        for path in (self.latest, self.previous):
            if not path.exists():
                continue
            try:
                state = read_training_state(path, map_location)
            except ValueError as error:
                problems.append(str(error))
                continue
            if problems:
                warn(f"warning: {problems[0]}; resuming from {path} instead (kept until a new {self.latest.name} "
                     "is written)")
                self.latest_damaged = True
            return path, state
        if problems:
            raise ValueError("; ".join(problems))
        return None

    @staticmethod
    def _link(source: Path, destination: Path) -> None:
        """`destination` becomes a file with `source`'s bytes, atomically: a hard link where the filesystem has
        them (latest.pt is replaced by a new file at each save, so the link keeps these bytes), else a copy."""
        if destination.exists() and os.path.samefile(source, destination):  # a rename onto its own other name
            return                                                              # does nothing: the temporary stayed
        with StagedPath(str(destination)) as staged:
            os.remove(staged.temporary)
            try:
                os.link(source, staged.temporary)
            except OSError:
                shutil.copyfile(source, staged.temporary)


def write_failure(error: Exception, folder: Path) -> str:
    """Why a file could not be written, in a few words: the OS's reason, or for torch.save's RuntimeError ("unexpected
    pos ...") the full disk it usually means."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    first = (str(error).strip().splitlines() or [""])[0][:120]
    if free is not None and free < 64 * 2**20:
        return f"No space left on device ({free / 2**20:.0f} MiB free; torch.save: {first})"
    return f"torch.save failed ({first})"


def read_training_state(path: str | Path, map_location) -> dict:
    """The training state in one of our checkpoints (ValueError naming the file for anything else)."""
    checkpoint = read_checkpoint(path, map_location)
    if checkpoint.kind == ORIGINAL:
        raise ValueError(f"{path}: a checkpoint of the original MSF code, not an msf-fast training checkpoint "
                         "(import it with msf_fast.checkpoint.read_checkpoint(path).model())")
    if checkpoint.kind != OURS:
        raise ValueError(f"{path}: a torchvision backbone (as msf_fast.export writes), not an msf-fast training "
                         "checkpoint: it holds no heads, bank or optimizer to resume")
    return checkpoint.content
