"""The baseline backend: torchvision ImageFolder + PIL transforms + DataLoader workers.

It reproduces the original MSF loader (same transforms, same order, PIL Gaussian blur) and is
the reference for the faster backends' correctness and speed, and their fallback.
"""
from __future__ import annotations

import dataclasses
import random

import torch
from PIL import ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision import datasets, transforms

from pipelines.recipe import TwoViewRecipe, ViewRecipe
from pipelines.sampling import epoch_order, per_sample_seed, rank_batches


class RandomGaussianBlur:
    """PIL Gaussian blur with sigma ~ U(sigma_min, sigma_max), as in the original code."""

    def __init__(self, sigma: tuple[float, float]):
        self.sigma = sigma

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self):
        return f"RandomGaussianBlur(sigma={self.sigma})"


class Solarize:
    def __init__(self, threshold: float):
        self.threshold = round(threshold * 255)

    def __call__(self, image):
        return ImageOps.solarize(image, self.threshold)


def view_transform(view: ViewRecipe, recipe: TwoViewRecipe) -> transforms.Compose:
    ops = [transforms.RandomResizedCrop(recipe.resolution, scale=view.crop_scale, ratio=view.crop_ratio)]
    if view.jitter_p > 0:
        jitter = transforms.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)
        ops.append(transforms.RandomApply([jitter], p=view.jitter_p))
    if view.grayscale_p > 0:
        ops.append(transforms.RandomGrayscale(p=view.grayscale_p))
    if view.blur_p > 0:
        ops.append(transforms.RandomApply([RandomGaussianBlur(view.blur_sigma)], p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(transforms.RandomApply([Solarize(view.solarize_threshold)], p=view.solarize_p))
    if view.flip_p > 0:
        ops.append(transforms.RandomHorizontalFlip(p=view.flip_p))
    ops += [transforms.ToTensor(), transforms.Normalize(recipe.mean, recipe.std)]
    return transforms.Compose(ops)


def image_folder(root: str, transform=None) -> datasets.ImageFolder:
    """torchvision's ImageFolder, with the folder named in its errors."""
    try:
        return datasets.ImageFolder(root, transform)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{root}: {error}") from None


def eval_transform(recipe: TwoViewRecipe) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(recipe.eval_resize),
        transforms.CenterCrop(recipe.resolution),
        transforms.ToTensor(),
        transforms.Normalize(recipe.mean, recipe.std),
    ])


class TwoViewImageFolder(Dataset):
    """ImageFolder yielding (online_view, target_view, label), each sample's randomness seeded by
    (seed, epoch, index) so that an epoch is reproducible whatever the worker count or resume point."""

    def __init__(self, root: str, recipe: TwoViewRecipe, seed: int = 0):
        self.images = image_folder(root)
        self.set_recipe(recipe)
        self.seed = seed
        self.epoch = 0

    def set_recipe(self, recipe: TwoViewRecipe) -> None:
        self.recipe = recipe
        self.online_transform = view_transform(recipe.online, recipe)
        self.target_transform = view_transform(recipe.target, recipe)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image, label = self.images[index]
        seed = per_sample_seed(self.seed, self.epoch, index)
        if get_worker_info() is None:  # in the main process: leave the caller's RNG streams alone
            python_state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                online, target = self._two_views(image, seed)
            random.setstate(python_state)
        else:
            online, target = self._two_views(image, seed)
        return online, target, label

    def _two_views(self, image, seed):
        torch.manual_seed(seed)
        random.seed(seed)
        return self.online_transform(image), self.target_transform(image)


class TorchvisionTwoViewLoader:
    """Batches of (online_view, target_view, label), NCHW float32 in channels-last memory."""

    backend = "torch"

    def __init__(self, root: str, recipe: TwoViewRecipe, batch_size: int, workers: int = 2,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
        self.dataset = TwoViewImageFolder(root, recipe, seed)
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        if len(self) == 0:
            raise ValueError(f"{root}: {len(self.dataset)} images make no full batch of "
                             f"{batch_size} x {world_size} rank(s)")

    @property
    def num_classes(self) -> int:
        return len(self.dataset.images.classes)

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)

    def set_resolution(self, resolution: int) -> None:
        """Crop size of the following epochs (progressive resizing)."""
        self.dataset.set_recipe(dataclasses.replace(self.dataset.recipe, resolution=resolution))

    def iterate(self, epoch: int, skip_batches: int = 0):
        self.dataset.epoch = epoch
        batches = rank_batches(len(self.dataset), self.batch_size, epoch, self.seed,
                               self.rank, self.world_size)[skip_batches:]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.pin_memory, prefetch_factor=4 if self.workers else None)
        for online, target, labels in loader:
            yield (online.contiguous(memory_format=torch.channels_last),
                   target.contiguous(memory_format=torch.channels_last), labels)


class ShuffledImageLoader:
    """(images, labels) batches of a dataset (or of its `indices`), in a new seeded order on every pass."""

    def __init__(self, dataset, batch_size: int, workers: int = 2, seed: int = 0, indices=None):
        self.dataset = dataset
        self.indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices)
        self.batch_size, self.workers, self.seed = batch_size, workers, seed
        self.passes = 0

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        order = self.indices[epoch_order(len(self.indices), self.passes, self.seed)].tolist()
        self.passes += 1
        loader = DataLoader(torch.utils.data.Subset(self.dataset, order), batch_size=self.batch_size,
                            num_workers=self.workers)
        for images, labels in loader:
            yield images.contiguous(memory_format=torch.channels_last), labels
