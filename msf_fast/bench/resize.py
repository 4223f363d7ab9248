"""`bench resize`: one crop + resize to a view, per view on one core: the antialiased resize of the FFCV loaders
(`pipelines/antialias_resize.py`) against OpenCV INTER_AREA (the former decoder's filter) and INTER_LINEAR, libffcv's
`resize_crop` (INTER_AREA as FFCV's build of OpenCV runs it), torch's `interpolate(antialias=True)` on uint8
channels-last and Pillow's antialiased bilinear.

The crops are the training views' own: torchvision's RandomResizedCrop boxes (scale 0.2-1) over a real photo
(scikit-learn's sample, resized to `--source`), `--crops` of them, the same for every variant. Each variant's time
is the median over `--repeats` passes over all crops, the variants interleaved; `mad` is its mean absolute
difference (0-1 scale) from torchvision's resized_crop(antialias=True) at the same boxes. Prints one JSON line per
variant and one with each variant's time over ours (`opencv_area_over_ours`: how many times faster ours is).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from dataset_prep.argument_parser import fraction, positive_int, width_by_height
from msf_fast.errors import UsageError

MAX_SOURCE_SIDE = 8192  # pixels; a 100000x100000 photo would take 30 GB
MAX_CROPS = 10_000  # each pass runs every variant on every crop, --repeats times (~1 ms a crop)
MAX_REPEATS = 1_000
MAX_TIMED_CROPS = 100_000  # --crops x --repeats: ~1 ms each for all the variants, so at most a few minutes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=width_by_height, default="500x375",
                        help="WIDTHxHEIGHT of the photo the crops come from, at most "
                             f"{MAX_SOURCE_SIDE} a side (default 500x375: a 512-px store's typical image)")
    parser.add_argument("--size", type=positive_int, default=224, help="view size in pixels (default 224)")
    parser.add_argument("--crops", type=positive_int, default=100,
                        help=f"crops per pass, at most {MAX_CROPS:,} (default 100)")
    parser.add_argument("--repeats", type=positive_int, default=7,
                        help=f"timed passes per variant, median, at most {MAX_REPEATS:,} (default 7)")
    parser.add_argument("--scale", type=fraction, nargs=2, default=(0.2, 1.0),
                        help="crop area range, fractions of the photo, smallest first (default 0.2 1)")


def source_photo(width: int, height: int) -> np.ndarray:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[1]  # flower.jpg: fine texture
    return np.array(Image.fromarray(photo).resize((width, height), Image.Resampling.LANCZOS))


def variants(image: np.ndarray, size: int) -> dict:
    """name -> f(i, j, h, w) writing or returning the (size, size, 3) uint8 view of that crop. OpenCV and libffcv
    come with FFCV (the `ffcv` extra); without them their variants are left out."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from pipelines.antialias_resize import resize_crop

    out = np.zeros((size, size, 3), np.uint8)
    pil = Image.fromarray(image)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]

    def ours(i, j, h, w):
        resize_crop(image, i, j, h, w, out)
        return out

    def opencv(interpolation):
        return lambda i, j, h, w: cv2.resize(image[i:i + h, j:j + w], (size, size), interpolation=interpolation)

    found = {"ours": ours}
    try:
        import cv2

        cv2.setNumThreads(1)  # one core for every variant
        found.update(opencv_area=opencv(cv2.INTER_AREA), opencv_linear=opencv(cv2.INTER_LINEAR))
        import ffcv.libffcv

        def libffcv(i, j, h, w):
            ffcv.libffcv.resize_crop(image, i, i + h, j, j + w, out)
            return out

        found["libffcv_area"] = libffcv
    except ImportError:
        pass

    def torch_antialias(i, j, h, w):
        crop = tensor[:, :, i:i + h, j:j + w].contiguous(memory_format=torch.channels_last)
        return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0].permute(1, 2, 0)

    def pillow(i, j, h, w):
        return pil.resize((size, size), Image.Resampling.BILINEAR, box=(j, i, j + w, i + h))

    return {**found, "torch_antialias": torch_antialias, "pillow_antialias": pillow}


