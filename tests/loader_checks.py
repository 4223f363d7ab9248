"""Checks every fast backend must pass, measured on the images it yields (shared by the FFCV and DALI tests)."""
from __future__ import annotations

import torch

from pipelines import build_train_loader
from pipelines.recipe import RECIPE_NAMES, two_view_recipe

RESOLUTION = 32


def unnormalize(views: torch.Tensor, recipe) -> torch.Tensor:
    """Back to 0..255 pixel values."""
    mean = torch.tensor(recipe.mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std).view(1, 3, 1, 1)
    return (views.float() * std + mean) * 255


def crop_areas(pixels: torch.Tensor) -> torch.Tensor:
    """Fraction of a coordinate image (x in red, y in green, 2 levels per pixel) that each crop covers."""
    width = (pixels[:, 0].amax((1, 2)) - pixels[:, 0].amin((1, 2)) + 2) / 256
    height = (pixels[:, 1].amax((1, 2)) - pixels[:, 1].amin((1, 2)) + 2) / 256
    return width * height


def torchvision_crop_areas(recipe, samples: int = 1000) -> torch.Tensor:
    """The same measurement through torchvision's RandomResizedCrop (the baseline's) on a 128-px coordinate image."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    y, x = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    image = torch.stack([x * 2, y * 2, torch.zeros_like(x)]).to(torch.uint8)
    crop = RandomResizedCrop(recipe.resolution, scale=recipe.online.crop_scale, ratio=recipe.online.crop_ratio)
    return crop_areas(torch.stack([crop(image) for _ in range(samples)]).float())


def check_contract_for_every_recipe(backend: str, store: str, samples: int = 32, batch_size: int = 8) -> None:
    """Shapes, dtype, channels-last memory, int64 labels, and every sample once per epoch, for each recipe."""
    for name in RECIPE_NAMES:
        recipe = two_view_recipe(name, RESOLUTION)
        loader = build_train_loader(backend, store, recipe, batch_size=batch_size, workers=1, seed=0)
        assert len(loader) == samples // batch_size and loader.num_classes == samples
        batches = list(loader.iterate(0))
        assert len(batches) == len(loader)
        online, target, labels = batches[0]
        for view in (online, target):
            assert view.shape == (batch_size, 3, RESOLUTION, RESOLUTION) and view.dtype == torch.float32
            assert view.is_contiguous(memory_format=torch.channels_last)
        assert labels.dtype == torch.int64 and labels.shape == (batch_size,)
        assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(samples))


def train_one_small_epoch(store: str, folder) -> tuple:
    """A ResNet-18 trained for one epoch of 8-image batches from `store` (data.backend=auto); the trainer sets
    torch's thread count on purpose, and this puts it back."""
    from msf_fast.config import load_config
    from msf_fast.trainer import Trainer

    cfg = load_config([f"--data.train_path={store}", "--model.arch=resnet18", "--model.small_input=1",
                       f"--data.resolution={RESOLUTION}", "--data.workers=1", "--train.batch_size=8",
                       "--msf.bank_size=32", "--train.epochs=1", "--train.device=cpu", "--train.threads=1",
                       f"--logging.folder={folder}", "--logging.progress=0"])
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg)
        return trainer, trainer.train()
    finally:
        torch.set_num_threads(threads)
