"""Data pipelines: one recipe spec (recipe.py), several backends yielding the same batches.

Every training loader has `len(loader)` (steps per epoch), `num_classes`, and
`iterate(epoch, skip_batches=0)` yielding `(online_view, target_view, labels)`: NCHW float
tensors in channels-last memory, one global batch split evenly over the ranks.
"""
from __future__ import annotations

from pipelines.recipe import TwoViewRecipe, two_view_recipe

BACKENDS = ("torch",)


def build_train_loader(backend: str, root: str, recipe: TwoViewRecipe, batch_size: int, workers: int,
                       seed: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
    if backend == "torch":
        from pipelines.torchvision_backend import TorchvisionTwoViewLoader
        return TorchvisionTwoViewLoader(root, recipe, batch_size, workers, seed, rank, world_size, pin_memory)
    raise ValueError(f"unknown data backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def build_eval_loader(root: str, recipe: TwoViewRecipe, batch_size: int, workers: int):
    """(images, labels) batches with the evaluation transform (resize, centre crop), in file order."""
    from torch.utils.data import DataLoader

    from pipelines.torchvision_backend import eval_transform, image_folder
    dataset = image_folder(root, eval_transform(recipe))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


__all__ = ["BACKENDS", "TwoViewRecipe", "build_eval_loader", "build_train_loader", "two_view_recipe"]
