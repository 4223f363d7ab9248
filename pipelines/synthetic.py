"""A loader without data: what the FFCV path does on the training device, for benchmarks.

`SyntheticTwoViewLoader` makes uint8 crops once, on the device (random pixels, NCHW in channels-last memory, as
FFCV hands its decoded crops over), and for every batch runs the recipe's photometric ops on them
(`pipelines.batched_augment`, the same ops and the same per-(seed, epoch, step, rank) parameters as the FFCV
backend). Nothing is read or decoded: a run fed by it measures the device's share of the work, augmentation and
training step, with no CPU-side loader to wait for.
"""
from __future__ import annotations

import torch

from pipelines.batched_augment import BatchedViewAugment
from pipelines.contract import FirstBatchClock
from pipelines.recipe import TwoViewRecipe
from pipelines.sampling import per_sample_seed

POOL = 2  # distinct uint8 batches per view, cycled (the ops never read the same memory twice in a row)


class SyntheticTwoViewLoader:
    """Batches of (online_view, target_view, labels) on `device`: NCHW `dtype` in channels-last memory.

    `steps_per_epoch` batches per epoch; labels are `batch index % num_classes`."""

    backend = "synthetic"

    def __init__(self, recipe: TwoViewRecipe, *, batch_size: int, steps_per_epoch: int, num_classes: int = 1000,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(f"batch_size and steps_per_epoch must be positive, got {batch_size}, {steps_per_epoch}")
        self.device = torch.device(device)
        self.batch_size, self.steps_per_epoch, self.num_classes = batch_size, steps_per_epoch, num_classes
        self.classes = [f"synthetic_{label}" for label in range(num_classes)]
        self.num_samples = batch_size * world_size * steps_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.online_augment = BatchedViewAugment(recipe.online, recipe.mean, recipe.std, dtype)
        self.target_augment = BatchedViewAugment(recipe.target, recipe.mean, recipe.std, dtype)
        self.labels = torch.arange(batch_size, device=self.device) % num_classes
        self.compile_seconds: float | None = None
        self.set_resolution(recipe.resolution)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_resolution(self, pixels: int) -> None:
        """New crops of `pixels` x `pixels`, made on the device."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        shape = (POOL, 2, self.batch_size, pixels, pixels, 3)  # NHWC: FFCV's layout before ToTorchImage
        crops = torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device, generator=generator)
        self.crops = crops.permute(0, 1, 2, 5, 3, 4)  # (pool, view, N, 3, H, W), channels-last strides

    def iterate(self, epoch: int, skip_batches: int = 0):
        clock = FirstBatchClock(self)
        for step in range(skip_batches, self.steps_per_epoch):
            online, target = self.crops[step % POOL]
            generator = torch.Generator().manual_seed(
                per_sample_seed(self.seed, epoch, step * self.world_size + self.rank))
            with torch.no_grad():
                online = self.online_augment(online, generator)
                target = self.target_augment(target, generator)
            clock.batch_arrived()
            yield online, target, self.labels
