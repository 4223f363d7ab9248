"""Benchmarks that print one JSON line per measurement (ratios come from one run).

    python -m msf_fast.bench bank [--batch-size 256 --bank-size 1024000 --dim 512 --topk 5 --chunk 65536
                                   --dtype float32]
    python -m msf_fast.bench ema  [--arch resnet50]
    python -m msf_fast.bench step [--arch resnet50 --batch-size 256 --resolution 224 --steps 10 --reference]
    python -m msf_fast.bench loader --data IMAGEFOLDER [--backend torch ffcv] [--compare] [--recipe w/s] ...
    python -m msf_fast.bench plan --images-per-s 4500 --gpus 8 [--epochs 200 --loader-images-per-s Y ...]

`bank` times the memory-bank search + loss gather against the original's dense formulation,
each variant in its own process so that its peak extra memory (above the bank itself) is measured.
`plan` measures nothing: it turns a per-GPU step rate into wall time for a whole run (`msf_fast.plan`).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from msf_fast import bench_loader as bench_loader_module
from msf_fast import plan as plan_module

BANK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _interleaved_seconds(runners: dict, repeats: int, device: torch.device, calls: int = 1) -> dict:
    """name -> median seconds per call, timing blocks of `calls` calls interleaved across the
    variants so that every variant sees the same machine load."""
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                run()
            _sync(device)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def _bank_variant(args) -> dict:
    """Runs in a child process: one variant, its median time and its peak extra memory."""
    from msf_fast.bank import MemoryBank
    device = torch.device(args.device)
    dtype = BANK_DTYPES[args.dtype]
    torch.manual_seed(0)
    bank = MemoryBank(args.bank_size, args.dim, chunk_size=args.chunk, dtype=dtype).to(device)
    targets = torch.nn.functional.normalize(torch.randn(args.batch_size, args.dim, device=device), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(args.batch_size, args.dim, device=device), dim=1)

    def chunked():  # as the model: float32 queries against the gathered bank rows
        idx = bank.nearest(targets, args.topk)
        return (2 - 2 * torch.einsum("bd,bkd->bk", queries, bank.gather(idx).float())).mean()

    def dense():  # the original: two full B x N distance matrices (in the bank's dtype)
        dist_t = 2 - 2 * targets.to(dtype) @ bank.embeddings.T
        dist_q = 2 - 2 * queries.to(dtype) @ bank.embeddings.T
        idx = dist_t.topk(args.topk, dim=1, largest=False).indices
        return dist_q.gather(1, idx).float().mean()

    fn = {"chunked": chunked, "dense": dense}[args.variant]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss_mb()
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        value = fn().item()
        _sync(device)
        times.append(time.perf_counter() - start)
    extra = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda"
             else _peak_rss_mb() - base)
    return {"bench": "bank", "variant": args.variant, "device": str(device), "batch": args.batch_size,
            "bank": args.bank_size, "dim": args.dim, "topk": args.topk, "chunk": args.chunk, "dtype": args.dtype,
            "ms": round(1000 * statistics.median(times), 2), "peak_extra_mb": round(extra, 1), "loss": value}


def bench_bank(args) -> list[dict]:
    results = []
    for variant in ("chunked", "dense"):
        cmd = [sys.executable, "-m", "msf_fast.bench", "_bank_variant", "--variant", variant,
               *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k in ("batch_size", "bank_size", "dim", "topk", "chunk", "repeats", "device", "dtype"))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    chunked, dense = results
    # The dense half-precision variant rounds its distances to the bank's dtype; the chunked one does not.
    tolerance = 1e-4 if args.dtype == "float32" else 1e-2
    summary = {"bench": "bank", "dtype": args.dtype, "speedup_vs_dense": round(dense["ms"] / chunked["ms"], 2),
               "memory_ratio_dense_over_chunked": round(dense["peak_extra_mb"] / max(chunked["peak_extra_mb"], 1), 1),
               "loss_abs_diff": abs(dense["loss"] - chunked["loss"]),
               "same_loss": abs(dense["loss"] - chunked["loss"]) < tolerance}
    print(json.dumps(summary), flush=True)
    return results + [summary]


def bench_ema(args) -> list[dict]:
    """foreach vs the per-parameter loop, plus the CUDA-graph replay on CUDA (captured before timing)."""
    from msf_fast.ema import ForeachEMA, GraphedEMA, reference_ema_update
    from msf_fast.model import MSF
    device = torch.device(args.device)
    model = MSF(arch=args.arch, bank_size=256).to(device)
    ema = ForeachEMA(model.online, model.target)
    variants = {"foreach": lambda: ema.update(0.99),
                "reference": lambda: reference_ema_update(model.online, model.target, 0.99)}
    if device.type == "cuda":
        graphed = GraphedEMA(model.online, model.target)
        graphed.update(0.99)  # warm-up and capture
        variants["graphed"] = lambda: graphed.update(0.99)
    seconds = _interleaved_seconds(variants, args.repeats, device)
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


def _step_runners(args, device: torch.device) -> dict:
    """name -> a callable running one training step of that variant."""
    from msf_fast.ema import make_ema
    from msf_fast.model import MSF
    from msf_fast.reference import OriginalMeanShift
    from msf_fast.step import bank_dtype, make_sgd, resolve_precision, train_step

    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.resolution, args.resolution)
    online_view = torch.randn(shape, generator=generator).to(device)
    target_view = torch.randn(shape, generator=generator).to(device)
    labels = torch.arange(args.batch_size, device=device) % 10
    runners = {}

    torch.manual_seed(0)
    precision = resolve_precision(args.amp, device)
    model = MSF(arch=args.arch, bank_size=args.bank_size, topk=args.topk,  # the trainer's choices throughout
                bank_dtype=bank_dtype("auto", device, precision))
    model = model.to(device, memory_format=torch.channels_last)
    ema = make_ema(model.online, model.target, device)  # CUDA-graph replay on CUDA
    optimizer = make_sgd(model.trainable_parameters(), 0.05, 0.9, 1e-4, device)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    online_cl = online_view.contiguous(memory_format=torch.channels_last)
    target_cl = target_view.contiguous(memory_format=torch.channels_last)
    runners["msf-fast"] = lambda: train_step(model, ema, optimizer, scaler, precision, online_cl, target_cl,
                                             labels, 0.99)
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
    device = torch.device(args.device)
    if args.bank_size % args.batch_size:
        raise SystemExit(f"bench step: --bank-size {args.bank_size} is not a multiple of --batch-size {args.batch_size}")
    runners = _step_runners(args, device)
    for run in runners.values():  # warm-up: allocator, cuDNN autotuning, first-touch
        for _ in range(2):
            run()
    per_step = _interleaved_seconds(runners, args.repeats, device, calls=args.steps)
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = []
    for name in runners:
        seconds = per_step[name]
        results.append({"bench": "step", "variant": name, "arch": args.arch, "batch": args.batch_size,
                        "resolution": args.resolution, "device": name_of_device, "amp": args.amp if name == "msf-fast" else "off",
                        "ms_per_step": round(1000 * seconds, 2), "images_per_s": round(args.batch_size / seconds, 1)})
        print(json.dumps(results[-1]), flush=True)
    # one process holds every variant, so the peak is the run's, not a variant's
    summary = {"bench": "step", "process_peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
               if device.type == "cuda" else round(_peak_rss_mb(), 1)}
    if args.reference:
        summary["speedup_vs_reference"] = round(results[1]["ms_per_step"] / results[0]["ms_per_step"], 2)
    print(json.dumps(summary), flush=True)
    return results + [summary]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ("bank", "_bank_variant"):
        p = sub.add_parser(name, help="memory-bank search: chunked vs dense" if name == "bank" else argparse.SUPPRESS)
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--bank-size", type=int, default=1_024_000)
        p.add_argument("--dim", type=int, default=512)
        p.add_argument("--topk", type=int, default=5)
        p.add_argument("--chunk", type=int, default=65536)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--device", default=default_device)
        p.add_argument("--dtype", choices=list(BANK_DTYPES), default="float32", help="the bank's dtype")
        if name == "_bank_variant":
            p.add_argument("--variant", choices=["chunked", "dense"], required=True)
    p = sub.add_parser("ema", help="target EMA update: foreach vs per-parameter loop")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default=default_device)
    p = sub.add_parser("step", help="one whole training step on synthetic data (optionally vs the original's way)")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--bank-size", type=int, default=65536)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per variant (median reported)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--reference", action="store_true", help="also time the original-style step, print the ratio")
    p.add_argument("--device", default=default_device)
    p = sub.add_parser("loader", help="two-view loader throughput: torchvision baseline vs FFCV")
    bench_loader_module.add_arguments(p)
    p = sub.add_parser("plan", help="wall time of a whole run from a per-GPU step rate (nothing is measured)")
    plan_module.add_arguments(p)
    args = parser.parse_args(argv)
    if args.command == "plan":
        try:
            plan_module.print_plan(args)
        except ValueError as error:
            parser.error(f"plan: {error}")
    elif args.command == "loader":
        bench_loader_module.bench_loader(args)
    elif args.command == "step":
        bench_step(args)
    elif args.command == "_bank_variant":
        print(json.dumps(_bank_variant(args)))
    elif args.command == "bank":
        bench_bank(args)
    elif args.command == "ema":
        bench_ema(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
