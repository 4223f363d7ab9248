"""What both store writers share: the command line, choosing the samples, the manifest, the summary, exit codes.

Exit codes: 0 written; 1 nothing written because every image was bad or `--strict` met a bad image;
2 the source or the destination is unusable, or an option is wrong (one error line, before any work); 130 / 143
interrupted by Ctrl-C / SIGTERM (the partial output is removed). Warnings (classes left without an image, files
ignored for their extension) are lines on stderr; the conversion goes on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

from dataset_prep.argument_parser import OneLineParser, int_between, non_negative_int, positive_int
from dataset_prep.image_folder import ImageFolderListing, SourceError, list_image_folder, random_subset
from dataset_prep.progress import available_cores
from dataset_prep.staging import OutputError, check_destination, only_writer, sigterm_as_ctrl_c, stop_exit_code
from dataset_prep.stores import within
from dataset_prep.wording import plural

SHOWN_SKIPS = 20


class ConversionError(Exception):
    """The conversion ran but produced nothing worth keeping (exit code 1)."""


def writer_parser(prog: str, doc: str, out_metavar: str, out_help: str, max_resolution_help: str,
                  default_resolution: int) -> argparse.ArgumentParser:
    """The options both writers share; each adds its own."""
    parser = OneLineParser(prog=prog, description=doc.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="SRC_DIR", help="ImageFolder: SRC_DIR/class_name/image.jpg")
    parser.add_argument("out", metavar=out_metavar, help=out_help)
    parser.add_argument("--max-resolution", type=non_negative_int, default=default_resolution, metavar="S",
                        help=max_resolution_help)
    parser.add_argument("--jpeg-quality", type=int_between(1, 100), default=90, metavar="Q",
                        help="quality of re-encoded JPEGs, 1-100 (default 90)")
    parser.add_argument("--workers", type=positive_int, default=available_cores(), metavar="N",
                        help="processes that decode and encode (default: the cores available, here "
                             f"{available_cores()})")
    parser.add_argument("--limit", type=non_negative_int, default=0, metavar="N",
                        help="convert a seeded random subset of N images, spread over all classes (quick tests; "
                             "default 0: all of them)")
    parser.add_argument("--val", action="store_true",
                        help="validation split: keep ImageFolder order (see the README for the eval recipe)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the writer's random choices: --limit's subset, and the TFRecord shards' shuffle "
                             "or which images a 'proportion' .beton stores as JPEG (default 0)")
    parser.add_argument("--strict", action="store_true",
                        help="write nothing and exit 1 if any image is bad (they are all listed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (kept until done)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


@dataclass
class ConversionReport:
    """Everything the manifest and the summary line say about one conversion."""
    store_format: str
    args: argparse.Namespace
    listing: ImageFolderListing
    selected: list[tuple[str, int]]
    written: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    extra: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.listing.root)

    def manifest(self, store_path: str) -> dict:
        seconds = time.perf_counter() - self.started
        options = {key: value for key, value in vars(self.args).items()
                   if key not in ("src", "out", "progress", "overwrite")}
        return {
            "format": self.store_format,
            "split": "val" if self.args.val else "train",
            "store": os.path.basename(os.path.normpath(store_path)),
            "source": os.path.abspath(self.listing.root),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "writer": f"msf-fast {_version()}",
            "options": options,
            "num_classes": len(self.listing.classes),
            "classes": self.listing.class_to_index,
            "counts": {"found": len(self.listing.samples), "selected": len(self.selected),
                       "written": len(self.written), "skipped": len(self.skipped),
                       "ignored_non_image_files": len(self.listing.ignored_files)},
            "written_per_class": self.listing.counts_per_class(self.written),
            "skipped": [{"path": self.relative(path), "reason": reason} for path, reason in self.skipped],
            "seconds": round(seconds, 3),
            "images_per_s": round(len(self.selected) / seconds, 1) if seconds > 0 else None,
            **self.extra,
        }

    def check_outcome(self, prog: str) -> None:
        """Print the skipped files; raise ConversionError when the store must not be kept."""
        for path, reason in self.skipped[:SHOWN_SKIPS]:
            print(f"{prog}: skipped {self.relative(path)}: {reason}", file=sys.stderr)
        if len(self.skipped) > SHOWN_SKIPS:
            print(f"{prog}: ... and {len(self.skipped) - SHOWN_SKIPS} more skipped files", file=sys.stderr)
        if not self.written:
            raise ConversionError(f"no image could be converted ({plural(len(self.skipped), 'bad file')}); nothing "
                                  "written")
        if self.skipped and self.args.strict:
            raise ConversionError(f"--strict: {len(self.skipped)} of {len(self.selected)} images are bad; "
                                  "nothing written")
        empty = [name for name, count in self.listing.counts_per_class(self.written).items() if count == 0]
        if empty:
            why = "all their images were bad" + (" or not drawn by --limit" if self.args.limit else "")
            print(f"{prog}: warning: {len(empty)} of {len(self.listing.classes)} classes have no image in the store "
                  f"({why}): {_listed(empty)}; their labels stay reserved", file=sys.stderr)

    def summary(self, prog: str, store_path: str, manifest_path: str, size_bytes: int) -> str:
        seconds = time.perf_counter() - self.started
        line = (f"{prog}: wrote {len(self.written):,} images of {len(self.listing.classes)} classes to "
                f"{store_path} ({human_bytes(size_bytes)}) in {seconds:.1f} s "
                f"({len(self.selected) / seconds:,.0f} img/s)")
        if self.skipped:
            line += f"; skipped {plural(len(self.skipped), 'bad file')} (listed in {manifest_path})"
        return line


def human_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError


def _version() -> str:
    try:
        return metadata.version("msf-fast")
    except metadata.PackageNotFoundError:
        return "unknown"


def select_samples(args, prog: str) -> tuple[ImageFolderListing, list[tuple[str, int]]]:
    """The source's listing (a SourceError when it is none) and the samples to convert; files ignored for their
    extension are reported on stderr."""
    listing = list_image_folder(args.src)
    if listing.ignored_files:
        count = len(listing.ignored_files)
        print(f"{prog}: ignored {count} file{'s' if count > 1 else ''} without an image extension (e.g. "
              f"{os.path.relpath(listing.ignored_files[0], listing.root)})", file=sys.stderr)
    return listing, random_subset(listing.samples, args.limit, args.seed)


def _listed(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as file:
        json.dump(data, file, indent=1)
        file.write("\n")


def stored_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return os.path.getsize(path)


def run_cli(prog: str, parser: argparse.ArgumentParser, convert, argv=None,
            check_output_name: Callable[[str], None] | None = None,
            settle_options: Callable[[argparse.Namespace], str | None] | None = None) -> int:
    """Parse, check the options (`settle_options`: fills in the defaults that depend on others, or says what does
    not go together), the output's name (`check_output_name`: an OutputError when it contradicts the format), the
    destination and the source, convert; map failures to one line and an exit code.
    Ctrl-C and SIGTERM remove the partial output and exit 130 / 143."""
    args = parser.parse_args(argv)
    problem = settle_options(args) if settle_options is not None else None
    if problem:
        parser.error(problem)
    if args.workers > available_cores():  # 99 on 2 cores ran at a tenth of the speed of 2
        print(f"{prog}: note: --workers {args.workers} is more than the {plural(available_cores(), 'core')} "
              "available: they share them, which is slower", file=sys.stderr)
    try:
        if within(args.out, args.src):  # a later listing of the source (a run, a conversion) would read it as data
            raise OutputError(f"output {args.out!r} is inside the source folder {args.src!r}: the trainer and the "
                              f"writers would list it among its images; write it outside {args.src!r}")
        if check_output_name is not None:
            check_output_name(args.out)
        check_destination(args.out, args.overwrite)
        with sigterm_as_ctrl_c(), only_writer(args.out, args.overwrite):
            convert(args)
    except (SourceError, OutputError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except ConversionError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a file that vanished or cannot be read: the staged output is gone
        where = error.filename or args.out
        print(f"{prog}: error: {where}: {error.strerror or error}; nothing written", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interruption:
        print(f"{prog}: interrupted; nothing written", file=sys.stderr)
        return stop_exit_code(interruption)
    return 0
