"""`bench loader`: two-view loader throughput of the torchvision baseline, FFCV and DALI on the same images.

Every run is its own process (`python -m msf_fast.bench.loader`: FFCV's thread settings, numba compilation and
peak memory stay separate).
A run iterates `--epochs` epochs of (online, target, labels) with the full recipe and prints one JSON line:
`images_per_s` counts images (each gives two views) over the whole wall time of the epochs after the first
(steady state: worker start-up included, compilation not; the first epoch alone when there is only one),
`compile_s` is the first epoch's wait for its first batch (FFCV: numba compilation).
With `--compare`, the backends run interleaved `--repeats` times and the medians' ratio is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from msf_fast.bench.timing import peak_rss_mb
from pipelines import data_format

DEFAULT_STORE_RESOLUTION = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", nargs="+", default=["torch", "ffcv"], choices=["torch", "ffcv", "dali"])
    parser.add_argument("--data", required=True,
                        help="ImageFolder of the source images (or a .beton, for --backend ffcv alone)")
    parser.add_argument("--beton", default="", help="the .beton of the same images (default: written once into "
                                                      "data/bench/stores/ with --store-resolution)")
    parser.add_argument("--tfrecord", default="", help="the TFRecord store of the same images (default: written "
                                                         "once into data/bench/stores/, full resolution)")
    parser.add_argument("--store-resolution", type=int, default=DEFAULT_STORE_RESOLUTION,
                        help="--max-resolution of the .beton written when --beton is not given")
    parser.add_argument("--recipe", default="w/s")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the cores not used by workers)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=0, help="stop each epoch after this many batches")
    parser.add_argument("--photometric", choices=["on", "off"], default="on",
                        help="off: FFCV runs without its batched photometric ops, i.e. the CPU's share of the work "
                             "when those ops run on a GPU")
    parser.add_argument("--compare", action="store_true", help="run the backends interleaved; print the ratio")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per backend with --compare")


def store_for(args, backend: str) -> str:
    """The store a backend reads: given, or written once from the --data ImageFolder into data/bench/stores/."""
    given = args.beton if backend == "ffcv" else args.tfrecord
    if given:
        return given
    if data_format(args.data) == backend:
        return args.data
    name = os.path.basename(os.path.normpath(args.data))
    if backend == "ffcv":
        path, command = (os.path.join("data", "bench", "stores", f"{name}-{args.store_resolution}.beton"),
                         ["write_beton", "--max-resolution", str(args.store_resolution)])
    else:
        path, command = os.path.join("data", "bench", "stores", f"{name}-tfrecord"), ["write_tfrecord"]
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        done = subprocess.run([sys.executable, "-m", f"dataset_prep.{command[0]}", args.data, path, *command[1:],
                               "--no-progress"], capture_output=True, text=True)
        print(done.stdout + done.stderr, end="", file=sys.stderr)  # stdout stays JSON lines only
        if done.returncode:
            raise SystemExit(f"bench loader: could not write {path}")
    return path


def one_run(args) -> dict:
    import torch

    from pipelines import build_train_loader, two_view_recipe

    backend = args.backend[0]
    threads = args.threads or max(1, (os.cpu_count() or 1) - args.workers)
    torch.set_num_threads(threads)
    recipe = two_view_recipe(args.recipe, args.resolution)
    source = {"ffcv": args.beton, "dali": args.tfrecord}.get(backend, args.data)
    loader = build_train_loader(backend, source, recipe, batch_size=args.batch_size, workers=args.workers, seed=0)
    if backend == "ffcv" and args.photometric == "off":
        loader.online_augment = loader.target_augment = lambda images, generator=None: images
    compile_s, epoch_times, epoch_images = None, [], []
    for epoch in range(args.epochs):
        started, images = time.perf_counter(), 0
        for step, (online, target, labels) in enumerate(loader.iterate(epoch)):
            if compile_s is None:
                compile_s = time.perf_counter() - started
            images += labels.shape[0]
            if args.max_batches and step + 1 >= args.max_batches:
                break
        epoch_times.append(time.perf_counter() - started)
        epoch_images.append(images)
    steady = slice(1, None) if args.epochs > 1 else slice(0, 1)
    return {"backend": backend, "recipe": args.recipe, "photometric": args.photometric if backend == "ffcv" else "on",
            "resolution": args.resolution,
            "batch_size": args.batch_size, "workers": args.workers, "threads": threads,
            "images_per_s": round(sum(epoch_images[steady]) / sum(epoch_times[steady]), 1),
            "compile_s": round(compile_s or 0.0, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "data": source}


def bench_loader(args) -> list[dict]:
    if "torch" in args.backend and data_format(args.data) != "torch":
        raise SystemExit("bench loader: the torch backend reads an ImageFolder: pass the source folder as --data")
    if "ffcv" in args.backend:
        args.beton = store_for(args, "ffcv")
    if "dali" in args.backend:
        args.tfrecord = store_for(args, "dali")
    runs: dict[str, list[dict]] = {backend: [] for backend in args.backend}
    for _ in range(args.repeats if args.compare else 1):
        for backend in args.backend:
            command = [sys.executable, "-m", "msf_fast.bench.loader", "--backend", backend,
                       "--data", args.data, "--beton", args.beton, "--tfrecord", args.tfrecord,
                       "--recipe", args.recipe,
                       "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
                       "--workers", str(args.workers), "--threads", str(args.threads),
                       "--epochs", str(args.epochs), "--max-batches", str(args.max_batches),
                       "--photometric", args.photometric]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            runs[backend].append(result)
            print(json.dumps(result), flush=True)
    if args.compare and "torch" in runs and len(runs) > 1:
        medians = {b: statistics.median(r["images_per_s"] for r in runs[b]) for b in runs}
        print(json.dumps({**{f"{b}_vs_torch": round(medians[b] / medians["torch"], 2) for b in medians
                             if b != "torch"},
                          **{f"{b}_images_per_s": medians[b] for b in medians}}))
    return [r for rs in runs.values() for r in rs]


def main(argv: list[str] | None = None) -> int:
    """One run of one backend, for bench_loader's child processes."""
    parser = argparse.ArgumentParser(prog="python -m msf_fast.bench.loader", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    print(json.dumps(one_run(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
