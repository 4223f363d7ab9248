"""`bench loader`: two-view loader throughput of the torchvision baseline, FFCV and DALI on the same images.

Every run is its own process (`python -m msf_fast.bench.loader`: FFCV's thread settings, numba compilation and
peak memory stay separate).
A run iterates `--epochs` epochs of (online, target, labels) with the full recipe and prints one JSON line:
`images_per_s` counts images (each gives two views) over the whole wall time of the epochs after the first
(steady state: worker start-up included, compilation not; the first epoch alone when there is only one),
`compile_s` is the first epoch's wait for its first batch (FFCV: numba compilation).
With `--compare`, the backends run interleaved `--repeats` times and the medians' ratio is printed.
A run that fails is reported in one line with the end of its stderr; the others go on (exit code 1).

Stores written from `--data` are cached in data/bench/stores/ under the source folder's name and a hash of its
real path, and rewritten when the folder or a class folder changed since (files added, removed or renamed).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command("python -m msf_fast.bench.loader")

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import time

from dataset_prep.argument_parser import non_negative_int, positive_int
from dataset_prep.progress import available_cores
from msf_fast.bench.cli import PROG
from msf_fast.bench.timing import peak_rss_mb
from msf_fast.errors import UsageError
from pipelines import data_format
from pipelines.recipe import RECIPE_NAMES

DEFAULT_STORE_RESOLUTION = 256
# name -> (backend, FFCV decoder, the decode-once decoder's resize)
LOADERS = {"torch": ("torch", None, None), "ffcv": ("ffcv", "once", "antialias"),
           "ffcv-opencv": ("ffcv", "once", "opencv"), "ffcv-twice": ("ffcv", "twice", None),
           "dali": ("dali", None, None)}
STORES = os.path.join("data", "bench", "stores")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", nargs="+", default=["torch", "ffcv"], choices=list(LOADERS),
                        help="loaders to run, each in its own process: torch (the baseline), ffcv (one decode per "
                             "image), ffcv-opencv (the same with OpenCV INTER_AREA resizing, the former path), "
                             "ffcv-twice (FFCV's stock two-output path), dali (default: torch ffcv)")
    parser.add_argument("--data", required=True,
                        help="ImageFolder of the source images (or a .beton, for --backend ffcv alone)")
    parser.add_argument("--beton", default="", help="the .beton of the same images (default: written once into "
                                                      f"{STORES}/ with --store-resolution)")
    parser.add_argument("--tfrecord", default="", help="the TFRecord store of the same images (default: written "
                                                         f"once into {STORES}/, full resolution)")
    parser.add_argument("--store-resolution", type=positive_int, default=DEFAULT_STORE_RESOLUTION,
                        help="--max-resolution of the .beton written when --beton is not given")
    parser.add_argument("--recipe", default="w/s", choices=RECIPE_NAMES, help="target/online views: w weak, s strong")
    parser.add_argument("--resolution", type=positive_int, default=224, help="crop size in pixels")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    parser.add_argument("--workers", type=non_negative_int, default=min(2, available_cores()),
                        help="DataLoader worker processes (torch) or threads (FFCV, DALI); default 2, or 1 on one "
                             "core (FFCV's numba threads are at most one per core)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch threads; 0 = the cores not used by workers")
    parser.add_argument("--epochs", type=positive_int, default=3,
                        help="epochs per run; images/s is over the epochs after the first")
    parser.add_argument("--max-batches", type=non_negative_int, default=0,
                        help="stop each epoch after this many batches; 0 = whole epochs")
    parser.add_argument("--photometric", choices=["on", "off"], default="on",
                        help="off: FFCV runs without its batched photometric ops, i.e. the CPU's share of the work "
                             "when those ops run on a GPU")
    parser.add_argument("--compare", action="store_true", help="run the backends interleaved; print the ratio")
    parser.add_argument("--repeats", type=positive_int, default=1, help="interleaved runs per backend with --compare")


def child_env() -> dict:
    """The environment of a child process: this checkout first on its path, installed or not."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def store_for(args, backend: str) -> str:
    """The store a backend reads: given, or written once from the --data ImageFolder into data/bench/stores/,
    under a name that holds a hash of the folder's real path (two folders of one name get their own stores)."""
    given = args.beton if backend == "ffcv" else args.tfrecord
    if given:
        return given
    if data_format(args.data) == backend:
        return args.data
    source = os.path.realpath(args.data)
    name = f"{os.path.basename(source)}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"
    if backend == "ffcv":
        path, command = (os.path.join(STORES, f"{name}-{args.store_resolution}.beton"),
                         ["write_beton", "--max-resolution", str(args.store_resolution)])
    else:
        path, command = os.path.join(STORES, f"{name}-tfrecord"), ["write_tfrecord"]
    if os.path.exists(path):
        stale = cached_store_problem(path, source)
        if stale is None:
            print(f"{PROG} loader: reusing {path}, written from {source}", file=sys.stderr, flush=True)
            return path
        print(f"{PROG} loader: writing {path} again: {stale}", file=sys.stderr, flush=True)
        command.append("--overwrite")
    os.makedirs(STORES, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", f"dataset_prep.{command[0]}", args.data, path, *command[1:],
                           "--no-progress"], capture_output=True, text=True, env=child_env())
    print(done.stdout + done.stderr, end="", file=sys.stderr)  # stdout stays JSON lines only
    if done.returncode:
        raise SystemExit(f"bench loader: could not write {path}")
    return path


