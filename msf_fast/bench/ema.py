"""`bench ema`: the target EMA update, foreach vs the original's per-parameter loop (and the CUDA-graph replay
on CUDA, captured before timing)."""
from __future__ import annotations

import argparse
import json

from dataset_prep.argument_parser import positive_int
from msf_fast.architectures import arch_name
from msf_fast.bench.timing import add_device_argument, interleaved_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", type=arch_name, default="resnet50", help="torchvision ResNet (default resnet50)")
    parser.add_argument("--repeats", type=positive_int, default=20,
                        help="timed updates per variant, median (default 20)")
    add_device_argument(parser)


def bench_ema(args) -> list[dict]:
    from msf_fast.devices import device_option
    from msf_fast.ema import ForeachEMA, GraphedEMA, reference_ema_update
    from msf_fast.model import MSF
    device = device_option(args.device)
    model = MSF(arch=args.arch, bank_size=256).to(device)
    ema = ForeachEMA(model.online, model.target)
    variants = {"foreach": lambda: ema.update(0.99),
                "reference": lambda: reference_ema_update(model.online, model.target, 0.99)}
    if device.type == "cuda":
        graphed = GraphedEMA(model.online, model.target)
        graphed.update(0.99)  # warm-up and capture
        variants["graphed"] = lambda: graphed.update(0.99)
    seconds = interleaved_seconds(variants, args.repeats, device)
    results = {}
    for name in variants:
        results[name] = {"bench": "ema", "variant": name, "arch": args.arch, "device": str(device),
                         "us": round(1e6 * seconds[name], 1)}
        print(json.dumps(results[name]), flush=True)
    summary = {"bench": "ema", "speedup_vs_reference": round(results["reference"]["us"] / results["foreach"]["us"], 2)}
    if "graphed" in results:
        summary["graphed_speedup_vs_foreach"] = round(results["foreach"]["us"] / results["graphed"]["us"], 2)
    print(json.dumps(summary), flush=True)
    return list(results.values()) + [summary]
