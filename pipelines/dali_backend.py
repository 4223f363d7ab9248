"""The DALI backend: TFRecord shards (dataset_prep.write_tfrecord) read, decoded and augmented inside DALI.

Each image is decoded once (`fn.decoders.image`, on the GPU with `mixed` when training on CUDA, else on the CPU)
and random-resized-cropped twice; each view's recipe then runs as DALI ops, per sample:
- colour jitter with probability jitter_p, in torchvision's fixed order brightness -> contrast -> saturation ->
  hue (no per-sample permutation): `fn.brightness_contrast` with the image's own mean luma as the contrast
  centre (torchvision's definition), then `fn.hsv`, whose hue is an additive angle in **degrees** (the recipe's
  hue 0.1 of a turn is ±36°) applied as a rotation about the gray axis (DALI's linear approximation of HSV);
- grayscale with probability grayscale_p (`fn.hsv(saturation=0)`: the gray axis, luma 0.299/0.587/0.114);
- Gaussian blur with probability blur_p, σ ~ U(blur_sigma), window 2·ceil(3σ)+1 (DALI's rule for σ alone);
- solarize with probability solarize_p; flip and normalization in `fn.crop_mirror_normalize`, which writes
  NHWC: the torch batch is its NCHW view, channels-last in memory without a copy.
That is the graph on the GPU (`_gpu_view`). On the CPU (`_cpu_view`) the same recipe runs without conditionals
for jitter and grayscale (identity parameters where a sample's coin says no), `fn.hsv` writes float32 and blur is
fn.gaussian_blur's kernel in two `fn.filter` passes: 1.25-1.45x less CPU time per batch (see `_cpu_view`).

Order and last batch: each rank reads `shard_id=rank` of `num_shards=world_size`, shuffled through DALI's
buffer of `SHUFFLE_BUFFER` records (a reservoir, not a full permutation: the writer already shuffled the shards);
`pad_last_batch=True` and every epoch stops after len(loader) full batches, the same count on every rank, so no
sample repeats within an epoch and the partial remainder is dropped as with the other backends. The pipeline
is rebuilt for each epoch with a seed from (seed, epoch, rank): an epoch, and so a resumed run, is reproducible.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import weakref

import numpy as np
import torch

from dataset_prep.stores import manifest_classes, tfrecord_manifest_path
from dataset_prep.tfrecord_format import IMAGE_KEY, LABEL_KEY
from dataset_prep.wording import plural
from pipelines.contract import FirstBatchClock
from pipelines.recipe import TwoViewRecipe, ViewRecipe
from pipelines.sampling import per_sample_seed

SHUFFLE_BUFFER = 4096  # records; DALI fills this buffer and draws from it at random
READER = "Reader"


class DALIUnavailable(ImportError):
    pass


def import_dali():
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as error:
        raise DALIUnavailable(f"DALI is not installed ({error}): pip install -e '.[dali]' "
                              "(nvidia-dali-cuda130, ~200 MB)") from None


def read_tfrecord_store(folder: str) -> dict:
    """The manifest of a store written by dataset_prep.write_tfrecord, with absolute shard paths."""
    path = tfrecord_manifest_path(folder)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: not a TFRecord store (no manifest.json; write one with "
                                "python -m dataset_prep.write_tfrecord)")
    manifest = json.load(open(path))
    if manifest.get("format") != "tfrecord":
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected 'tfrecord'")
    manifest["folder"] = folder
    manifest["records"] = [os.path.join(folder, shard["tfrecord"]) for shard in manifest["shards"]]
    manifest["indexes"] = [os.path.join(folder, shard["index"]) for shard in manifest["shards"]]
    return manifest


def store_labels(store: dict) -> np.ndarray:
    """Every record's label in store order (labels.npy, written beside the shards)."""
    if "labels" not in store:
        raise ValueError(f"{store['folder']}: no labels.npy (written by an older write_tfrecord); write the store "
                         "again to choose subsets of it")
    return np.load(os.path.join(store["folder"], store["labels"]))


