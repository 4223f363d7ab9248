"""`bench plan`, time to train: wall hours of a whole run from a measured per-GPU step rate.

    python -m msf_fast.bench plan --images-per-s 4500 --gpus 8 [--epochs 200] [--loader-images-per-s Y]
                                  [--efficiency 0.9] [--dataset-size 1281167] [--target-hours 2]
                                  [--store-resolution 512 [--node-cores 96]]

The node trains at min(per-GPU rate x GPUs x scaling efficiency, data-loader ceiling); whichever is
lower is the binding limit. The loader ceiling is images/s for the whole node: give it directly, or as
`--loader-images-per-s-per-core` (`bench loader` images/s divided by the cores it ran on, e.g. /2 on the
2-core machine) times `--node-cores`, which assumes decoding scales linearly with cores. `--store-resolution`
uses the per-core rate measured at that store size (256 or 512 px; interpolated by pixels between and near them: a
512-px store decodes 4x the pixels of a 256-px one) and says how many cores the loader needs to keep up with the GPUs.

Reference: the product goal is 200 epochs of ResNet-50 on ImageNet (1,281,167 images, i.e. 256.2M images)
on 8 GPUs in under 2 hours, i.e. 35,588 images/s for the node: 4,449 images/s per GPU with perfect
scaling (≈4,500), 4,943 at 90% scaling efficiency. At 4,500 images/s per GPU and 0.9, the run takes 2.20 h.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from dataset_prep.argument_parser import fraction, positive_int, positive_number
from dataset_prep.wording import plural
from msf_fast.errors import UsageError

IMAGENET_TRAIN_IMAGES = 1_281_167
DEFAULT_EPOCHS = 200
MULTI_GPU_EFFICIENCY = 0.9


@dataclass(frozen=True)
class TrainingPlan:
    images_per_s_per_gpu: float
    gpus: int
    epochs: float
    dataset_size: int
    efficiency: float
    loader_images_per_s: float | None
    compute_images_per_s: float    # per-GPU rate x GPUs x efficiency
    effective_images_per_s: float  # the lower of compute and loader
    binding_limit: str             # "compute" or "loader"
    hours: float


MAX_IMAGES_PER_S, MAX_HOURS = 1e9, 1e6  # beyond them a "plan" only prints hundreds of digits


def _require_positive(name: str, value) -> None:
    if not 0 < value < math.inf:  # NaN too; infinity would be printed as JSON's non-standard Infinity
        raise UsageError(f"{name} must be positive and finite, got {value}")


def plan_training(images_per_s_per_gpu: float, gpus: int, epochs: float = DEFAULT_EPOCHS,
                  dataset_size: int = IMAGENET_TRAIN_IMAGES, loader_images_per_s: float | None = None,
                  efficiency: float | None = None) -> TrainingPlan:
    """`efficiency` defaults to 0.9 on several GPUs and 1 on one; a loader ceiling of None means unlimited."""
    _require_positive("images per second per GPU", images_per_s_per_gpu)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise UsageError(f"the GPU count must be a positive integer, got {gpus!r}")
    _require_positive("epochs", epochs)
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise UsageError(f"the dataset size must be a positive integer, got {dataset_size!r}")
    if loader_images_per_s is not None:
        _require_positive("the loader's images per second", loader_images_per_s)
    if efficiency is None:
        efficiency = MULTI_GPU_EFFICIENCY if gpus > 1 else 1.0
    if not 0 < efficiency <= 1:
        raise UsageError(f"the scaling efficiency must be in (0, 1], got {efficiency}")

    compute = images_per_s_per_gpu * gpus * efficiency
    loader_binds = loader_images_per_s is not None and loader_images_per_s < compute
    effective = loader_images_per_s if loader_binds else compute
    hours = epochs * dataset_size / effective / 3600
    if not (compute < MAX_IMAGES_PER_S and 0 < hours < MAX_HOURS):  # e.g. 1e308 img/s, or a loader of 1e-300
        raise UsageError(f"these figures give a plan out of range ({compute:g} img/s, {hours:g} h; at most "
                         f"{MAX_IMAGES_PER_S:g} img/s and {MAX_HOURS:g} h): give measured rates")
    return TrainingPlan(images_per_s_per_gpu, gpus, epochs, dataset_size, efficiency, loader_images_per_s,
                        compute, effective, "loader" if loader_binds else "compute", hours)


def required_images_per_s_per_gpu(hours: float, gpus: int, epochs: float = DEFAULT_EPOCHS,
                                  dataset_size: int = IMAGENET_TRAIN_IMAGES, efficiency: float | None = None) -> float:
    """The per-GPU rate that finishes in `hours` (the inverse of `plan_training`, loader unlimited)."""
    _require_positive("the target hours", hours)
    unit = plan_training(1.0, gpus, epochs, dataset_size, efficiency=efficiency)
    return unit.hours / hours


def loader_ceiling(images_per_s_per_core: float, cores: int) -> float:
    """A node's loader images/s from a per-core measurement, assuming linear scaling with cores."""
    _require_positive("the loader's images per second per core", images_per_s_per_core)
    _require_positive("the node's CPU cores", cores)
    return images_per_s_per_core * cores


