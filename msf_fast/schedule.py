"""Learning-rate schedules (no warm-up, as in the paper's code)."""
from __future__ import annotations

import math


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    return lr_per_256 * global_batch / 256


def learning_rate(base_lr: float, schedule: str, step: int, steps_per_epoch: int, epochs: int) -> float:
    """lr at global `step`. cosine: per step; cosine_epoch: constant within an epoch, as the original."""
    total = steps_per_epoch * epochs
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "cosine_epoch":
        return base_lr * 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch) / epochs))
    raise ValueError(f"unknown schedule {schedule!r}")