def subset_store(store: dict, indices, folder: str) -> dict:
    """The store restricted to `indices` (positions in store order, read in that order): DALI index files listing
    only those records, written to `folder`, over the same shards."""
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    starts = np.cumsum([0] + [shard["records"] for shard in store["shards"]])
    if len(indices) == 0 or indices[0] < 0 or indices[-1] >= starts[-1]:
        raise ValueError(f"{store['folder']}: a subset needs indices in 0..{starts[-1] - 1}")
    records, indexes = [], []
    for number, (record_path, index_path) in enumerate(zip(store["records"], store["indexes"])):
        chosen = indices[(indices >= starts[number]) & (indices < starts[number + 1])] - starts[number]
        if len(chosen):
            with open(index_path) as handle:
                lines = handle.read().splitlines()
            subset_index = os.path.join(folder, f"{number:05d}.idx")
            with open(subset_index, "w") as handle:
                handle.write("".join(lines[i] + "\n" for i in chosen))
            records.append(record_path)
            indexes.append(subset_index)
    return {**store, "records": records, "indexes": indexes, "counts": {**store["counts"], "written": len(indices)}}


def is_tfrecord_store(path: str) -> bool:
    try:
        read_tfrecord_store(path)
        return True
    except (FileNotFoundError, ValueError, json.JSONDecodeError):
        return False


def _solarize(images, threshold: int):
    bright = images >= threshold
    return images + bright * (255 - 2 * images)  # 255 - x where x >= threshold


def _view(images, view: ViewRecipe, recipe: TwoViewRecipe, half: bool, device: str = "cpu"):
    """One view of the decoded `images`: the GPU graph when they were decoded by `mixed`, else the CPU graph."""
    if device == "mixed":
        return _gpu_view(images, view, recipe, half)
    return _cpu_view(images, view, recipe)


def _gpu_view(images, view: ViewRecipe, recipe: TwoViewRecipe, half: bool):
    """The view on the GPU: each photometric op under its own conditional (DALI splits the batch per branch)."""
    from nvidia.dali import fn, types

    views = fn.random_resized_crop(images, size=[recipe.resolution, recipe.resolution],
                                   random_area=list(view.crop_scale), random_aspect_ratio=list(view.crop_ratio))
    if view.jitter_p > 0:
        if fn.random.coin_flip(probability=view.jitter_p, dtype=types.BOOL):
            luma = fn.reductions.mean(fn.color_space_conversion(views, image_type=types.RGB,
                                                                output_type=types.GRAY))
            views = fn.brightness_contrast(
                views, brightness=fn.random.uniform(range=[max(0.0, 1 - view.brightness), 1 + view.brightness]),
                contrast=fn.random.uniform(range=[max(0.0, 1 - view.contrast), 1 + view.contrast]),
                contrast_center=luma.cpu())  # named arguments must be on the CPU (exec_dynamic moves it there)
            views = fn.hsv(views, saturation=fn.random.uniform(range=[max(0.0, 1 - view.saturation),
                                                                      1 + view.saturation]),
                           hue=fn.random.uniform(range=[-360 * view.hue, 360 * view.hue]))
    if view.grayscale_p > 0:
        if fn.random.coin_flip(probability=view.grayscale_p, dtype=types.BOOL):
            views = fn.hsv(views, saturation=0.0)
    if view.blur_p > 0:
        if fn.random.coin_flip(probability=view.blur_p, dtype=types.BOOL):
            views = fn.gaussian_blur(views, sigma=fn.random.uniform(range=list(view.blur_sigma)))
    if view.solarize_p > 0:
        if fn.random.coin_flip(probability=view.solarize_p, dtype=types.BOOL):
            views = fn.cast(_solarize(fn.cast(views, dtype=types.INT16), round(255 * view.solarize_threshold)),
                            dtype=types.UINT8)
    return fn.crop_mirror_normalize(views, mirror=fn.random.coin_flip(probability=view.flip_p),
                                    mean=[255 * m for m in recipe.mean], std=[255 * s for s in recipe.std],
                                    dtype=types.FLOAT16 if half else types.FLOAT, output_layout="HWC")


