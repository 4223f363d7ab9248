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


def progressive_resolution(epoch: int, low: int, high: int, start_ramp: int, end_ramp: int) -> int:
    """ffcv-imagenet's schedule: `low` px until epoch `start_ramp`, then linear to `high` px at `end_ramp`, in
    steps of 32 px (epochs count from 0). low = 0 turns it off (always `high`)."""
    if not low or epoch >= end_ramp:
        return high
    if epoch <= start_ramp:
        return low
    fraction = (epoch - start_ramp) / (end_ramp - start_ramp)
    return min(high, int(round((low + fraction * (high - low)) / 32)) * 32)
