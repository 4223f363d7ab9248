"""`bench train`: the real trainer for `--steps` steps, and which side bounds it: the loader or the step.

One invocation measures, on the same model and loader:
  - loader alone: `--steps` batches of the loader, nothing trained (after `--warmup` batches; the first
    batch's wait, i.e. worker start-up or FFCV's compilation, is reported apart as `loader_start_s`);
  - step alone: `--steps` training steps on one fixed batch already on the device (after `--warmup` steps);
  - end to end: `Trainer.train()` for `--steps` steps, fed by that loader; its images/s and the share of the
    time it waited for data, as the trainer measures them (its loader start-up excluded).
The loader-alone and step-alone parts run half before and half after the end-to-end run, so that a change of a
shared machine's load during the run shows on both sides of the comparison (`*_blocks`: the two halves' rates).
`bound` is the trainer's verdict: "loader" when the run waited for data more than 10 % of its time, else
"compute". `end_to_end_vs_slower_alone` compares the run with the slower of its two parts alone: 1 when loading
and stepping overlap perfectly; well below 1 when they slow each other down (on a CPU, DataLoader workers and the
step share the cores: the run can be compute-bound by its wait and still far below both rates alone). The data is `--data` (an ImageFolder, a .beton or a TFRecord store, read by `--backend`) or
`--synthetic`: no loader at all, uint8 crops made once on the device and, per batch, the recipe's batched
photometric ops as the FFCV path runs them (`pipelines/synthetic.py`): the device's whole share of the work.
Prints one JSON line; the trainer's own lines go to stderr. The run folder is temporary unless `--out`.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from dataset_prep.argument_parser import device_name, non_negative_int, positive_int
from msf_fast.architectures import arch_name
from msf_fast.bench.timing import peak_rss_mb, synchronize
from msf_fast.errors import UsageError
from pipelines.recipe import RECIPE_NAMES

if TYPE_CHECKING:  # torch loads when the benchmark runs, not when its options are read
    import torch

PAPER_BANK_SIZE = 1_024_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="training data: an ImageFolder, a .beton or a TFRecord store")
    source.add_argument("--synthetic", action="store_true",
                        help="no loader: uint8 crops made on the device, the recipe's photometric ops per batch "
                             "(as the FFCV path), then the step")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "ffcv", "dali"],
                        help="loader of --data (default auto: ffcv for a .beton, dali for a TFRecord store, torch "
                             "for a folder)")
    parser.add_argument("--arch", type=arch_name, default="resnet50", help="torchvision ResNet")
    parser.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem, for 32-64 px crops")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per step")
    parser.add_argument("--resolution", type=positive_int, default=224, help="crop size in pixels")
    parser.add_argument("--recipe", default="w/s", choices=RECIPE_NAMES, help="target/online views: w weak, s strong")
    parser.add_argument("--bank-size", type=positive_int, default=PAPER_BANK_SIZE,
                        help="memory bank entries, a multiple of --batch-size; the paper's size")
    parser.add_argument("--topk", type=positive_int, default=5, help="neighbours")
    parser.add_argument("--steps", type=positive_int, default=50,
                        help="timed steps end to end, and batches or steps of the loader-alone and step-alone parts")
    parser.add_argument("--warmup", type=non_negative_int, default=5,
                        help="untimed batches and steps before the loader-alone and step-alone parts")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                        help="autocast dtype; auto = bf16 where supported")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="training device: auto (cuda when present), cpu or cuda (the trainer takes one GPU per "
                             "process: choose it with CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--workers", type=non_negative_int, default=None,
                        help="loader workers (DataLoader processes, FFCV/DALI threads; default min(8, cores)); "
                             "not with --synthetic, which has no loader")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch CPU threads; 0 = on the CPU, the cores the loader workers leave")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders (train.compile)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of weights, data order and augmentations")
    parser.add_argument("--out", default="", help="keep the run folder (log.jsonl, checkpoint) here (default: a "
                                                  "temporary folder, removed)")


# the trainer's config keys that this command sets from its own options, as its errors should name them
OPTION_OF_KEY = {"model.arch": "--arch", "model.small_input": "--small-input", "train.batch_size": "--batch-size",
                 "data.resolution": "--resolution", "data.recipe": "--recipe", "msf.bank_size": "--bank-size",
                 "msf.topk": "--topk", "train.max_steps": "--steps", "train.amp": "--amp", "train.device": "--device",
                 "data.workers": "--workers", "train.threads": "--threads", "train.compile": "--compile",
                 "train.seed": "--seed", "logging.folder": "--out", "data.backend": "--backend",
                 "data.train_path": "--data"}


def in_bench_options(message: str) -> str:
    """A trainer's config error told with this command's options: 'msf.topk=500: must not exceed
    msf.bank_size=256' -> '--topk 500: must not exceed --bank-size 256'."""
    for key, option in OPTION_OF_KEY.items():
        message = re.sub(rf"(?<![\w.]){re.escape(key)}(=|\b)", lambda m: option + (" " if m[1] == "=" else ""),
                         message)
    return message


