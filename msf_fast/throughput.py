"""Where a run's time goes: waiting for the loader, or in the training step.

The wait is the host's wall time blocked on the loader for the next batch. The step is the wall time of the
step on the CPU; on CUDA, where the host returns before the GPU has finished, it is the GPU time between events
recorded around each step, read at the log interval and at the epoch's end (no host sync per step).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

LOADER_BOUND_WAIT = 0.1  # a run that waits for data more than this share of its time is bound by its loader


@dataclass
class TimeSplit:
    images: int = 0
    seconds: float = 0.0  # wall time of the whole span
    data_wait_seconds: float = 0.0
    step_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        busy = self.data_wait_seconds + self.step_seconds
        return self.data_wait_seconds / busy if busy > 0 else 0.0

    @property
    def bound(self) -> str:
        return "loader" if self.data_wait_fraction > LOADER_BOUND_WAIT else "compute"

    def add(self, other: "TimeSplit") -> None:
        self.images += other.images
        self.seconds += other.seconds
        self.data_wait_seconds += other.data_wait_seconds
        self.step_seconds += other.step_seconds

    def record(self) -> dict:
        """The fields of a log record."""
        return {"images_per_s": round(self.images_per_s, 2), "data_wait_s": round(self.data_wait_seconds, 3),
                "step_s": round(self.step_seconds, 3), "data_wait_fraction": round(self.data_wait_fraction, 4)}

    def verdict(self) -> str:
        share = f"{self.data_wait_fraction:.0%} of the time waiting for data"
        return (f"bound: loader ({share}; a faster loader would speed the run up)" if self.bound == "loader" else
                f"bound: compute (the loader kept up: {share})")


class StepClock:
    """Times one span of steps (an epoch): `batches(iterable)` times the waits, `step()` brackets each step;
    `read()` returns the time split since the last read."""

    def __init__(self, device: torch.device, images_per_step: int):
        self.cuda = device.type == "cuda"
        self.images_per_step = images_per_step
        self._pending_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._split = TimeSplit()
        self._since = time.perf_counter()

    def batches(self, batches: Iterable) -> Iterator:
        iterator = iter(batches)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._split.data_wait_seconds += time.perf_counter() - started
            yield batch

    def step(self) -> "_StepSpan":
        return _StepSpan(self)

    def read(self, wait_for_gpu: bool = False) -> TimeSplit:
        """On CUDA, the steps the GPU has finished count now, the others at a later read (`wait_for_gpu`: all,
        after waiting for them, e.g. at the end of an epoch)."""
        if self._pending_events and wait_for_gpu:
            self._pending_events[-1][1].synchronize()
        while self._pending_events and self._pending_events[0][1].query():
            start, end = self._pending_events.pop(0)
            self._split.step_seconds += start.elapsed_time(end) / 1000
        now = time.perf_counter()
        split, self._split = self._split, TimeSplit()
        split.seconds, self._since = now - self._since, now
        return split


class _StepSpan:
    def __init__(self, clock: StepClock):
        self.clock = clock

    def __enter__(self):
        if self.clock.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        clock = self.clock
        clock._split.images += clock.images_per_step
        if clock.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            clock._pending_events.append((self.start, end))
        else:
            clock._split.step_seconds += time.perf_counter() - self.start