# The FFCV decode-once loader's CPU share per core (decode + both antialiased crops; photometric ops on the GPU), by
# the store's longest side: `bench loader --backend ffcv --photometric off --workers 2` on 400 synthetic 500x375
# photos, both stores in one session on a 2-core Intel Xeon shared with other jobs (README, "Converting a dataset"):
# 1,452 and 554 images/s. A 512-px store decodes about 4x the pixels of a 256-px one.
MEASURED_PER_CORE = {256: 726.0, 512: 277.0}


def per_core_rate(store_resolution: int) -> tuple[float, str]:
    """(images/s per core, where the figure comes from) for a store of `store_resolution` px: measured at 256 and
    512 px, and between or near them a fixed cost per image plus one per pixel through both measured points (a
    300-px store got the 256-px rate: it decodes 1.4x those pixels). UsageError far from both."""
    low, high = min(MEASURED_PER_CORE), max(MEASURED_PER_CORE)
    if not 0.75 * low <= store_resolution <= 1.25 * high:
        raise UsageError(f"--store-resolution {store_resolution}: figures exist for stores of {math.ceil(0.75 * low)} "
                         f"to {int(1.25 * high)} px (measured at {low} and {high}); measure yours with bench loader "
                         "and give its images/s per core as --loader-images-per-s-per-core")
    if store_resolution in MEASURED_PER_CORE:
        return MEASURED_PER_CORE[store_resolution], f"measured at a {store_resolution}-px store"
    per_pixel = (1 / MEASURED_PER_CORE[high] - 1 / MEASURED_PER_CORE[low]) / (high ** 2 - low ** 2)
    seconds = 1 / MEASURED_PER_CORE[low] + per_pixel * (store_resolution ** 2 - low ** 2)
    return round(1 / seconds, 1), f"estimated by pixels from the rates measured at {low}- and {high}-px stores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images-per-s", type=positive_number, required=True,
                        help="measured training images/s of one GPU")
    parser.add_argument("--gpus", type=positive_int, default=8, help="GPUs of the node")
    parser.add_argument("--epochs", type=positive_number, default=DEFAULT_EPOCHS, help="epochs of the run")
    parser.add_argument("--dataset-size", type=positive_int, default=IMAGENET_TRAIN_IMAGES,
                        help="images per epoch (ImageNet's training set)")
    parser.add_argument("--efficiency", type=fraction, default=None,
                        help=f"multi-GPU scaling efficiency (default {MULTI_GPU_EFFICIENCY} on several GPUs, 1 on one)")
    parser.add_argument("--loader-images-per-s", type=positive_number, default=None,
                        help="the data loader's ceiling for the whole node, images/s")
    parser.add_argument("--loader-images-per-s-per-core", type=positive_number, default=None,
                        help="the loader's images/s per CPU core (with --node-cores), instead of --loader-images-per-s")
    parser.add_argument("--node-cores", type=positive_int, default=None,
                        help="the node's CPU cores, with --loader-images-per-s-per-core or --store-resolution: the "
                             "loader's ceiling")
    parser.add_argument("--target-hours", type=positive_number, default=2.0,
                        help="report the per-GPU rate this needs")
    parser.add_argument("--store-resolution", type=positive_int, default=None,
                        help="the .beton's longest side (write_beton --max-resolution, e.g. 256 or 512): the CPU "
                             "cores the loader needs to feed the GPUs, from the measured per-core rate at that size "
                             "(or --loader-images-per-s-per-core), and with --node-cores the loader's ceiling")