def bench_resize(args) -> list[dict]:
    if max(args.source) > MAX_SOURCE_SIDE:  # before torch loads
        raise UsageError(f"--source {args.source[0]}x{args.source[1]}: at most {MAX_SOURCE_SIDE} pixels a side (the "
                         "photo a store's crops come from: 500x375 for a 512-px store)")
    if args.size > MAX_SOURCE_SIDE:
        raise UsageError(f"--size {args.size}: at most {MAX_SOURCE_SIDE} pixels (a view: 224 for ImageNet)")
    if args.crops > MAX_CROPS:
        raise UsageError(f"--crops {args.crops}: at most {MAX_CROPS:,} (each pass times every variant on every "
                         "crop; --repeats gives more passes)")
    if args.repeats > MAX_REPEATS:
        raise UsageError(f"--repeats {args.repeats}: at most {MAX_REPEATS:,} (each pass times every variant on every "
                         "crop; the median of a few is steady)")
    if args.crops * args.repeats > MAX_TIMED_CROPS:
        raise UsageError(f"--crops {args.crops} x --repeats {args.repeats}: at most {MAX_TIMED_CROPS:,} timed crops "
                         "(about 1 ms each for all the variants: hours otherwise)")
    if args.scale[0] > args.scale[1]:
        raise UsageError(f"--scale {args.scale[0]:g} {args.scale[1]:g}: the smallest crop area first "
                         f"(--scale {args.scale[1]:g} {args.scale[0]:g})")
    width, height = args.source
    if args.scale[1] * width * height < 1:
        raise UsageError(f"--scale {args.scale[0]:g} {args.scale[1]:g}: a crop of at most {args.scale[1]:g} of the "
                         f"{width}x{height} photo is under one pixel, so every crop would be torchvision's fallback, "
                         "the centre crop: give areas of at least a pixel")
    import torch
    import torchvision.transforms.v2.functional as TF

    from pipelines.ffcv_two_crop import crop_params

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core for every variant
    image = source_photo(width, height)
    boxes = [crop_params(height, width, args.scale, (3 / 4, 4 / 3), 0, 0, k, 0) for k in range(args.crops)]
    runs = variants(image, args.size)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    mads = {}
    for name, run in runs.items():  # also the warm-up (numba compiles ours here)
        total = 0.0
        for i, j, h, w in boxes:
            reference = TF.resized_crop(tensor, i, j, h, w, [args.size, args.size], antialias=True)
            view = np.asarray(run(i, j, h, w), dtype=np.float64)
            total += np.abs(view - reference.permute(1, 2, 0).numpy()).mean() / 255
        mads[name] = total / len(boxes)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for i, j, h, w in boxes:
                run(i, j, h, w)
            times[name].append((time.perf_counter() - start) / len(boxes))
    torch.set_num_threads(threads)
    results = []
    for name in runs:
        result = {"bench": "resize", "variant": name, "source": f"{width}x{height}", "size": args.size,
                  "us_per_view": round(1e6 * statistics.median(times[name]), 1), "mad": round(mads[name], 4)}
        results.append(result)
        print(json.dumps(result), flush=True)
    ours = statistics.median(times["ours"])
    summary = {"bench": "resize", "cpu": cpu_name(),
               **{f"{name}_over_ours": round(statistics.median(times[name]) / ours, 2) for name in runs
                  if name != "ours"}}
    print(json.dumps(summary), flush=True)
    return results + [summary]


def cpu_name() -> str:
    """The CPU's model name and its widest vector extension (from /proc/cpuinfo; the machine type elsewhere)."""
    name, flags = os.uname().machine, set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if name != os.uname().machine and flags:
                    break
    except OSError:
        pass
    widest = next((flag for flag in ("avx512f", "avx2", "avx", "sse4_2") if flag in flags), "")
    return f"{name} ({widest})" if widest else name
