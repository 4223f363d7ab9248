"""Benchmarks that print one JSON line per measurement (ratios come from one run).

    python -m msf_fast.bench bank [--batch-size 256 --bank-size 1024000 --dim 512 --topk 5 --chunk 65536]
    python -m msf_fast.bench ema  [--arch resnet50]

`bank` times the memory-bank search + loss gather against the original's dense formulation,
each variant in its own process so that its peak extra memory (above the bank itself) is measured.
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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _bank_variant(args) -> dict:
    """Runs in a child process: one variant, its median time and its peak extra memory."""
    from msf_fast.bank import MemoryBank
    device = torch.device(args.device)
    torch.manual_seed(0)
    bank = MemoryBank(args.bank_size, args.dim, chunk_size=args.chunk).to(device)
    targets = torch.nn.functional.normalize(torch.randn(args.batch_size, args.dim, device=device), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(args.batch_size, args.dim, device=device), dim=1)

    def chunked():
        idx = bank.nearest(targets, args.topk)
        return (2 - 2 * torch.einsum("bd,bkd->bk", queries, bank.gather(idx))).mean()

    def dense():  # the original: two full B x N distance matrices
        dist_t = 2 - 2 * targets @ bank.embeddings.T
        dist_q = 2 - 2 * queries @ bank.embeddings.T
        idx = dist_t.topk(args.topk, dim=1, largest=False).indices
        return dist_q.gather(1, idx).mean()

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
            "bank": args.bank_size, "dim": args.dim, "topk": args.topk, "chunk": args.chunk,
            "ms": round(1000 * statistics.median(times), 2), "peak_extra_mb": round(extra, 1), "loss": value}


def bench_bank(args) -> list[dict]:
    results = []
    for variant in ("chunked", "dense"):
        cmd = [sys.executable, "-m", "msf_fast.bench", "_bank_variant", "--variant", variant,
               *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k in ("batch_size", "bank_size", "dim", "topk", "chunk", "repeats", "device"))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    chunked, dense = results
    summary = {"bench": "bank", "speedup_vs_dense": round(dense["ms"] / chunked["ms"], 2),
               "memory_ratio_dense_over_chunked": round(dense["peak_extra_mb"] / max(chunked["peak_extra_mb"], 1), 1),
               "same_loss": abs(dense["loss"] - chunked["loss"]) < 1e-4}
    print(json.dumps(summary), flush=True)
    return results + [summary]


def bench_ema(args) -> list[dict]:
    from msf_fast.ema import ForeachEMA, reference_ema_update
    from msf_fast.model import MSF
    device = torch.device(args.device)
    model = MSF(arch=args.arch, bank_size=256).to(device)
    ema = ForeachEMA(model.online, model.target)
    variants = {"foreach": lambda: ema.update(0.99),
                "reference": lambda: reference_ema_update(model.online, model.target, 0.99)}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved so both see the same machine load
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    results = []
    for name in variants:
        results.append({"bench": "ema", "variant": name, "arch": args.arch, "device": str(device),
                        "us": round(1e6 * statistics.median(times[name]), 1)})
        print(json.dumps(results[-1]), flush=True)
    summary = {"bench": "ema", "speedup_vs_reference": round(results[1]["us"] / results[0]["us"], 2)}
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
        if name == "_bank_variant":
            p.add_argument("--variant", choices=["chunked", "dense"], required=True)
    p = sub.add_parser("ema", help="target EMA update: foreach vs per-parameter loop")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default=default_device)
    args = parser.parse_args(argv)
    if args.command == "_bank_variant":
        print(json.dumps(_bank_variant(args)))
    elif args.command == "bank":
        bench_bank(args)
    else:
        bench_ema(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
