"""Data pipelines: one recipe spec (recipe.py), three backends yielding the same batches (contract.py).

    build_train_loader(backend, root, recipe, batch_size=..., workers=..., seed=...)  -> TwoViewLoader
    build_eval_loader(root, recipe, batch_size=..., workers=...)                      -> ImageLoader (centre crops)
    build_probe_loader(root, recipe, batch_size=..., workers=..., seed=...)           -> ImageLoader (random crops)

`root` is an ImageFolder (torchvision), a .beton (FFCV) or a TFRecord store (DALI); `data_format` says which.
"""
from __future__ import annotations

import dataset_prep  # noqa: F401  (first: numba's threading layer on one core, before FFCV loads numba)
from pipelines.contract import ImageLoader, TwoViewLoader
from pipelines.recipe import TwoViewRecipe, two_view_recipe

BACKENDS = ("torch", "ffcv", "dali")
MAX_DATALOADER_WORKERS = 8


def process_cores() -> int:
    """The cores available to this process, the node's cores shared by the processes torchrun starts on it."""
    import os

    from dataset_prep.progress import available_cores
    return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_workers(backend: str) -> int:
    """Workers that fit the machine: one per core available to this process (FFCV's and DALI's threads, and the
    torchvision DataLoader's processes, at most 8 of those)."""
    cores = process_cores()
    return min(MAX_DATALOADER_WORKERS, cores) if backend == "torch" else cores


def default_torch_threads(workers: int) -> int:
    """torch's CPU threads beside `workers` loader workers: the cores they leave free, so a busy loader is not
    starved by OpenMP threads; when they claim every core (data.workers=auto), half of the cores, so that a
    compute-bound run does not train on one thread of many."""
    cores = process_cores()
    return cores - workers if workers < cores else max(1, cores // 2)


def data_format(root: str) -> str:
    """The backend that reads `root`: "ffcv" for a .beton, "dali" for a TFRecord store, "torch" otherwise."""
    from dataset_prep.stores import BETON, TFRECORD, path_kind
    return {BETON: "ffcv", TFRECORD: "dali"}.get(path_kind(root), "torch")


def build_train_loader(backend: str, root: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int, seed: int,
                       rank: int = 0, world_size: int = 1, device="cpu", dtype=None,
                       decoder_device: str = "auto", ffcv_decoder: str = "once", in_memory="auto") -> TwoViewLoader:
    """FFCV augments on `device` (its decoder decodes each image "once" for both views, or "twice"; `in_memory`:
    page cache and random order, or uncached pages in a page-aware order, or "auto" by size), DALI on the
    GPU when it decodes there (`decoder_device`); both yield `dtype` (default float32). The torchvision loader
    yields float32 on the CPU (pinned when `device` is CUDA)."""
    import torch

    device = torch.device(device)
    if backend == "torch":
        from pipelines.torchvision_backend import TorchvisionTwoViewLoader
        return TorchvisionTwoViewLoader(root, recipe, batch_size=batch_size, workers=workers, seed=seed, rank=rank,
                                        world_size=world_size, pin_memory=device.type == "cuda")
    if backend == "ffcv":
        from pipelines.ffcv_backend import FFCVTwoViewLoader
        return FFCVTwoViewLoader(root, recipe, batch_size=batch_size, workers=workers, seed=seed, rank=rank,
                                 world_size=world_size, device=device, dtype=dtype or torch.float32,
                                 decoder=ffcv_decoder, in_memory=in_memory)
    if backend == "dali":
        from pipelines.dali_backend import DALITwoViewLoader
        return DALITwoViewLoader(root, recipe, batch_size=batch_size, workers=workers, seed=seed, rank=rank,
                                 world_size=world_size, device=device, dtype=dtype or torch.float32,
                                 decoder_device=decoder_device)
    raise ValueError(f"unknown data backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def build_eval_loader(root: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int, indices=None,
                      per_class: int = 0, seed: int = 0) -> ImageLoader:
    """(images, labels) batches with the evaluation transform (resize, centre crop), in the data's order.
    `indices` reads only those samples; `per_class` only a seeded balanced subset of that many per class."""
    return _image_loader(root, recipe, batch_size, workers, indices, per_class, seed, view=None, shuffle_seed=None)


def build_probe_loader(root: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int, seed: int = 0,
                       indices=None) -> ImageLoader:
    """The linear probe's augmented training images (recipe.PROBE_VIEW: random resized crop, flip), normalized,
    in a new seeded order on every pass."""
    from pipelines.recipe import PROBE_VIEW
    return _image_loader(root, recipe, batch_size, workers, indices, 0, seed, view=PROBE_VIEW, shuffle_seed=seed)


def _image_loader(root, recipe, batch_size, workers, indices, per_class, seed, view, shuffle_seed) -> ImageLoader:
    backend = data_format(root)
    options = dict(batch_size=batch_size, workers=workers, indices=indices, view=view, shuffle_seed=shuffle_seed)
    if backend == "torch":  # chooses its per-class subset from its own listing: a folder is listed once
        from pipelines.torchvision_backend import TorchvisionImageLoader
        return TorchvisionImageLoader(root, recipe, **options, per_class=per_class, seed=seed)
    if per_class:  # a store's labels are read without decoding (FFCV's metadata, labels.npy)
        from pipelines.subsets import balanced_subset, dataset_labels
        options["indices"] = balanced_subset(dataset_labels(root), seed=seed, per_class=per_class)
    if backend == "ffcv":
        from pipelines.ffcv_backend import FFCVEvalLoader
        return FFCVEvalLoader(root, recipe, **options)
    from pipelines.dali_backend import DALIEvalLoader
    return DALIEvalLoader(root, recipe, **options)


__all__ = ["BACKENDS", "default_workers", "ImageLoader", "TwoViewLoader", "TwoViewRecipe", "build_eval_loader", "build_probe_loader",
           "build_train_loader", "data_format", "two_view_recipe"]
