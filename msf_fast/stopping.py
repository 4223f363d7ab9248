"""Why a run stops before its last step, and how every rank agrees on the step it stops at.

- A preemption signal (SIGTERM, SIGUSR1: what clusters send before they take a node back) or Ctrl-C (SIGINT): the
  run finishes its step, writes a step-exact checkpoint and exits with 128 + the signal's number. A second Ctrl-C
  interrupts at once.
- A non-finite loss (or non-finite weights about to be saved): the run stops without saving (the last good
  checkpoint stays) and exits 1.
- A checkpoint that cannot be written (disk full, unwritable folder): the run stops and exits 1; the previous
  checkpoint stays.

Under torchrun the ranks agree at each log interval, over a gloo group (a CPU all-reduce that does not wait for
the GPU): a signal that reached any rank stops every rank at the same step. A single process checks every step.
"""
from __future__ import annotations

import math
import os
import signal
import threading

import torch
import torch.distributed as dist

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_SIGNALS = (*PREEMPTION_SIGNALS, signal.SIGINT)
NONE = -2**62  # "no non-finite step" in the all-reduced flags


class RunStopped(Exception):
    """The run stopped early; `exit_code` is the process's, the message one line for the user."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    """Preemption signals received, and non-finite losses seen, as one decision per check."""

    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.signal: int | None = None
        self.nonfinite: tuple[int, float] | None = None  # (step, loss) of the first non-finite loss seen
        self._group = dist.new_group(backend="gloo") if world_size > 1 else None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._received)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _received(self, number, frame) -> None:
        if number == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: now, without the checkpoint
        if number == signal.SIGINT and self.signal is None and (self._group is None or dist.get_rank() == 0):
            # os.write: a print could land inside the progress bar's own write to stderr (a reentrant call)
            os.write(2, b"\nCtrl-C: stopping after this step, with a checkpoint; Ctrl-C again stops at once, "
                        b"without it\n")
        self.signal = self.signal or number

    def check_loss(self, step: int, loss: float | None) -> None:
        if self.nonfinite is None and (loss is None or not math.isfinite(loss)):
            self.nonfinite = (step, loss)

    def agree(self, interval_end: bool, save_due: bool = False) -> tuple[bool, bool]:
        """(stop now, save a checkpoint now): with several ranks decided only at an interval's end, the same on
        every rank (the highest signal number and the earliest non-finite step any rank saw; a save that rank 0's
        clock asks for)."""
        if self._group is None:
            return self.signal is not None or self.nonfinite is not None, save_due
        if not interval_end:
            return False, False
        local = torch.tensor([self.signal or 0, -self.nonfinite[0] if self.nonfinite else NONE, int(save_due)],
                             dtype=torch.int64)
        dist.all_reduce(local, op=dist.ReduceOp.MAX, group=self._group)
        if local[0] and self.signal is None:
            self.signal = int(local[0])
        if local[1] > NONE and self.nonfinite is None:
            self.nonfinite = (int(-local[1]), math.nan)
        return self.signal is not None or self.nonfinite is not None, bool(local[2])

    def all_ranks_ok(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (e.g. rank 0 could write its checkpoint)."""
        if self._group is None:
            return ok
        flag = torch.tensor([int(ok)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self._group)
        return bool(flag[0])

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


def weights_finite(module: torch.nn.Module) -> bool:
    """Every floating parameter and buffer finite (one host sync)."""
    checks = [torch.isfinite(tensor).all() for tensor in module.state_dict().values() if tensor.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True