def trainer_config(args, folder: str):
    """The trainer's config for this benchmark: no k-NN, no progress bar, a checkpoint only at the end."""
    from msf_fast.config import load_config

    argv = [f"--model.arch={args.arch}", f"--model.small_input={int(args.small_input)}",
            f"--train.batch_size={args.batch_size}", f"--data.resolution={args.resolution}",
            f"--data.recipe={args.recipe}", f"--msf.bank_size={args.bank_size}", f"--msf.topk={args.topk}",
            f"--train.max_steps={args.steps}", "--train.epochs=10000", f"--train.amp={args.amp}",
            f"--train.device={args.device}", f"--data.workers={args.workers}",
            f"--train.threads={args.threads}", f"--train.compile={int(args.compile)}", f"--train.seed={args.seed}",
            f"--logging.folder={folder}", "--logging.progress=0", "--logging.checkpoint_every=0",
            f"--logging.log_every={args.steps}", "--eval.knn_final=0"]
    if not args.synthetic:
        return load_config(argv + [f"--data.backend={args.backend}", f"--data.train_path={args.data}"])
    if "check_data" in inspect.signature(load_config).parameters:
        return load_config(argv, check_data=False)
    empty = os.path.join(folder, "no-data")  # older load_config: any existing folder passes as data.train_path
    os.makedirs(empty, exist_ok=True)
    return load_config(argv + [f"--data.train_path={empty}"])


def synthetic_loader(cfg, args):
    import torch
    from msf_fast.precision import resolve_precision
    from msf_fast.devices import device_option
    from pipelines import two_view_recipe
    from pipelines.synthetic import SyntheticTwoViewLoader

    device = device_option(cfg.train.device)
    precision = resolve_precision(cfg.train.amp, device)
    return SyntheticTwoViewLoader(two_view_recipe(cfg.data.recipe, cfg.data.resolution), batch_size=args.batch_size,
                                  steps_per_epoch=args.warmup + args.steps, seed=args.seed, device=device,
                                  dtype=precision.dtype if device.type == "cuda" and precision.dtype else torch.float32)


def loader_alone(loader, device: torch.device, warmup: int, steps: int, epoch: int = 0) -> dict:
    """{"images", "seconds"} of `steps` batches after `warmup` more, "start_up": the first batch's wait, "first": that
    batch on the device; iterating epochs from `epoch` until enough batches came."""
    first = start_up = timed_from = None
    index, images = 0, 0
    started = time.perf_counter()
    while index <= warmup + steps:
        arrived = 0
        for online, target, labels in loader.iterate(epoch):
            arrived += 1
            if index == 0:
                start_up = time.perf_counter() - started
                first = tuple(t.to(device, non_blocking=True).clone() for t in (online, target, labels))
            if index == warmup:
                synchronize(device)
                timed_from = time.perf_counter()
            elif index > warmup:
                images += len(labels)
            index += 1
            if index > warmup + steps:
                break
        if not arrived:
            raise RuntimeError(f"the {loader.backend} loader yielded no batch for epoch {epoch}")
        epoch += 1
    synchronize(device)
    return {"images": images, "seconds": time.perf_counter() - timed_from, "start_up": start_up, "first": first}


