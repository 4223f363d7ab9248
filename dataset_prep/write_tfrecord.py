"""ImageFolder -> TFRecord shards of `tf.train.Example` (JPEG bytes + int64 label), each with a DALI index.

    python -m dataset_prep.write_tfrecord SRC_DIR OUT_DIR [--shards N] [--max-resolution 0|S] [--workers N] ...

Images are shuffled across shards (seeded) and shards are balanced to within one record. Upright RGB JPEGs
that need no resizing are stored byte for byte; everything else is decoded, made upright RGB, shrunk and
re-encoded. OUT_DIR holds SPLIT-00000-of-0000N.tfrecord, the matching .idx files, labels.npy (every record's label,
in store order) and manifest.json.
"""
from __future__ import annotations

import sys

NAME = "write_tfrecord"  # its progress bars' label
PROG = f"python -m dataset_prep.{NAME}"  # every message starts with it, as the usage line does

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command(PROG)

import argparse
import math
import os
import random
from contextlib import closing
from functools import partial

import numpy as np

from dataset_prep.argument_parser import non_negative_int
from dataset_prep.conversion import (ConversionReport, run_cli, select_samples, stored_bytes, write_json,
                                     writer_parser)
from dataset_prep.image_folder import SourceError
from dataset_prep.images import BadImage, stored_jpeg
from dataset_prep.progress import parallel_map
from dataset_prep.staging import OutputError, StagedPath, commit_point
from dataset_prep.stores import BETON_SUFFIX, tfrecord_manifest_path
from dataset_prep.tfrecord_format import TFRecordWriter, frame_record, image_example

LABELS_FILE = "labels.npy"
IMAGES_PER_SHARD = 1024  # --shards 0: ImageNet's 1.28 M images give about 1,250 shards of ~140 MB


def encode_sample(sample: tuple[str, int], max_side: int, quality: int) -> tuple[bytes | None, str | None]:
    """The framed record for one sample (all CPU work happens here, in a worker), or the reason it is bad."""
    path, label = sample
    try:
        return frame_record(image_example(stored_jpeg(path, max_side, quality), label)), None
    except BadImage as error:
        return None, str(error)


def shard_plan(samples: list, shards: int, shuffle: bool, seed: int) -> list[list]:
    """Split the samples into `shards` lists whose sizes differ by at most one; shuffled first unless told not to."""
    order = list(samples)
    if shuffle:
        random.Random(seed).shuffle(order)
    bounds = [round(i * len(order) / shards) for i in range(shards + 1)]
    return [order[bounds[i]:bounds[i + 1]] for i in range(shards)]


def convert(args) -> None:
    listing, samples = select_samples(args, PROG)
    shards = args.shards or math.ceil(len(samples) / IMAGES_PER_SHARD)
    if shards > len(samples):
        raise SourceError(f"--shards {shards} is more than the {len(samples)} images to write")
    report = ConversionReport("tfrecord", args, listing, samples)
    split = "val" if args.val else "train"
    with StagedPath(args.out, is_dir=True) as staged:
        plan = shard_plan(samples, shards, shuffle=not args.val, seed=args.seed)
        encode = partial(encode_sample, max_side=args.max_resolution, quality=args.jpeg_quality)
        results = parallel_map(encode, [sample for shard in plan for sample in shard], args.workers,
                               NAME, args.progress)
        shard_records = []
        with closing(results):  # the progress bar ends before anything else is printed
            for number, shard in enumerate(plan):
                name = f"{split}-{number:05d}-of-{shards:05d}"
                with TFRecordWriter(os.path.join(staged.temporary, f"{name}.tfrecord"),
                                    os.path.join(staged.temporary, f"{name}.idx")) as writer:
                    for sample, (record, reason) in zip(shard, results):
                        if record is None:
                            report.skipped.append((sample[0], reason))
                        else:
                            writer.write(record)
                            report.written.append(sample)
                shard_records.append({"tfrecord": f"{name}.tfrecord", "index": f"{name}.idx",
                                      "records": writer.count})
        report.check_outcome(PROG)
        report.extra["shards"] = shard_records
        # every record's label in store order: subsets are chosen without reading the records
        np.save(os.path.join(staged.temporary, LABELS_FILE), np.array([label for _, label in report.written],
                                                                      dtype=np.int64))
        report.extra["labels"] = LABELS_FILE
        write_json(tfrecord_manifest_path(staged.temporary), report.manifest(args.out))
        size = stored_bytes(staged.temporary)
        commit_point()
    print(report.summary(PROG, args.out, tfrecord_manifest_path(args.out), size))


def check_output_name(out: str) -> None:
    """A TFRecord store is a folder: a name that says .beton or a single shard, or an existing file, is refused."""
    name = out.rstrip("/" + os.sep)
    if name.endswith(BETON_SUFFIX):
        raise OutputError(f"output {out!r} has the {BETON_SUFFIX} suffix of an FFCV store, and {NAME} writes a folder "
                          f"of TFRecord shards: name it without {BETON_SUFFIX}, or write a .beton with python -m "
                          "dataset_prep.write_beton")
    if name.lower().endswith(".tfrecord"):
        raise OutputError(f"output {out!r} is named like a single shard, and {NAME} writes a folder of shards: name "
                          "it without .tfrecord")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputError(f"output {out!r} is a file, and {NAME} writes a folder (--overwrite replaces only a "
                          "folder): give another name")


def build_parser() -> argparse.ArgumentParser:
    parser = writer_parser(PROG, __doc__, "OUT_DIR", "folder to create for the shards (must not exist)",
                           "longest side of stored images; larger ones are shrunk and re-encoded (default 0: keep "
                           "every image's resolution)", default_resolution=0)
    parser.add_argument("--shards", type=non_negative_int, default=0, metavar="N",
                        help=f"number of shards (default 0: one per {IMAGES_PER_SHARD} images)")
    return parser


def main(argv=None) -> int:
    return run_cli(PROG, build_parser(), convert, argv, check_output_name)


if __name__ == "__main__":
    sys.exit(main())