def print_plan(args) -> dict:
    """One JSON line on stdout, one sentence on stderr; ValueError on bad inputs."""
    loader = args.loader_images_per_s
    per_core, source = args.loader_images_per_s_per_core, "given"
    if args.store_resolution is not None and per_core is None:
        per_core, source = per_core_rate(args.store_resolution)
        source += ": README, Converting a dataset"
    elif args.store_resolution is not None:  # the measured figure would be silently dropped
        source = f"given, instead of the figure for --store-resolution {args.store_resolution}"
    if loader is not None and args.loader_images_per_s_per_core is not None:
        raise UsageError("give the node's --loader-images-per-s or the rate per core (--loader-images-per-s-per-core), "
                         "not both")
    if args.node_cores is not None:
        if loader is not None:
            raise UsageError("--loader-images-per-s is the whole node's ceiling, and --node-cores makes one from the "
                             "rate per core: give one of them")
        if per_core is None:
            raise UsageError("--node-cores needs the loader's rate per core: --loader-images-per-s-per-core or "
                             "--store-resolution")
        loader = loader_ceiling(per_core, args.node_cores)
    plan = plan_training(args.images_per_s, args.gpus, args.epochs, args.dataset_size, loader, args.efficiency)
    needed = required_images_per_s_per_gpu(args.target_hours, args.gpus, args.epochs, args.dataset_size,
                                           plan.efficiency)
    result = {"bench": "plan", **asdict(plan), "compute_images_per_s": round(plan.compute_images_per_s, 1),
              "effective_images_per_s": round(plan.effective_images_per_s, 1), "hours": round(plan.hours, 3),
              "target_hours": args.target_hours, "images_per_s_per_gpu_needed": round(needed, 1),
              "meets_target": plan.hours <= args.target_hours}
    if per_core is not None:  # the loader's CPU need at the compute rate: what a store's resolution costs
        result.update(loader_images_per_s_per_core=per_core, loader_rate_source=source,
                      loader_cores_needed=round(plan.compute_images_per_s / per_core, 1), node_cores=args.node_cores)
    print(json.dumps(result), flush=True)
    gpus = "GPUs" if plan.gpus > 1 else "GPU"
    if plan.binding_limit == "loader":  # the rate is the loader's: the GPUs' is what faster loading would reach
        loader_text = f" (the {gpus} alone: {plan.compute_images_per_s:,.0f})"
    elif plan.loader_images_per_s is not None:
        loader_text = f"; the loader allows {plan.loader_images_per_s:,.0f}"
    else:
        loader_text = ("; the loader's ceiling is not known (give --node-cores)" if per_core is not None else
                       "; the loader's ceiling is not known (give --loader-images-per-s)")
    print(f"{plan.epochs:g} epochs of {plan.dataset_size:,} images on {plural(plan.gpus, 'GPU')} at "
          f"{plan.images_per_s_per_gpu:,.0f} img/s{' each' if plan.gpus > 1 else ''} (scaling {plan.efficiency:g}): "
          f"{plan.effective_images_per_s:,.0f} img/s, {plan.hours:.2f} h, {plan.binding_limit}-bound{loader_text}. "
          f"{args.target_hours:g} h needs {needed:,.0f} img/s per GPU{loader_need(plan, args.target_hours, per_core)}.",
          file=sys.stderr, flush=True)
    if per_core is not None:
        node = ""
        if args.node_cores is not None:
            enough = args.node_cores >= result["loader_cores_needed"]
            node = f"; the node's {args.node_cores:,} {'are enough' if enough else 'are too few'}"
        cores = plural(math.ceil(result["loader_cores_needed"]), "CPU core")
        print(f"To keep up with the {gpus} ({plan.compute_images_per_s:,.0f} img/s), the loader needs {cores}{node} "
              f"({per_core:,.0f} img/s per core, {source}).", file=sys.stderr, flush=True)
    return result


def loader_need(plan: TrainingPlan, hours: float, per_core: float | None) -> str:
    """For a loader-bound plan, what the loader must deliver for `hours` (faster GPUs alone would not help)."""
    if plan.binding_limit != "loader":
        return ""
    node_rate = plan.epochs * plan.dataset_size / (hours * 3600)
    cores = f" ({math.ceil(node_rate / per_core):,} cores)" if per_core else ""
    return f" and a loader of {node_rate:,.0f} img/s{cores}"