def cached_store_problem(store: str, source: str) -> str | None:
    """Why a cached store cannot stand for `source` (None when it can): written from another folder, unfinished,
    or older than a change of the source's listing (the folder's or a class folder's modification time)."""
    from dataset_prep.stores import manifest_path, read_manifest

    manifest = read_manifest(store)
    if manifest is None:
        return "it has no manifest (an unfinished write?)"
    written_from = manifest.get("source")
    if not isinstance(written_from, str) or os.path.realpath(written_from) != source:
        return f"it was written from {written_from}, not {source}"
    written = os.path.getmtime(manifest_path(store))
    folders = [source, *(entry.path for entry in os.scandir(source) if entry.is_dir())]
    if any(os.path.getmtime(folder) > written for folder in folders):
        return f"{source} changed since it was written"
    return None


def one_run(args) -> dict:
    import torch

    from pipelines import build_train_loader, two_view_recipe

    name = args.backend[0]
    backend, decoder, resize = LOADERS[name]
    threads = args.threads or max(1, (os.cpu_count() or 1) - args.workers)
    torch.set_num_threads(threads)
    recipe = two_view_recipe(args.recipe, args.resolution)
    source = {"ffcv": args.beton, "dali": args.tfrecord}.get(backend, args.data)
    loader = build_train_loader(backend, source, recipe, batch_size=args.batch_size, workers=args.workers, seed=0,
                                ffcv_decoder=decoder or "once")
    if resize is not None and loader.decoders[0].resize != resize:
        loader.decoders[0].resize = resize
        loader.loader.recompile = True  # FFCV generated the pipeline's code when the Loader was made
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
    return {"backend": name, "recipe": args.recipe, "photometric": args.photometric if backend == "ffcv" else "on",
            "resolution": args.resolution,
            "batch_size": args.batch_size, "workers": args.workers, "threads": threads,
            "images_per_s": round(sum(epoch_images[steady]) / sum(epoch_times[steady]), 1),
            "compile_s": round(compile_s or 0.0, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "data": source}


def store_problem(path: str, backend: str) -> str | None:
    """Why a given --beton / --tfrecord cannot be read by `backend` (one was taken as given, and only its child
    run failed, with FFCV's 'file format mismatch' traceback, after the other backends' runs)."""
    from dataset_prep.stores import describe_path
    from msf_fast.config import KINDS, data_problem, found_text
    if data_format(path) != backend:
        return f"expected a {KINDS[backend]}; {found_text(describe_path(path))}"
    return data_problem(path)


def bench_loader(args) -> list[dict]:
    from msf_fast.config import data_problem
    problem = data_problem(args.data)
    if problem:
        raise UsageError(f"--data {args.data}: {problem}")
    if "torch" in args.backend and data_format(args.data) != "torch":
        raise UsageError(f"--data {args.data}: the torch backend reads an ImageFolder: pass the source folder")
    for option, path, backend in (("--beton", args.beton, "ffcv"), ("--tfrecord", args.tfrecord, "dali")):
        problem = path and store_problem(path, backend)
        if problem:
            raise UsageError(f"{option} {path}: {problem}")
    if "torch" in args.backend:
        from msf_fast.errors import UserError
        from pipelines.worker_sockets import TempFolderTooLong, check_worker_processes
        try:
            check_worker_processes(args.workers)  # here: the child's stderr is shown only when it fails
        except TempFolderTooLong as error:
            raise UserError(f"--workers {args.workers}: {error}") from None
    if {"ffcv", "ffcv-opencv", "ffcv-twice"} & set(args.backend):
        args.beton = store_for(args, "ffcv")
    if "dali" in args.backend:
        args.tfrecord = store_for(args, "dali")
    runs: dict[str, list[dict]] = {backend: [] for backend in args.backend}
    failures = 0
    for _ in range(args.repeats if args.compare else 1):
        for backend in args.backend:
            command = [sys.executable, "-m", "msf_fast.bench.loader", "--backend", backend,
                       "--data", args.data, "--beton", args.beton, "--tfrecord", args.tfrecord,
                       "--recipe", args.recipe,
                       "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
                       "--workers", str(args.workers), "--threads", str(args.threads),
                       "--epochs", str(args.epochs), "--max-batches", str(args.max_batches),
                       "--photometric", args.photometric]
            done = subprocess.run(command, capture_output=True, text=True, env=child_env())
            if done.returncode:
                failures += 1
                print(f"{PROG} loader: the {backend} run failed ({exit_status(done.returncode)}): "
                      f"{stderr_tail(done.stderr)}", file=sys.stderr, flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[backend].append(result)
            print(json.dumps(result), flush=True)
    medians = {b: statistics.median(r["images_per_s"] for r in rs) for b, rs in runs.items() if rs}
    if args.compare and len(medians) > 1:
        ratios = {f"{b}_vs_torch": round(medians[b] / medians["torch"], 2) for b in medians
                  if b != "torch" and "torch" in medians}
        for other in ("ffcv-twice", "ffcv-opencv"):  # what decoding once saves; what the antialiased resize saves
            if {"ffcv", other} <= medians.keys():
                ratios[f"ffcv_vs_{other}"] = round(medians["ffcv"] / medians[other], 2)
        print(json.dumps({**ratios, **{f"{b}_images_per_s": medians[b] for b in medians}}))
    if failures:
        raise SystemExit(1)
    return [r for rs in runs.values() for r in rs]


def exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def stderr_tail(text: str, lines: int = 3, chars: int = 600) -> str:
    """The last lines of a child's stderr, on one line."""
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return (tail[-chars:] if len(tail) > chars else tail) or "no output on stderr"


def main(argv: list[str] | None = None) -> int:
    """One run of one backend, for bench_loader's child processes (`python -m msf_fast.bench.loader`)."""
    parser = argparse.ArgumentParser(prog="python -m msf_fast.bench.loader", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(one_run(args)), flush=True)
    if LOADERS[args.backend[0]][0] == "ffcv":
        # Leave without the interpreter's teardown: FFCV's epoch thread may still be decoding the batches ahead of
        # an epoch cut short (--max-batches), and tearing numba's thread pool down under it aborted the process
        # (SIGABRT) after its result was printed.
        sys.stderr.flush()
        os._exit(0)
    return 0  # the interpreter's teardown: DALI's atexit hook removes the modules it wrote to /tmp (5 a run)


if __name__ == "__main__":
    sys.exit(main())
