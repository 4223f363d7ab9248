"""What every loader promises, whichever backend reads the data.

A training loader (`TwoViewLoader`) yields `(online_view, target_view, labels)`: NCHW float tensors in
channels-last memory, one global batch split evenly over the ranks, the same batches for the same
(seed, epoch) wherever an epoch is resumed. An evaluation loader (`ImageLoader`) yields `(images, labels)`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch loads with a backend, not with the config's checks
    import torch

Batch = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]


@runtime_checkable
class TwoViewLoader(Protocol):
    backend: str
    classes: list[str]  # class names in label order
    num_classes: int
    num_samples: int  # images in the data (an epoch reads the full global batches of them)
    # seconds the first epoch waited for its first batch (FFCV: numba compilation; others: worker start-up),
    # None before that epoch starts
    compile_seconds: float | None

    def __len__(self) -> int:
        """Steps per epoch."""

    def set_resolution(self, pixels: int) -> None:
        """Crop size of the following epochs (progressive resizing)."""

    def iterate(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        """One epoch's batches, the first `skip_batches` left out (a resumed epoch)."""


@runtime_checkable
class ImageLoader(Protocol):
    classes: list[str]  # class names in label order

    def __len__(self) -> int:
        """Batches per pass."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass of (images, labels); iterable more than once."""


class FirstBatchClock:
    """Sets `loader.compile_seconds` to the wait for the first batch of the first epoch it times."""

    def __init__(self, loader):
        self.loader = loader
        self.started = time.perf_counter()

    def batch_arrived(self) -> None:
        if self.loader.compile_seconds is None:
            self.loader.compile_seconds = time.perf_counter() - self.started


def check_same_classes(first: ImageLoader, first_name: str, second: ImageLoader, second_name: str) -> None:
    """Two sets whose labels are compared (k-NN memory vs held-out images, probe train vs val, neighbour queries vs
    gallery) must index the same classes: ValueError naming the classes missing on each side, or the first two
    classes that trade places."""
    problem = classes_problem(first.classes, first_name, second.classes, second_name)
    if problem:
        raise ValueError(problem)


def classes_problem(first: list[str], first_name: str, second: list[str], second_name: str) -> str | None:
    """Why two lists of class names in label order give labels that do not match (None when they match)."""
    if first == second:
        return None
    only_first = sorted(set(first) - set(second))
    only_second = sorted(set(second) - set(first))
    if not only_first and not only_second:
        swapped = next(index for index, (a, b) in enumerate(zip(first, second)) if a != b)
        return (f"{first_name} and {second_name} order their classes differently (class {swapped} is "
                f"{first[swapped]!r} in one and {second[swapped]!r} in the other): their labels do not match")
    differences = [f"{_listed(names)} only in {name}" for names, name in ((only_first, first_name),
                                                                         (only_second, second_name)) if names]
    return (f"{first_name} and {second_name} have different classes: {', '.join(differences)}; their labels would "
            "not match")


def _listed(names: list[str], shown: int = 5) -> str:
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")
