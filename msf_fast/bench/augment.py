"""`bench augment`: the recipe's photometric ops as batched tensor ops (`pipelines/batched_augment.py`), on the device.

The input is what FFCV hands over: uint8 crops, NCHW in channels-last memory, `--batch-size` of
`--resolution`^2 (random pixels, made on the device). Per batch, as the FFCV loader: each view draws its
parameters on the CPU, then runs flip, colour jitter, grayscale, blur, solarize and normalization on the
device, writing the trainer's dtype (the AMP dtype on CUDA, float32 on the CPU). Prints one JSON line per op of
each view (unless `--no-per-op`: the view with that op alone, at the recipe's probability, and its time above the
view's fixed part: copy, scale, normalize), then one line for the recipe: both views per batch, ms and
images/s (each image gives two views). Medians of `--repeats` blocks of `--batches` batches, the variants
interleaved.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING

from dataset_prep.argument_parser import non_negative_int, positive_int
from msf_fast.bench.timing import add_device_argument, interleaved_seconds
from pipelines.recipe import RECIPE_NAMES, ViewRecipe, two_view_recipe

if TYPE_CHECKING:  # torch loads when the benchmark runs, not when its options are read
    import torch

OUTPUT_DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    parser.add_argument("--resolution", type=positive_int, default=224, help="crop size in pixels (default 224)")
    parser.add_argument("--recipe", default="w/s", choices=RECIPE_NAMES,
                        help="target/online views, w = weak, s = strong (default w/s)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *OUTPUT_DTYPES],
                        help="output dtype (default auto: bf16 on CUDA where supported, else fp16; float32 on "
                             "the CPU; as the trainer's loaders)")
    parser.add_argument("--batches", type=positive_int, default=10, help="batches per timed block (default 10)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed blocks per variant, median (default 3)")
    parser.add_argument("--no-per-op", dest="per_op", action="store_false",
                        help="time the whole recipe only, not each op alone")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch CPU threads (default 0: torch's default)")
    add_device_argument(parser)


def output_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch
    if name != "auto":
        return getattr(torch, name)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def single_op_views(view: ViewRecipe) -> dict[str, ViewRecipe]:
    """name -> `view` with only that op (at its probability and strength); "base" has none (copy, scale,
    normalize); "jitter" has the four colour ops in each sample's random order."""
    base = ViewRecipe(crop_scale=view.crop_scale, crop_ratio=view.crop_ratio, flip_p=0.0,
                      blur_sigma=view.blur_sigma, solarize_threshold=view.solarize_threshold)
    ops = {"base": base}
    if view.flip_p:
        ops["flip"] = dataclasses.replace(base, flip_p=view.flip_p)
    strengths = {name: getattr(view, name) for name in ("brightness", "contrast", "saturation", "hue")}
    if view.jitter_p and sum(1 for s in strengths.values() if s) > 1:
        ops["jitter"] = dataclasses.replace(base, jitter_p=view.jitter_p, **strengths)
    for name, strength in strengths.items():
        if view.jitter_p and strength:
            ops[name] = dataclasses.replace(base, jitter_p=view.jitter_p, **{name: strength})
    for name in ("grayscale", "blur", "solarize"):
        if getattr(view, f"{name}_p"):
            ops[name] = dataclasses.replace(base, **{f"{name}_p": getattr(view, f"{name}_p")})
    return ops


def probability(view: ViewRecipe, op: str) -> float:
    if op == "base":
        return 1.0
    if op in ("jitter", "brightness", "contrast", "saturation", "hue"):
        return view.jitter_p
    return getattr(view, f"{op}_p")


def bench_augment(args) -> list[dict]:
    import torch
    from msf_fast.devices import device_option
    from pipelines.batched_augment import BatchedViewAugment

    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_option(args.device)
    dtype = output_dtype(args.dtype, device)
    recipe = two_view_recipe(args.recipe, args.resolution)
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (2, args.batch_size, args.resolution, args.resolution, 3)
    crops = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    online_crops, target_crops = crops.permute(0, 1, 4, 2, 3)  # NCHW views in channels-last memory
    params_generator = torch.Generator().manual_seed(0)  # the parameters are drawn on the CPU, as the loaders do
    views = {"target": (recipe.target, target_crops), "online": (recipe.online, online_crops)}
    augments = {name: BatchedViewAugment(view, recipe.mean, recipe.std, dtype) for name, (view, _) in views.items()}

    def both():
        augments["online"](online_crops, params_generator)
        augments["target"](target_crops, params_generator)

    runners = {"both": both}
    for name, (_, images) in views.items():
        runners[name] = lambda augment=augments[name], images=images: augment(images, params_generator)
    op_views = {}
    if args.per_op:
        for view_name, (view, images) in views.items():
            for op, op_view in single_op_views(view).items():
                augment = BatchedViewAugment(op_view, recipe.mean, recipe.std, dtype)
                runners[f"{view_name}/{op}"] = lambda augment=augment, images=images: augment(images, params_generator)
                op_views[f"{view_name}/{op}"] = (view_name, op, view)
    for run in runners.values():  # warm-up: allocations, first kernel launches
        run()
    seconds = interleaved_seconds(runners, args.repeats, device, calls=args.batches)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    common = {"bench": "augment", "recipe": args.recipe, "batch": args.batch_size, "resolution": args.resolution,
              "dtype": str(dtype).removeprefix("torch."), "device": device_name}
    results = []
    for key, (view_name, op, view) in op_views.items():
        base = seconds[f"{view_name}/base"]
        results.append({**common, "view": view_name, "op": op, "p": probability(view, op),
                        "ms_per_batch": round(1000 * seconds[key], 3),
                        "ms_above_base": None if op == "base" else round(1000 * (seconds[key] - base), 3)})
        print(json.dumps(results[-1]), flush=True)
    total = seconds["both"]
    results.append({**common, "view": "both", "ms_per_batch": round(1000 * total, 3),
                    "images_per_s": round(args.batch_size / total, 1),
                    "target_ms": round(1000 * seconds["target"], 3), "online_ms": round(1000 * seconds["online"], 3)})
    print(json.dumps(results[-1]), flush=True)
    return results
