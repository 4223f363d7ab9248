"""Epoch order shared by the backends: seeded per epoch, sharded per rank, resumable mid-epoch."""
from __future__ import annotations

import torch


def epoch_order(num_samples: int, epoch: int, seed: int, shuffle: bool = True) -> torch.Tensor:
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


def rank_batches(num_samples: int, batch_size: int, epoch: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> list[list[int]]:
    """This rank's batches of one epoch: full global batches only (the bank needs equal batches),
    each global batch split into `world_size` contiguous per-rank slices of `batch_size`."""
    global_batch = batch_size * world_size
    order = epoch_order(num_samples, epoch, seed, shuffle)
    steps = num_samples // global_batch
    return [order[s * global_batch + rank * batch_size: s * global_batch + (rank + 1) * batch_size].tolist()
            for s in range(steps)]


def per_sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample's augmentation, independent of worker assignment and skipped batches."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index
