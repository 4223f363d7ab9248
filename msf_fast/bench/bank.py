"""`bench bank`: the memory-bank search + loss gather against the original's dense B x N formulation.

Each variant runs in its own process (`python -m msf_fast.bench.bank --variant ...`), so that its peak extra
memory above the bank itself is its own.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command("python -m msf_fast.bench.bank")

import argparse
import json
import statistics
import subprocess
import time

from dataset_prep.argument_parser import non_negative_int, positive_int
from msf_fast.bench.timing import add_device_argument, peak_rss_mb, synchronize
from msf_fast.errors import UsageError

BANK_DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name
SHARED_OPTIONS = ("batch_size", "bank_size", "dim", "topk", "chunk", "repeats", "device", "dtype")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=256, help="targets searched per step (default 256)")
    parser.add_argument("--bank-size", type=positive_int, default=1_024_000, help="bank entries (default 1,024,000)")
    parser.add_argument("--dim", type=positive_int, default=512, help="embedding width (default 512)")
    parser.add_argument("--topk", type=positive_int, default=5, help="neighbours (default 5)")
    parser.add_argument("--chunk", type=non_negative_int, default=0,
                        help="bank rows scored at once (default 0: the trainer's, 262,144 on CUDA, 65,536 on the CPU)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed calls per variant, median reported (default 3)")
    add_device_argument(parser)
    parser.add_argument("--dtype", choices=list(BANK_DTYPES), default="float32",
                        help="the bank's storage dtype (default float32)")


def measure_variant(args) -> dict:
    """One variant in this process: its median time and its peak extra memory."""
    import torch
    from msf_fast.devices import device_option
    from msf_fast.bank import MemoryBank, default_chunk_rows
    device = device_option(args.device)
    dtype = getattr(torch, args.dtype)
    chunk = args.chunk or default_chunk_rows(device)
    torch.manual_seed(0)
    bank = MemoryBank(args.bank_size, args.dim, chunk_size=chunk, dtype=dtype).to(device)
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
        base = peak_rss_mb()
    times = []
    for _ in range(args.repeats):
        synchronize(device)
        start = time.perf_counter()
        value = fn().item()
        synchronize(device)
        times.append(time.perf_counter() - start)
    extra = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda"
             else peak_rss_mb() - base)
    return {"bench": "bank", "variant": args.variant, "device": str(device), "batch": args.batch_size,
            "bank": args.bank_size, "dim": args.dim, "topk": args.topk,
            "chunk": min(chunk, args.bank_size) if args.variant == "chunked" else None, "dtype": args.dtype,
            "ms": round(1000 * statistics.median(times), 2), "peak_extra_mb": round(extra, 1), "loss": value}


def bench_bank(args) -> list[dict]:
    if args.topk > args.bank_size:  # checked here, before torch loads: a child's traceback would be all the user saw
        raise UsageError(f"--topk {args.topk}: must not exceed --bank-size {args.bank_size}")
    from msf_fast.devices import device_option
    results = []
    shared = {**{key: getattr(args, key) for key in SHARED_OPTIONS}, "device": device_option(args.device)}
    for variant in ("chunked", "dense"):
        command = [sys.executable, "-m", "msf_fast.bench.bank", "--variant", variant,
                   *(f"--{key.replace('_', '-')}={value}" for key, value in shared.items())]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"bench bank: the {variant} variant failed (exit code {done.returncode}): "
                               f"{done.stderr.strip()[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
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


def main(argv: list[str] | None = None) -> int:
    """One variant, for bench_bank's child processes."""
    parser = argparse.ArgumentParser(prog="python -m msf_fast.bench.bank", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--variant", choices=["chunked", "dense"], required=True)
    print(json.dumps(measure_variant(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
