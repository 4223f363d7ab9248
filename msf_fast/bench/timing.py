"""How the benchmarks measure: medians of blocks interleaved across variants (each sees the same machine
load), device synchronisation around each block, and the process's peak memory."""
from __future__ import annotations

import resource
import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a benchmark runs, not when its options are read
    import torch


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize(device)


def interleaved_seconds(runners: dict, repeats: int, device: torch.device, calls: int = 1) -> dict:
    """name -> median seconds per call, timing blocks of `calls` calls interleaved across the variants."""
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                run()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def add_device_argument(parser) -> None:
    """--device, resolved by each bench as the trainer resolves train.device (msf_fast.devices.resolve_device)."""
    from dataset_prep.argument_parser import device_name
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto, cuda, cuda:N or cpu (default auto: CUDA when torch can use it, else the CPU; it "
                             "stops where NVIDIA GPUs are present that torch cannot use)")
