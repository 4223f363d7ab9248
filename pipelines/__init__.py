"""Data pipelines: one recipe spec (recipe.py), several backends yielding the same batches.

Every training loader has `len(loader)` (steps per epoch), `num_classes`, `set_resolution(pixels)`
(progressive resizing: the crop size of the following epochs), and `iterate(epoch, skip_batches=0)` yielding
`(online_view, target_view, labels)`: NCHW float tensors in channels-last memory, one global batch split
evenly over the ranks.
"""
from __future__ import annotations

from pipelines.recipe import TwoViewRecipe, two_view_recipe

BACKENDS = ("torch", "ffcv", "dali")


def build_train_loader(backend: str, root: str, recipe: TwoViewRecipe, batch_size: int, workers: int,
                       seed: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                       device="cpu", dtype=None, decoder_device="auto"):
    """`root` is an ImageFolder (torch), a .beton (ffcv) or a TFRecord store (dali). FFCV augments on `device`,
    DALI on the GPU when it decodes there (`decoder_device`); both yield `dtype` (default float32); the
    torchvision loader yields float32 on the CPU."""
    import torch

    if backend == "torch":
        from pipelines.torchvision_backend import TorchvisionTwoViewLoader
        return TorchvisionTwoViewLoader(root, recipe, batch_size, workers, seed, rank, world_size, pin_memory)
    if backend == "ffcv":
        from pipelines.ffcv_backend import FFCVTwoViewLoader
        return FFCVTwoViewLoader(root, recipe, batch_size, workers, seed, rank, world_size, device,
                                 dtype or torch.float32)
    if backend == "dali":
        from pipelines.dali_backend import DALITwoViewLoader
        return DALITwoViewLoader(root, recipe, batch_size, workers, seed, rank, world_size, device,
                                 dtype or torch.float32, decoder_device)
    raise ValueError(f"unknown data backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def data_format(root: str) -> str:
    """The backend that reads `root`: "ffcv" for a .beton, "dali" for a TFRecord store (write_tfrecord's
    manifest.json), "torch" for anything else (an ImageFolder)."""
    if root.endswith(".beton"):
        return "ffcv"
    from pipelines.dali_backend import is_tfrecord_store
    return "dali" if is_tfrecord_store(root) else "torch"


def build_eval_loader(root: str, recipe: TwoViewRecipe, batch_size: int, workers: int, indices=None):
    """(images, labels) batches with the evaluation transform (resize, centre crop), in file order;
    `root` is an ImageFolder, a .beton or a TFRecord store; `indices` reads only those samples."""
    backend = data_format(root)
    if backend == "ffcv":
        from pipelines.ffcv_backend import FFCVEvalLoader
        return FFCVEvalLoader(root, recipe, batch_size, workers, indices=indices)
    if backend == "dali":
        from pipelines.dali_backend import DALIEvalLoader
        return DALIEvalLoader(root, recipe, batch_size, workers, indices=indices)
    from torch.utils.data import DataLoader, Subset

    from pipelines.torchvision_backend import eval_transform, image_folder
    dataset = image_folder(root, eval_transform(recipe))
    if indices is not None:
        dataset = Subset(dataset, [int(index) for index in indices])
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def build_probe_loader(root: str, recipe: TwoViewRecipe, batch_size: int, workers: int, seed: int = 0,
                       indices=None):
    """The linear probe's augmented training images (recipe.PROBE_VIEW: random resized crop, flip), normalized,
    as (images, labels) batches in a new seeded order on every pass; an ImageFolder, a .beton or a TFRecord store."""
    from pipelines.recipe import PROBE_VIEW
    backend = data_format(root)
    if backend == "ffcv":
        from pipelines.ffcv_backend import FFCVEvalLoader
        return FFCVEvalLoader(root, recipe, batch_size, workers, indices=indices, view=PROBE_VIEW,
                              shuffle_seed=seed)
    if backend == "dali":
        from pipelines.dali_backend import DALIEvalLoader
        return DALIEvalLoader(root, recipe, batch_size, workers, indices=indices, view=PROBE_VIEW,
                              shuffle_seed=seed)
    from pipelines.torchvision_backend import ShuffledImageLoader, image_folder, view_transform
    dataset = image_folder(root, view_transform(PROBE_VIEW, recipe))
    return ShuffledImageLoader(dataset, batch_size, workers, seed, indices)


__all__ = ["BACKENDS", "TwoViewRecipe", "build_eval_loader", "data_format", "build_probe_loader", "build_train_loader",
           "two_view_recipe"]