def _cpu_view(images, view: ViewRecipe, recipe: TwoViewRecipe):
    """The view on the CPU: the recipe of `_gpu_view`, with the ops that dominated CPU time replaced (CPU ms per
    batch of 64 crops at 224 px, one thread: fn.hsv writing uint8 75, writing float32 30; fn.gaussian_blur 90 for
    a batch all blurred, two fn.filter passes 14; fn.crop_mirror_normalize to float16 31, to float32 13):
    - colour jitter and grayscale run on every sample with per-sample parameters that are the identity where the
      sample's coin says no (brightness = contrast = saturation = 1, hue = 0) instead of under conditionals;
      `fn.hsv` writes float32, clamped to 0..255 (min/max: dmath.clamp costs 3x more), and the later ops (blur,
      solarize, normalization) read float32, so nothing is rounded back to uint8 after the jitter;
    - grayscale is the same `fn.hsv` call with saturation 0 (the luma 0.299/0.587/0.114 on every channel, as
      `fn.hsv(saturation=0)` in `_gpu_view`), taken of the jittered image before its clamp (the hue and saturation
      step leaves the luma unchanged, so only pixels that the clamp would have cut differ);
    - Gaussian blur is `_gaussian_blur`: fn.gaussian_blur's own kernel (σ, window 2·ceil(3σ)+1, reflect-101) in
      two separable fn.filter passes, equal to fn.gaussian_blur in float32;
    - normalization writes float32 whatever `half` asks (the loader converts: cheaper than DALI's float16)."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    def uniform_or_one(spread: float, coin):
        """1 + coin * (U(max(0, 1 - spread), 1 + spread) - 1): the factor where coin = 1, the identity where 0."""
        if spread <= 0:
            return 1.0
        return 1.0 + coin * (fn.random.uniform(range=[max(0.0, 1 - spread), 1 + spread]) - 1.0)

    views = fn.random_resized_crop(images, size=[recipe.resolution, recipe.resolution],
                                   random_area=list(view.crop_scale), random_aspect_ratio=list(view.crop_ratio))
    floating = False
    saturation, hue = 1.0, 0.0
    if view.jitter_p > 0:
        jitter = fn.random.coin_flip(probability=view.jitter_p, dtype=types.UINT8)
        if view.brightness > 0 or view.contrast > 0:
            luma = fn.reductions.mean(fn.color_space_conversion(views, image_type=types.RGB,
                                                                output_type=types.GRAY))
            views = fn.brightness_contrast(views, brightness=uniform_or_one(view.brightness, jitter),
                                           contrast=uniform_or_one(view.contrast, jitter), contrast_center=luma)
        saturation = uniform_or_one(view.saturation, jitter)
        if view.hue > 0:
            hue = jitter * fn.random.uniform(range=[-360 * view.hue, 360 * view.hue])
    if view.grayscale_p > 0:
        saturation = saturation * (1.0 - fn.random.coin_flip(probability=view.grayscale_p, dtype=types.UINT8))
    if view.grayscale_p > 0 or (view.jitter_p > 0 and (view.saturation > 0 or view.hue > 0)):
        views = fn.hsv(views, saturation=saturation, hue=hue, dtype=types.FLOAT)
        views = dmath.min(dmath.max(views, 0.0), 255.0)  # 3x cheaper than dmath.clamp here
        floating = True
    if (view.blur_p > 0 or view.solarize_p > 0) and not floating:
        views = fn.cast(views, dtype=types.FLOAT)
    if view.blur_p > 0:
        if fn.random.coin_flip(probability=view.blur_p, dtype=types.BOOL):
            views = _gaussian_blur(views, fn.random.uniform(range=list(view.blur_sigma)), max(view.blur_sigma))
    if view.solarize_p > 0:
        if fn.random.coin_flip(probability=view.solarize_p, dtype=types.BOOL):
            views = _solarize(views, round(255 * view.solarize_threshold))
    return fn.crop_mirror_normalize(views, mirror=fn.random.coin_flip(probability=view.flip_p),
                                    mean=[255 * m for m in recipe.mean], std=[255 * s for s in recipe.std],
                                    dtype=types.FLOAT, output_layout="HWC")


def _gaussian_blur(views, sigma, max_sigma: float):
    """`fn.gaussian_blur(views, sigma=sigma, dtype=FLOAT)` as two separable `fn.filter` passes: per sample the
    normalized kernel exp(-x²/2σ²) over the window 2·ceil(3σ)+1 (DALI's rule), reflect-101 border; float32 out."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    reach = math.ceil(3 * max_sigma)
    taps = types.Constant(np.arange(-reach, reach + 1, dtype=np.float32))
    radius = dmath.ceil(3 * sigma)
    weights = dmath.exp(taps * taps / (-2.0 * sigma * sigma))
    weights = fn.slice(weights, fn.cast(reach - radius, dtype=types.INT32),
                       fn.cast(2 * radius + 1, dtype=types.INT32), axes=[0])
    weights = weights / fn.reductions.sum(weights)
    views = fn.filter(views, fn.expand_dims(weights, axes=[0]), dtype=types.FLOAT)  # along the width
    return fn.filter(views, fn.expand_dims(weights, axes=[1]))  # along the height


def _read_records(store: dict, **options) -> dict:
    """The store's records (`IMAGE_KEY` JPEG bytes, `LABEL_KEY` int64) through DALI's TFRecord reader; call inside
    a pipeline definition."""
    from nvidia.dali import fn
    import nvidia.dali.tfrecord as tfrec

    return fn.readers.tfrecord(path=store["records"], index_path=store["indexes"], name=READER,
                               features={IMAGE_KEY: tfrec.FixedLenFeature((), tfrec.string, ""),
                                         LABEL_KEY: tfrec.FixedLenFeature([1], tfrec.int64, -1)},
                               pad_last_batch=True, **options)


def build_pipeline(store: dict, recipe: TwoViewRecipe, batch_size: int, workers: int, seed: int, rank: int,
                   world_size: int, decoder_device: str, device_id, half: bool = False):
    """half: normalize to float16 inside DALI (half the bytes to move; torch converts to bfloat16 if asked)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(enable_conditionals=True)
    def two_views():
        records = _read_records(store, shard_id=rank, num_shards=world_size, random_shuffle=True,
                                initial_fill=SHUFFLE_BUFFER)
        images = fn.decoders.image(records[IMAGE_KEY], device=decoder_device, output_type=types.RGB)
        return (_view(images, recipe.online, recipe, half, decoder_device),
                _view(images, recipe.target, recipe, half, decoder_device), records[LABEL_KEY])

    return two_views(batch_size=batch_size, num_threads=max(1, workers), device_id=device_id,
                     seed=seed % (2**31 - 1), prefetch_queue_depth=2, exec_dynamic=True)


class DALITwoViewLoader:
    """Batches of (online_view, target_view, labels): NCHW `dtype` in channels-last memory, on the GPU when
    decoding is `mixed`, else on the CPU."""

    backend = "dali"

    def __init__(self, path: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, decoder_device: str = "auto"):
        import_dali()
        self.store = read_tfrecord_store(path)
        self.recipe, self.batch_size, self.workers = recipe, batch_size, workers
        self.seed, self.rank, self.world_size, self.dtype = seed, rank, world_size, dtype
        device = torch.device(device)
        if decoder_device == "auto":
            decoder_device = "mixed" if device.type == "cuda" else "cpu"
        if decoder_device not in ("cpu", "mixed"):
            raise ValueError(f"decoder device {decoder_device!r}: expected auto, cpu or mixed")
        if decoder_device == "mixed" and not torch.cuda.is_available():
            raise ValueError("decoder device 'mixed' decodes on the GPU, and no CUDA device is available")
        self.decoder_device = decoder_device
        self.device_id = (device.index or 0) if decoder_device == "mixed" else None
        self.classes = manifest_classes(path) or [str(label) for label in range(int(self.store["num_classes"]))]
        self.num_classes = len(self.classes)
        self.num_samples = int(self.store["counts"]["written"])
        self.compile_seconds: float | None = None
        if len(self) == 0:
            raise ValueError(f"{path}: {self.num_samples} images make no full batch of "
                             f"{batch_size} x {plural(world_size, 'rank')}")

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def set_resolution(self, resolution: int) -> None:
        """The pipeline is rebuilt every epoch anyway."""
        self.recipe = dataclasses.replace(self.recipe, resolution=resolution)

    def iterate(self, epoch: int, skip_batches: int = 0):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        clock = FirstBatchClock(self)
        pipeline = build_pipeline(self.store, self.recipe, self.batch_size, self.workers,
                                  per_sample_seed(self.seed, epoch, self.rank), self.rank, self.world_size,
                                  self.decoder_device, self.device_id,
                                  half=self.dtype in (torch.float16, torch.bfloat16))
        batches = DALIGenericIterator([pipeline], ["online", "target", "label"], reader_name=READER,
                                      last_batch_policy=LastBatchPolicy.DROP, auto_reset=False)
        try:
            for step, batch in enumerate(batches):
                clock.batch_arrived()
                if step >= len(self):
                    break
                if step < skip_batches:
                    continue
                views = batch[0]
                yield (self._to_nchw(views["online"]), self._to_nchw(views["target"]),
                       views["label"].reshape(-1).to(torch.int64))
        finally:
            del batches, pipeline

    def _to_nchw(self, nhwc: torch.Tensor) -> torch.Tensor:
        return nhwc.to(self.dtype).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels-last


def _half_to_even(x):
    """Python's round() of x = k or k + 1/2 (k an integer) in DALI arithmetic: ties go to the even neighbour."""
    from nvidia.dali import math

    low = math.floor(x)
    odd = low - 2 * math.floor(low / 2)
    return low + (x > low) * odd


def _centre_view(images, resize: int, size: int):
    """torchvision's Resize(resize) + CenterCrop(size) in one antialiased resize of a fractional box: the crop's
    rows and columns in the resized image, mapped back onto the source (its ROI in source pixels), resized to
    size x size; the filter may read the whole image, as torchvision's resize of the whole image does. DALI's own
    resize_shorter + centre crop rounded the resized size and the crop's offset differently: up to 0.020 mean
    absolute difference from torchvision on real photos."""
    from nvidia.dali import fn, math, types

    shape = images.shape(dtype=types.FLOAT)
    height, width = shape[0], shape[1]
    shorter = math.min(height, width)
    resized_h = math.floor(resize * height / shorter)  # torchvision: int(resize * long / short); exact when short
    resized_w = math.floor(resize * width / shorter)
    scale_y, scale_x = height / resized_h, width / resized_w
    top = _half_to_even((resized_h - size) / 2) * scale_y
    left = _half_to_even((resized_w - size) / 2) * scale_x
    start = fn.stack(top, left)
    end = fn.stack(top + size * scale_y, left + size * scale_x)
    return fn.resize(images, size=[size, size], roi_start=start, roi_end=end, roi_relative=False, antialias=True,
                     interp_type=types.INTERP_LINEAR)


class DALIEvalLoader:
    """(images, labels) of a TFRecord store with the evaluation transform (shorter side to eval_resize, centre
    crop, normalize), every sample exactly once per pass, in store order (or, with `shuffle_seed`, a new seeded
    order per pass); `indices` reads only those records. With `view` (a ViewRecipe) the crop is random instead:
    the linear probe's augmented training images. float32 NCHW channels-last on the CPU."""

    def __init__(self, path: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int = 2, indices=None,
                 view: ViewRecipe | None = None, shuffle_seed: int | None = None):
        import_dali()
        self.store = read_tfrecord_store(path)
        self.classes = manifest_classes(path) or [str(label) for label in range(int(self.store["num_classes"]))]
        if indices is not None:
            subset_folder = tempfile.mkdtemp(prefix="msf-fast-subset-")
            weakref.finalize(self, shutil.rmtree, subset_folder, True)
            self.store = subset_store(self.store, indices, subset_folder)
        self.recipe, self.batch_size, self.workers = recipe, batch_size, workers
        self.view, self.shuffle_seed, self.passes = view, shuffle_seed, 0
        self.num_samples = int(self.store["counts"]["written"])

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def _pipeline(self):
        from nvidia.dali import fn, pipeline_def, types

        recipe, view = self.recipe, self.view
        shuffle = self.shuffle_seed is not None
        seed = per_sample_seed(self.shuffle_seed, self.passes, 0) % (2**31 - 1) if shuffle else 0

        @pipeline_def
        def evaluation():
            records = _read_records(self.store, random_shuffle=shuffle,
                                    **({"initial_fill": SHUFFLE_BUFFER} if shuffle else {}))
            images = fn.decoders.image(records[IMAGE_KEY], device="cpu", output_type=types.RGB)
            if view is not None:
                return _view(images, view, recipe, half=False), records[LABEL_KEY]
            images = _centre_view(images, recipe.eval_resize, recipe.resolution)
            images = fn.crop_mirror_normalize(images, mean=[255 * m for m in recipe.mean],
                                              std=[255 * s for s in recipe.std], dtype=types.FLOAT,
                                              output_layout="HWC")
            return images, records[LABEL_KEY]

        return evaluation(batch_size=self.batch_size, num_threads=max(1, self.workers), device_id=None, seed=seed)

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        pipeline = self._pipeline()
        self.passes += 1
        batches = DALIGenericIterator([pipeline], ["images", "labels"], reader_name=READER,
                                      last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
        for batch in batches:
            yield batch[0]["images"].permute(0, 3, 1, 2), batch[0]["labels"].reshape(-1).to(torch.int64)
