"""`bench cpu`: the CPU-dependent defaults measured on this CPU, in one process, interleaved: our training step in
fp32 and bf16 autocast, each in NCHW and channels-last, and what `amp auto` picks here (and why) against the
fastest variant (the trainer's default layout is channels-last). Run it with
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` to see a CPU without native bf16."""
from __future__ import annotations

import argparse
import json

from dataset_prep.argument_parser import non_negative_int
from msf_fast.bench.step import add_step_arguments, check_step_shape, our_step, synthetic_batch
from msf_fast.bench.timing import interleaved_seconds

VARIANTS = {"fp32-nchw": ("off", False), "fp32-channels-last": ("off", True),
            "bf16-nchw": ("bf16", False), "bf16-channels-last": ("bf16", True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_step_arguments(parser, arch="resnet18", batch_size=32, resolution=64, bank_size=4096, steps=3)
    parser.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (0: torch's default here)")

def bench_cpu(args) -> list[dict]:
    check_step_shape(args)  # before torch loads
    import torch
    from msf_fast.precision import cpu_bf16_support, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    batch = synthetic_batch(args, device)
    runners = {name: our_step(args, device, amp, layout, *batch) for name, (amp, layout) in VARIANTS.items()}
    for run in runners.values():  # warm-up: allocator, oneDNN primitive caches
        run()
    per_step = interleaved_seconds(runners, args.repeats, device, calls=args.steps)
    rate = {name: args.batch_size / seconds for name, seconds in per_step.items()}
    results = []
    for name, images_per_s in rate.items():
        results.append({"bench": "cpu", "variant": name, "arch": args.arch, "batch": args.batch_size,
                        "resolution": args.resolution, "threads": torch.get_num_threads(),
                        "images_per_s": round(images_per_s, 1)})
        print(json.dumps(results[-1]), flush=True)
    chosen = resolve_precision("auto", device)
    auto = f"{chosen.name}-channels-last"  # the trainer's defaults: amp auto, channels-last
    fastest = max(rate, key=rate.get)
    summary = {"bench": "cpu", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "native_bf16": cpu_bf16_support().native, "auto": auto, "auto_reason": chosen.reason,
               "fastest": fastest, "auto_vs_fastest": round(rate[auto] / rate[fastest], 2),
               "bf16_vs_fp32": round(rate["bf16-channels-last"] / rate["fp32-channels-last"], 2),
               "channels_last_vs_nchw_fp32": round(rate["fp32-channels-last"] / rate["fp32-nchw"], 2)}
    print(json.dumps(summary), flush=True)
    return results + [summary]
