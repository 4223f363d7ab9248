"""Conversion speed of both writers, 1 worker vs N workers, on the demo images and on ImageNet-like photos.

    python -m dataset_prep.bench [--photos 600] [--workers 1 2] [--repeats 3]

Each run is a fresh `python -m dataset_prep.write_*` process; its conversion time is the manifest's `seconds`
(listing the source and importing FFCV are not counted). Runs are interleaved over the repeats and the medians
are reported, one JSON line per (writer, data, workers), then one line per (writer, data) with the speed-up.
"""
from __future__ import annotations

import sys

PROG = "python -m dataset_prep.bench"  # every message starts with it, as the usage line does

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command(PROG)

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from dataset_prep.argument_parser import OneLineParser, positive_int
from dataset_prep.demo_data import check_replaceable, generate_demo_dataset
from dataset_prep.staging import OutputError, nearest_existing
from dataset_prep.stores import read_manifest
from dataset_prep.synthetic_photos import generate_photo_folder, written_settings

WRITERS = {
    "beton": ("write_beton", "store.beton", ["--max-resolution", "256"]),  # default: proportion, JPEG q90
    "tfrecord": ("write_tfrecord", "store", []),  # default: full resolution, upright RGB JPEGs kept as they are
    "tfrecord-256": ("write_tfrecord", "store", ["--max-resolution", "256"]),  # every photo re-encoded
}


def convert_seconds(writer: str, source: str, workers: int, scratch: str) -> tuple[float, int]:
    module, name, options = WRITERS[writer]
    out = os.path.join(scratch, name)
    subprocess.run([sys.executable, "-m", f"dataset_prep.{module}", source, out, "--workers", str(workers),
                    "--no-progress", "--overwrite", *options], check=True, stdout=subprocess.DEVNULL)
    manifest = read_manifest(out)
    return manifest["seconds"], manifest["counts"]["written"]


def main(argv=None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data/bench",
                        help="where the benchmark images are generated (default data/bench)")
    parser.add_argument("--photos", type=positive_int, default=600,
                        help="500x375 synthetic photos, in 10 classes (default 600)")
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2],
                        help="writer workers compared (default 1 2)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per setting, median kept (default 3)")
    parser.add_argument("--writers", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    args = parser.parse_args(argv)

    demo = os.path.join(args.data_root, "demo")
    try:
        if not os.path.isdir(nearest_existing(args.data_root)):
            raise OutputError(f"{nearest_existing(args.data_root)} is a file, not a folder")
        check_replaceable(Path(demo))  # both folders checked before either is written
        written_settings(os.path.join(args.data_root, "photos"))
        os.makedirs(args.data_root, exist_ok=True)
        generate_demo_dataset(demo, train_per_class=100, val_per_class=1, seed=0)
        sources = {"demo": os.path.join(demo, "train"),
                   "photos-500x375": generate_photo_folder(os.path.join(args.data_root, "photos"),
                                                           classes=10, per_class=max(1, args.photos // 10))}
    except OSError as error:  # the data root: a file, not writable, or a photos folder that is not ours
        print(f"{PROG}: error: --data-root {args.data_root}: {error.strerror or error}", file=sys.stderr)
        return 2
    seconds: dict = {}
    with tempfile.TemporaryDirectory(dir=args.data_root) as scratch:
        for _ in range(args.repeats):
            for data, source in sources.items():
                for writer in args.writers:
                    for workers in args.workers:
                        elapsed, images = convert_seconds(writer, source, workers, scratch)
                        seconds.setdefault((writer, data, workers), []).append(elapsed)
                        seconds.setdefault(("images", data), images)
    for (writer, data, workers), runs in ((k, v) for k, v in seconds.items() if k[0] != "images"):
        rate = seconds[("images", data)] / statistics.median(runs)
        print(json.dumps({"writer": writer, "data": data, "workers": workers, "images": seconds[("images", data)],
                          "images_per_s": round(rate, 1), "images_per_s_per_worker": round(rate / workers, 1),
                          "seconds_runs": [round(s, 3) for s in runs]}))
    low, high = min(args.workers), max(args.workers)
    for data in sources:
        for writer in args.writers:
            speedup = statistics.median(seconds[(writer, data, low)]) / statistics.median(seconds[(writer, data, high)])
            print(json.dumps({"writer": writer, "data": data, f"speedup_{high}_vs_{low}_workers": round(speedup, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
