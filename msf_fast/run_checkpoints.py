"""Where a run keeps its checkpoints, when it writes them, and what it resumes from.

    RUN/checkpoints/latest.pt        the whole training state: every `checkpoint_every` epochs and at the end
    RUN/checkpoints/epoch_NNNN.pt    a snapshot every `snapshot_every` epochs, epoch 0 (the initialisation)
                                     included: the inputs of the figures over training

Only the writing rank (rank 0) writes. A state is built only when it is written, at most once per step.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from dataset_prep.staging import StagedPath
from msf_fast.checkpoint import OURS, atomic_save, read_checkpoint

StateFn = Callable[[], dict]


class RunCheckpoints:
    def __init__(self, run_folder: str | Path, checkpoint_every: int, snapshot_every: int, writer: bool = True):
        self.folder = Path(run_folder) / "checkpoints"
        self.latest = self.folder / "latest.pt"
        self.checkpoint_every, self.snapshot_every, self.writer = checkpoint_every, snapshot_every, writer
        self._saved_step = -1

    def save(self, step: int, state: StateFn) -> Path | None:
        """latest.pt as of `step` (None on a rank that does not write)."""
        if not self.writer:
            return None
        if self._saved_step != step:
            atomic_save(state(), self.latest)
            self._saved_step = step
        return self.latest

    def started(self, state: StateFn) -> None:
        """The snapshot of epoch 0, before any step."""
        if self.snapshot_every:
            self._snapshot(0, 0, state)

    def epoch_ended(self, epoch: int, step: int, state: StateFn) -> None:
        if self.checkpoint_every and epoch % self.checkpoint_every == 0:
            self.save(step, state)
        if self.snapshot_every and epoch % self.snapshot_every == 0:
            self._snapshot(epoch, step, state)

    def snapshot_path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.pt"

    def _snapshot(self, epoch: int, step: int, state: StateFn) -> None:
        if self.save(step, state) is None:
            return
        with StagedPath(str(self.snapshot_path(epoch))) as snapshot:
            os.remove(snapshot.temporary)
            try:  # latest.pt is replaced by a new file at each save: a hard link keeps this one's bytes
                os.link(self.latest, snapshot.temporary)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(self.latest, snapshot.temporary)


def read_training_state(path: str | Path, map_location) -> dict:
    """The training state in one of our checkpoints (ValueError naming the file for anything else)."""
    checkpoint = read_checkpoint(path, map_location)
    if checkpoint.kind != OURS:
        raise ValueError(f"{path}: a {checkpoint.kind} checkpoint, not an msf-fast training checkpoint (import "
                         "original ones with msf_fast.checkpoint.read_checkpoint(path).model())")
    return checkpoint.content
