"""`bench plan`, time to train: wall hours of a whole run from a measured per-GPU step rate.

    python -m msf_fast.bench plan --images-per-s 4500 --gpus 8 [--epochs 200] [--loader-images-per-s Y]
                                  [--efficiency 0.9] [--dataset-size 1281167] [--target-hours 2]

The node trains at min(per-GPU rate x GPUs x scaling efficiency, data-loader ceiling); whichever is
lower is the binding limit. The loader ceiling is images/s for the whole node: give it directly, or as
`--loader-images-per-s-per-core` (`bench loader` images/s divided by the cores it ran on, e.g. /2 on the
2-core machine) times `--node-cores`, which assumes decoding scales linearly with cores.

Reference: the product goal is 200 epochs of ResNet-50 on ImageNet (1,281,167 images, i.e. 256.2M images)
on 8 GPUs in under 2 hours, i.e. 35,588 images/s for the node: 4,449 images/s per GPU with perfect
scaling (≈4,500), 4,943 at 90% scaling efficiency. At 4,500 images/s per GPU and 0.9, the run takes 2.20 h.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

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


def _require_positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


def plan_training(images_per_s_per_gpu: float, gpus: int, epochs: float = DEFAULT_EPOCHS,
                  dataset_size: int = IMAGENET_TRAIN_IMAGES, loader_images_per_s: float | None = None,
                  efficiency: float | None = None) -> TrainingPlan:
    """`efficiency` defaults to 0.9 on several GPUs and 1 on one; a loader ceiling of None means unlimited."""
    _require_positive("images per second per GPU", images_per_s_per_gpu)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"the GPU count must be a positive integer, got {gpus!r}")
    _require_positive("epochs", epochs)
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(f"the dataset size must be a positive integer, got {dataset_size!r}")
    if loader_images_per_s is not None:
        _require_positive("the loader's images per second", loader_images_per_s)
    if efficiency is None:
        efficiency = MULTI_GPU_EFFICIENCY if gpus > 1 else 1.0
    if not 0 < efficiency <= 1:
        raise ValueError(f"the scaling efficiency must be in (0, 1], got {efficiency}")

    compute = images_per_s_per_gpu * gpus * efficiency
    loader_binds = loader_images_per_s is not None and loader_images_per_s < compute
    effective = loader_images_per_s if loader_binds else compute
    return TrainingPlan(images_per_s_per_gpu, gpus, epochs, dataset_size, efficiency, loader_images_per_s,
                        compute, effective, "loader" if loader_binds else "compute",
                        epochs * dataset_size / effective / 3600)


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images-per-s", type=float, required=True, help="measured training images/s of one GPU")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the node")
    parser.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="epochs of the run")
    parser.add_argument("--dataset-size", type=int, default=IMAGENET_TRAIN_IMAGES,
                        help="images per epoch (ImageNet's training set)")
    parser.add_argument("--efficiency", type=float, default=None,
                        help=f"multi-GPU scaling efficiency (default {MULTI_GPU_EFFICIENCY} on several GPUs, 1 on one)")
    parser.add_argument("--loader-images-per-s", type=float, default=None,
                        help="the data loader's ceiling for the whole node, images/s")
    parser.add_argument("--loader-images-per-s-per-core", type=float, default=None,
                        help="the loader's images/s per CPU core (with --node-cores), instead of --loader-images-per-s")
    parser.add_argument("--node-cores", type=int, default=None,
                        help="the node's CPU cores, with --loader-images-per-s-per-core")
    parser.add_argument("--target-hours", type=float, default=2.0, help="report the per-GPU rate this needs")


def print_plan(args) -> dict:
    """One JSON line on stdout, one sentence on stderr; ValueError on bad inputs."""
    loader = args.loader_images_per_s
    if args.loader_images_per_s_per_core is not None or args.node_cores is not None:
        if loader is not None:
            raise ValueError("give --loader-images-per-s or --loader-images-per-s-per-core with --node-cores, not both")
        if args.loader_images_per_s_per_core is None or args.node_cores is None:
            raise ValueError("--loader-images-per-s-per-core and --node-cores go together")
        loader = loader_ceiling(args.loader_images_per_s_per_core, args.node_cores)
    plan = plan_training(args.images_per_s, args.gpus, args.epochs, args.dataset_size, loader, args.efficiency)
    needed = required_images_per_s_per_gpu(args.target_hours, args.gpus, args.epochs, args.dataset_size,
                                           plan.efficiency)
    result = {"bench": "plan", **asdict(plan), "compute_images_per_s": round(plan.compute_images_per_s, 1),
              "effective_images_per_s": round(plan.effective_images_per_s, 1), "hours": round(plan.hours, 3),
              "target_hours": args.target_hours, "images_per_s_per_gpu_needed": round(needed, 1),
              "meets_target": plan.hours <= args.target_hours}
    print(json.dumps(result), flush=True)
    loader_text = (f"; the loader allows {plan.loader_images_per_s:,.0f}" if plan.loader_images_per_s is not None
                   else "; loader not limiting (no ceiling given)")
    print(f"{plan.epochs:g} epochs of {plan.dataset_size:,} images on {plan.gpus} GPU(s) at "
          f"{plan.images_per_s_per_gpu:,.0f} img/s each (scaling {plan.efficiency:g}): "
          f"{plan.effective_images_per_s:,.0f} img/s, {plan.hours:.2f} h, {plan.binding_limit}-bound{loader_text}. "
          f"{args.target_hours:g} h needs {needed:,.0f} img/s per GPU.", file=sys.stderr, flush=True)
    return result
