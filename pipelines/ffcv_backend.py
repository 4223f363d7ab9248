"""The FFCV backend: a `.beton` read by FFCV, both views cropped from one decode, photometric ops batched.

FFCV (numba threads, `data.workers` of them) decodes each image once and random-resized-crops it twice on the CPU at
the training resolution (`ffcv_two_crop.TwoCropDecoder`: crops seeded by (seed, epoch, sample, view)); the rest of
each view's recipe (colour jitter, grayscale, blur, solarize, flip, normalization) runs as batched tensor ops on the
training device (`pipelines.batched_augment`), on a CPU-only machine in a thread one batch ahead of the model step.
`decoder="twice"` keeps the former path for comparison: two stock RandomResizedCrop outputs over the one field
(each image decoded twice, crops from numba's unseeded generator).

FFCV facts this module works around (ffcv 1.0.2):
- no `custom_field_mapper`: several views of one field need several outputs, or one decoder writing them all;
- `import ffcv` sets torch's threads to 1 and every Loader/epoch resets them to its worker count: the caller's
  count is restored after each;
- batches are views into a ring of reused buffers: views are consumed (augmented into new tensors) and labels
  cloned before the next batch is fetched;
- the order is seeded (`seed + epoch`, sharded like DistributedSampler when distributed), so a resumed run sees
  the same samples in the same batches; the photometric parameters are seeded per (seed, epoch, step, rank);
- a store larger than memory (`in_memory`) is read without the page cache in a page-aware order
  (`pipelines.page_order`), which FFCV's process cache can hold a few pages of at a time;
- numba compiles the pipeline on the first epoch of each Loader in each process (`compile_seconds`).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from dataset_prep.ffcv_import import import_ffcv
from dataset_prep.stores import manifest_classes
from dataset_prep.wording import plural
from pipelines.background import ahead
from pipelines.batched_augment import BatchedViewAugment
from pipelines.contract import FirstBatchClock
from pipelines.ffcv_two_crop import TwoCropDecoder
from pipelines.page_order import reads_in_memory
from pipelines.recipe import TwoViewRecipe, ViewRecipe
from pipelines.sampling import per_sample_seed


def ffcv_workers(workers: int) -> int:
    """FFCV runs its workers as numba threads, and numba allows at most NUMBA_NUM_THREADS of them (by default the
    cores this process may use): more was numba's traceback from inside FFCV."""
    import numba

    workers, limit = max(1, workers), numba.config.NUMBA_NUM_THREADS
    if workers > limit:
        raise ValueError(f"{workers} loader workers: FFCV's workers are numba threads, and numba allows {limit} here "
                         f"(the cores this process may use); ask for at most {limit}, or start with "
                         f"NUMBA_NUM_THREADS={workers} to run more threads than cores")
    return workers


DECODERS = ("once", "twice")