def step_alone(trainer, batch: tuple, warmup: int, steps: int) -> dict:
    """{"images", "seconds"} of `steps` of the trainer's steps on one fixed batch, after `warmup` more."""
    from msf_fast.step import train_step

    def step():
        train_step(trainer.forward_model, trainer.ema, trainer.optimizer, trainer.scaler, trainer.precision,
                   *batch, trainer.cfg.msf.momentum)

    for _ in range(warmup):
        step()
    synchronize(trainer.device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(trainer.device)
    return {"images": steps * len(batch[2]), "seconds": time.perf_counter() - started}


def rate(*blocks: dict) -> float:
    return sum(block["images"] for block in blocks) / sum(block["seconds"] for block in blocks)


def bench_train(args) -> dict:
    from msf_fast.errors import UserError
    if args.synthetic and args.workers is not None:
        raise UsageError(f"--workers {args.workers}: --synthetic has no loader (its batches are made on the device); "
                         "give --data to time a loader")
    if args.workers is None:
        args.workers = 0 if args.synthetic else min(8, os.cpu_count() or 1)
    if args.device.startswith("cuda:"):
        raise UsageError(f"--device {args.device}: the trainer takes one GPU per process, as cuda; choose it with "
                         f"CUDA_VISIBLE_DEVICES={args.device.removeprefix('cuda:')}")
    with contextlib.ExitStack() as stack:
        folder = args.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-train-"))
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # stdout: the one JSON line
        try:
            cfg = trainer_config(args, folder)  # torch-free, as the trainer's own checks: mistakes answer at once
        except UserError as error:
            raise UsageError(in_bench_options(str(error))) from None
        import torch
        try:
            from msf_fast.trainer import Trainer
        except ModuleNotFoundError as error:
            raise SystemExit(f"bench train: the trainer needs the Python package {error.name!r} "
                             f"(pip install -e . installs the project's dependencies)") from None
        try:
            trainer = Trainer(cfg, loader=synthetic_loader(cfg, args) if args.synthetic else None)
        except UserError as error:
            raise UsageError(in_bench_options(str(error))) from None
        trainer.threads_option = OPTION_OF_KEY["train.threads"]
        device, loader = trainer.device, trainer.loader
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # Half of the loader-alone and step-alone batches before the end-to-end run, half after: a change of the
        # machine's load during the run (shared machines) shows in both sides of the comparison.
        before, after = (args.steps + 1) // 2, args.steps // 2
        loader_blocks = [loader_alone(loader, device, args.warmup, before)]
        batch = loader_blocks[0].pop("first")
        step_blocks = [step_alone(trainer, batch, args.warmup, before)]
        loader.compile_seconds = None  # the run's own first wait is its start-up (excluded by the trainer)
        split = trainer.train().time
        if after:
            loader_blocks.append(loader_alone(loader, device, 0, after, epoch=trainer.epoch + 1))
            step_blocks.append(step_alone(trainer, batch, 0, after))
        del batch  # the trainer has said its verdict ("N steps, R images/s; bound: ...")
    slower = min(rate(*loader_blocks), rate(*step_blocks))
    if split.images_per_s < 0.8 * slower:
        print(f"bench train: end to end {split.images_per_s:,.0f} images/s, {split.images_per_s / slower:.0%} of the "
              f"slower part alone ({slower:,.0f}): the loader and the step slow each other down (shared cores?)",
              file=sys.stderr)
    precision = trainer.precision.dtype
    result = {"bench": "train", "data": "synthetic" if args.synthetic else args.data, "backend": loader.backend,
              "arch": args.arch, "batch": args.batch_size, "resolution": args.resolution, "recipe": args.recipe,
              "amp": str(precision).removeprefix("torch.") if precision else "off",
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "workers": args.workers, "threads": torch.get_num_threads(),
              "busy_cores_of_others": trainer.busy_cores_of_others,
              "steps": args.steps,
              "images_per_s": round(split.images_per_s, 1),
              "loader_images_per_s": round(rate(*loader_blocks), 1),
              "step_images_per_s": round(rate(*step_blocks), 1),
              "data_wait_fraction": round(split.data_wait_fraction, 4),
              "bound": split.bound,
              "end_to_end_vs_step": round(split.images_per_s / rate(*step_blocks), 3),
              "end_to_end_vs_slower_alone": round(split.images_per_s / slower, 3),
              "loader_start_s": round(loader_blocks[0]["start_up"], 2),
              # before and after the end-to-end run: far apart, the machine's load changed in between
              "loader_images_per_s_blocks": [round(rate(block), 1) for block in loader_blocks],
              "step_images_per_s_blocks": [round(rate(block), 1) for block in step_blocks],
              "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                                   else peak_rss_mb(), 1)}
    if args.out:
        result["folder"] = args.out
    print(json.dumps(result), flush=True)
    return result
