"""`bench step`: one whole training step on synthetic data, ours (AMP, channels-last, foreach or graphed EMA,
chunked search) and optionally the original's way (fp32, NCHW, per-parameter EMA, dense distances), interleaved
in one process on the current device."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from dataset_prep.argument_parser import positive_int
from msf_fast.architectures import arch_name
from msf_fast.bench.timing import add_device_argument, interleaved_seconds, peak_rss_mb
from msf_fast.errors import UsageError

if TYPE_CHECKING:  # torch loads when the benchmark runs, not when its options are read
    import torch


def add_step_arguments(parser: argparse.ArgumentParser, arch: str, batch_size: int, resolution: int,
                       bank_size: int, steps: int) -> None:
    """The synthetic step's shape and timing options, shared by bench step and bench cpu (the formatter shows the
    defaults)."""
    parser.add_argument("--arch", type=arch_name, default=arch, help="torchvision ResNet")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per step")
    parser.add_argument("--resolution", type=positive_int, default=resolution, help="crop size in pixels")
    parser.add_argument("--bank-size", type=positive_int, default=bank_size, help="memory bank entries")
    parser.add_argument("--topk", type=positive_int, default=5, help="neighbours")
    parser.add_argument("--steps", type=positive_int, default=steps, help="steps per timed block")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed blocks per variant, median")


def check_step_shape(args) -> None:
    """The shape checks the trainer's config makes, as one-line ValueErrors naming the options."""
    if args.batch_size < 2:
        raise UsageError(f"--batch-size {args.batch_size}: BatchNorm needs at least 2 images per step")
    if args.bank_size % args.batch_size:
        raise UsageError(f"--bank-size {args.bank_size}: must be a multiple of --batch-size {args.batch_size}")
    if args.topk > args.bank_size:
        raise UsageError(f"--topk {args.topk}: must not exceed --bank-size {args.bank_size}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_step_arguments(parser, arch="resnet50", batch_size=256, resolution=224, bank_size=65536, steps=10)
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                        help="our step's autocast (default auto: bf16 on CUDA and on CPUs with native bf16, else fp32)")
    parser.add_argument("--reference", action="store_true", help="also time the original-style step, print the ratio")
    add_device_argument(parser)


def synthetic_batch(args, device: torch.device):
    """Two random views and labels, the same for every variant."""
    import torch
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.resolution, args.resolution)
    views = [torch.randn(shape, generator=generator).to(device) for _ in range(2)]
    return views[0], views[1], torch.arange(args.batch_size, device=device) % 10


def our_step(args, device: torch.device, amp: str, channels_last, online_view, target_view, labels):
    """A callable running one of our training steps (amp resolved as the trainer resolves it)."""
    import torch
    from msf_fast.bank import default_chunk_rows
    from msf_fast.ema import make_ema
    from msf_fast.model import MSF
    from msf_fast.precision import resolve_precision
    from msf_fast.step import bank_dtype, make_sgd, train_step

    torch.manual_seed(0)
    precision = resolve_precision(amp, device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = MSF(arch=args.arch, bank_size=args.bank_size, topk=args.topk,  # the trainer's choices throughout
                bank_chunk_size=default_chunk_rows(device), bank_dtype=bank_dtype("auto", device, precision))
    model = model.to(device, memory_format=layout)
    ema = make_ema(model.online, model.target, device)  # CUDA-graph replay on CUDA
    optimizer = make_sgd(model.trainable_parameters(), 0.05, 0.9, 1e-4, device)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    online, target = (view.contiguous(memory_format=layout) for view in (online_view, target_view))
    return lambda: train_step(model, ema, optimizer, scaler, precision, online, target, labels, 0.99)


def step_runners(args, device: torch.device) -> dict:
    """name -> a callable running one training step of that variant."""
    import torch
    from msf_fast.reference import OriginalMeanShift

    online_view, target_view, labels = synthetic_batch(args, device)
    runners = {"msf-fast": our_step(args, device, args.amp, True, online_view, target_view, labels)}
    if args.reference:
        torch.manual_seed(0)
        reference = OriginalMeanShift(args.arch, mem_bank_size=args.bank_size, topk=args.topk).to(device)
        ref_optimizer = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.05,
                                        momentum=0.9, weight_decay=1e-4, foreach=False)

        def reference_step():  # fp32, NCHW, per-parameter EMA, dense distances: as the original trains
            loss, _ = reference(online_view, target_view, labels)
            ref_optimizer.zero_grad()
            loss.backward()
            ref_optimizer.step()
        runners["reference"] = reference_step
    return runners


def bench_step(args) -> list[dict]:
    check_step_shape(args)  # before torch loads
    import torch
    from msf_fast.devices import device_option
    device = device_option(args.device)
    runners = step_runners(args, device)
    from msf_fast.precision import resolve_precision
    precision = resolve_precision(args.amp, device)
    amp_used = precision.name  # what auto resolved to here
    if precision.warning:
        print(precision.warning, file=sys.stderr, flush=True)
    for run in runners.values():  # warm-up: allocator, cuDNN autotuning, first-touch
        for _ in range(2):
            run()
    per_step = interleaved_seconds(runners, args.repeats, device, calls=args.steps)
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = []
    for name in runners:
        seconds = per_step[name]
        results.append({"bench": "step", "variant": name, "arch": args.arch, "batch": args.batch_size,
                        "resolution": args.resolution, "device": name_of_device,
                        "amp": amp_used if name == "msf-fast" else "off",
                        "ms_per_step": round(1000 * seconds, 2), "images_per_s": round(args.batch_size / seconds, 1)})
        print(json.dumps(results[-1]), flush=True)
    # one process holds every variant, so the peak is the run's, not a variant's
    summary = {"bench": "step", "process_peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
               if device.type == "cuda" else round(peak_rss_mb(), 1)}
    if args.reference:
        summary["speedup_vs_reference"] = round(results[1]["ms_per_step"] / results[0]["ms_per_step"], 2)
    print(json.dumps(summary), flush=True)
    return results + [summary]