def _to_device(device: torch.device) -> list:
    from ffcv.transforms import ToDevice
    return [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []


def _view_pipeline(view: ViewRecipe, resolution: int, device: torch.device, decoders: list):
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import ToTensor, ToTorchImage

    transforms = [ToTensor(), *_to_device(device), ToTorchImage(channels_last=True)]
    decoder = RandomResizedCropRGBImageDecoder((resolution, resolution), scale=view.crop_scale,
                                               ratio=view.crop_ratio)
    decoders.append(decoder)
    return PipelineSpec("image", decoder=decoder, transforms=transforms)


def beton_classes(path: str, labels: np.ndarray) -> list[str]:
    """Class names from the store's manifest; without one, the label indices as names."""
    return manifest_classes(path) or [str(label) for label in range(int(labels.max()) + 1)]


class FFCVTwoViewLoader:
    """Batches of (online_view, target_view, labels) on `device`: NCHW `dtype` in channels-last memory."""

    backend = "ffcv"

    def __init__(self, path: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, decoder: str = "once", in_memory="auto",
                 pages_at_a_time: int | None = None):
        """`decoder`: "once" (one decode, two seeded crops) or "twice" (the stock two-output path).
        `in_memory`: True reads through the page cache in RANDOM order; False reads pages on demand, without the
        page cache, in the page-aware order, `pages_at_a_time` pages open (default: 2 x batch_size, as FFCV's
        QUASI_RANDOM); "auto" chooses by the store's size against the memory available."""
        import_ffcv()
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import Squeeze, ToTensor

        if decoder not in DECODERS:
            raise ValueError(f"FFCV decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such .beton file")
        self.device = torch.device(device)
        self.seed, self.rank, self.batch_size, self.world_size = seed, rank, batch_size, world_size
        self.in_memory = reads_in_memory(in_memory, path)
        if self.in_memory:
            order = OrderOption.RANDOM
        else:
            from pipelines.ffcv_page_order import PageOrder
            order = PageOrder(batch_size, rank, world_size, pages_at_a_time or 2 * batch_size)
        threads = torch.get_num_threads()
        self.decoders: list = []  # the crop decoders (their output size changes with set_resolution)
        if decoder == "once":
            self.decoders.append(TwoCropDecoder((recipe.resolution,) * 2, views=(recipe.online, recipe.target),
                                                seed=seed))
            views = {"views": PipelineSpec("image", decoder=self.decoders[0],
                                           transforms=[ToTensor(), *_to_device(self.device)])}
        else:
            views = {"online": _view_pipeline(recipe.online, recipe.resolution, self.device, self.decoders),
                     "target": _view_pipeline(recipe.target, recipe.resolution, self.device, self.decoders)}
        self.loader = Loader(
            path, batch_size=batch_size, num_workers=ffcv_workers(workers), order=order,
            distributed=world_size > 1, seed=seed, drop_last=True, os_cache=self.in_memory, batches_ahead=2,
            pipelines={"image": None, "label": [IntDecoder(), ToTensor(), Squeeze(), *_to_device(self.device)],
                       **views})
        torch.set_num_threads(threads)
        self.threads = threads
        self.outputs = list(self.loader.pipeline_specs)  # the order of each batch's tensors
        self.classes = beton_classes(path, self.loader.reader.metadata["f1"])
        self.num_classes, self.num_samples = len(self.classes), int(self.loader.reader.num_samples)
        self.online_augment = BatchedViewAugment(recipe.online, recipe.mean, recipe.std, dtype)
        self.target_augment = BatchedViewAugment(recipe.target, recipe.mean, recipe.std, dtype)
        self.compile_seconds: float | None = None  # the first epoch's wait for its first batch
        if len(self) == 0:
            raise ValueError(f"{path}: {self.loader.reader.num_samples} images make no full batch of "
                             f"{batch_size} x {plural(world_size, 'rank')}")

    def __len__(self) -> int:
        return len(self.loader)

    def set_resolution(self, resolution: int) -> None:
        """The stock decoders need FFCV to recompile its pipeline, once per change; the two-crop one does not."""
        if self.decoders[0].output_size != (resolution, resolution):
            for decoder in self.decoders:
                decoder.output_size = (resolution, resolution)
            self.loader.recompile = not isinstance(self.decoders[0], TwoCropDecoder)

    def iterate(self, epoch: int, skip_batches: int = 0):
        batches = self._augmented(epoch, skip_batches)
        # On a CPU-only machine the next batch's photometric ops run beside the model step (same batches, same
        # parameters); on a GPU they are queued asynchronously anyway.
        return ahead(batches) if self.device.type == "cpu" else batches

    def _augmented(self, epoch: int, skip_batches: int):
        self.loader.next_epoch = epoch  # FFCV orders epoch e with seed + e
        for decoder in self.decoders:
            if isinstance(decoder, TwoCropDecoder):
                decoder.set_epoch(epoch)  # before iter(): FFCV starts decoding at once
        clock = FirstBatchClock(self)
        batches = iter(self.loader)
        self.loader.recompile = False
        torch.set_num_threads(self.threads)
        for step, batch in enumerate(batches):
            if step == 0:
                clock.batch_arrived()
                torch.set_num_threads(self.threads)  # every epoch's first batch resets it again
            if step < skip_batches:
                continue
            named = dict(zip(self.outputs, batch))
            if "views" in named:  # (B, 2, H, W, 3): NCHW views of each view, without a copy
                online, target = (named["views"][:, view].permute(0, 3, 1, 2) for view in (0, 1))
            else:
                online, target = named["online"], named["target"]
            generator = torch.Generator().manual_seed(
                per_sample_seed(self.seed, epoch, step * self.world_size + self.rank))
            with torch.no_grad():
                online = self.online_augment(online, generator)
                target = self.target_augment(target, generator)
            yield online, target, named["label"].clone()


class FFCVEvalLoader:
    """(images, labels) with the evaluation transform: torchvision's Resize(eval_resize) + CenterCrop(resolution)
    with its antialiased filter and its fractional box (`ffcv_eval_crop.EvalCropDecoder`), normalized; float32
    NCHW channels-last on the CPU. Store order (or, with `shuffle_seed`, a new seeded order per pass); `indices`
    reads only those samples. With `view` (a ViewRecipe: crop scale and ratio, flip) the crop and flip are random
    instead, seeded by (shuffle_seed, pass, sample): the linear probe's augmented training images. Iterable more
    than once."""

    def __init__(self, path: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int = 2, indices=None,
                 view: ViewRecipe | None = None, shuffle_seed: int | None = None):
        import_ffcv()
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

        from pipelines.ffcv_eval_crop import EvalCropDecoder

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such .beton file")
        threads = torch.get_num_threads()
        size = (recipe.resolution, recipe.resolution)
        if view is None:
            self.decoder = EvalCropDecoder(size, eval_resize=recipe.eval_resize)
        else:
            self.decoder = EvalCropDecoder(size, scale=view.crop_scale, ratio=view.crop_ratio, flip_p=view.flip_p,
                                           seed=shuffle_seed or 0)
        self.passes = 0
        order = OrderOption.SEQUENTIAL if shuffle_seed is None else OrderOption.RANDOM
        self.loader = Loader(path, batch_size=batch_size, num_workers=ffcv_workers(workers), order=order,
                             seed=shuffle_seed, drop_last=False,
                             indices=None if indices is None else np.sort(np.asarray(indices)),
                             pipelines={"image": [self.decoder, ToTensor(), ToTorchImage(channels_last=True)],
                                        "label": [IntDecoder(), ToTensor(), Squeeze()]})
        torch.set_num_threads(threads)
        self.threads = threads
        self.classes = beton_classes(path, self.loader.reader.metadata["f1"])
        self.num_samples = len(self.loader.indices)
        self.mean = torch.tensor(recipe.mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(recipe.std).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.decoder.set_epoch(self.passes)  # before iter(): FFCV starts decoding at once
        self.passes += 1
        batches = iter(self.loader)
        torch.set_num_threads(self.threads)
        for images, labels in batches:
            torch.set_num_threads(self.threads)
            normalized = (images.float() - self.mean) / self.std
            yield normalized.contiguous(memory_format=torch.channels_last), labels.clone().reshape(-1)
