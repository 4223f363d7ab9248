"""ImageFolder -> FFCV `.beton` (RGBImageField + IntField), written by FFCV's own DatasetWriter.

    python -m dataset_prep.write_beton SRC_DIR OUT.beton [--max-resolution 256] [--write-mode proportion] ...

Two parallel passes: a fast scan decodes every file once (JPEGs at 1/8 DCT scale, which still reads every byte)
to find the bad ones, because FFCV needs the final sample count up front; then FFCV's workers decode, make upright
RGB, shrink to --max-resolution (FFCV's INTER_AREA) and store each image as JPEG or raw pixels. Samples keep
ImageFolder order. A manifest is written beside the store as OUT.beton.manifest.json.
"""
from __future__ import annotations

import sys

NAME = "write_beton"  # its progress bars' label
PROG = f"python -m dataset_prep.{NAME}"  # every message starts with it, as the usage line does

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command(PROG)

import argparse
import ctypes
import os
import queue
import time
from contextlib import closing
from multiprocessing import Process, Queue, Value
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from dataset_prep.argument_parser import positive_int, probability
from dataset_prep.conversion import (ConversionError, ConversionReport, run_cli,
                                     select_samples, stored_bytes, write_json, writer_parser)
from dataset_prep.ffcv_import import FFCVUnavailable, import_ffcv
from dataset_prep.image_folder import SourceError
from dataset_prep.images import BadImage, check_image, fitted_size, load_rgb, unusable_size
from dataset_prep.progress import parallel_map, progress_bar, start_worker, stops_deferred
from dataset_prep.staging import OutputError, StagedPath, commit_point
from dataset_prep.stores import BETON_SUFFIX, beton_manifest_path

WRITE_MODES = ("proportion", "jpg", "raw", "smart")


def scan_sample(sample: tuple[str, int]) -> tuple[tuple[int, int] | None, str | None]:
    try:
        return check_image(sample[0]), None
    except BadImage as error:
        return None, str(error)


class StoreDataset:
    """What FFCV's writer workers index: (upright RGB uint8 array, label).

    Seeding numpy per sample makes FFCV's random JPEG-or-raw choice ('proportion' mode, drawn right after
    this call) a function of the sample, so the store is the same whatever the number of workers.
    """

    def __init__(self, samples: list[tuple[str, int]], max_side: int, seed: int):
        self.samples, self.max_side, self.seed = samples, max_side, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        np.random.seed((self.seed * 1_000_003 + index) % 2**32)
        try:
            image = load_rgb(path, self.max_side)
        except BadImage as error:  # it decoded during the scan: the file changed under us
            raise RuntimeError(f"{path}: {error} (the file changed after the scan)") from None
        return np.asarray(image), label


WRITE_FAILED = 64  # a worker's exit code 64 + errno: a write that failed (a full disk), for the parent's one line


def _worker(parent: int, work_fn, *args) -> None:
    """FFCV's writer worker, stopped with SIGKILL by the parent (see progress.start_worker); a write that fails (a full
    disk) ends it with exit code WRITE_FAILED + errno, not a traceback (a pipe to the parent could block)."""
    start_worker(parent)
    try:
        work_fn(*args)
    except OSError as error:
        os._exit(WRITE_FAILED + error.errno if error.errno and error.errno < 64 else WRITE_FAILED)


def page_size_for(sizes: list[tuple[int, int]]) -> int:
    """FFCV page size: a power of two that holds the largest sample twice; 8 MiB (FFCV's default, good for
    reading) unless the store is small, where 2 MiB wastes less of the last page of each worker."""
    raw_bytes = [width * height * 3 for width, height in sizes]
    smallest = 1 << 23 if sum(raw_bytes) > 64 << 23 else 1 << 21
    return max(smallest, 1 << int(2 * max(raw_bytes) - 1).bit_length())


def import_ffcv_or_fail() -> None:
    """FFCV's import (torch's thread count kept), its failure an error line of this command."""
    try:
        import_ffcv()
    except FFCVUnavailable as error:
        raise SourceError(str(error)) from None


# each write mode's own option: (the mode, its default)
MODE_OPTIONS = {"compress_probability": ("proportion", 0.5), "smart_threshold": ("smart", 256 * 256 * 3)}


def make_writer(path: str, args, sizes: list[tuple[int, int]]):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class MonitoredDatasetWriter(DatasetWriter):
        """FFCV's writer with our progress bar, and an error instead of a hang when a worker dies.

        `_write_common` follows ffcv 1.0.2's; its progress loop waits forever for samples of a dead worker.
        """

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            from ffcv.memory_allocator import MemoryAllocator

            self.num_samples = num_samples
            work_queue = allocations_queue = None
            workers: list[Process] = []
            try:
                # a stop is raised as this block ends, when what it made exists whole, to be undone below (one
                # raised within left FFCV's shared memory behind: "leaked shared_memory objects" at exit)
                with stops_deferred():
                    self.prepare()
                    work_queue, allocations_queue = Queue(), Queue()
                    for todo in queue_content:
                        work_queue.put(todo)
                    for _ in range(self.num_workers):
                        work_queue.put(None)
                    done = Value(ctypes.c_uint64, 0)
                    allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
                    worker_args = (work_queue, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                                   allocations_queue, *extra_worker_args)
                    workers = [Process(target=_worker, args=(os.getpid(), work_fn, *worker_args), daemon=True)
                               for _ in range(self.num_workers)]
                    for worker in workers:
                        worker.start()
                with progress_bar(num_samples, NAME, args.progress) as bar:
                    reported = 0
                    while reported < num_samples:
                        time.sleep(0.05)
                        if done.value > reported:  # tqdm redraws on every update, even of 0
                            bar.update(done.value - reported)
                            reported = done.value
                        stop_if_one_failed(workers)
                # Each worker sends its allocations after writing its last page, in page order: one that failed
                # there (a full disk) leaves the others waiting for their turn, and this loop must not wait on.
                allocations, received = [], 0
                while received < len(workers):
                    try:
                        allocations.extend(allocations_queue.get(timeout=0.05))
                        received += 1
                    except queue.Empty:
                        stop_if_one_failed(workers)
                self.finalize(allocations)
            finally:
                with stops_deferred():  # a stop raised within left the rest undone
                    for worker in workers:
                        if worker.pid is not None and worker.is_alive():
                            worker.kill()  # they leave SIGTERM to this process (start_worker)
                        if worker.pid is not None:
                            worker.join()
                    for abandoned in (work_queue, allocations_queue):
                        # a stop before the workers took all the work: the queue's feeder thread waits forever to
                        # put the rest into its full pipe, and the exit waited for it (it hung after "interrupted")
                        if abandoned is not None:
                            abandoned.cancel_join_thread()
                            abandoned.close()
                    if isinstance(getattr(self, "metadata_sm", None), SharedMemory):  # prepare() made it
                        self.metadata_sm.close()
                        self.metadata_sm.unlink()

    def stop_if_one_failed(workers) -> None:
        failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
        if failed and WRITE_FAILED < failed[0] < 2 * WRITE_FAILED:
            raise ConversionError(f"cannot write {args.out}: {os.strerror(failed[0] - WRITE_FAILED)}; nothing written")
        if failed:
            raise ConversionError(f"an FFCV writer worker failed (exit code {failed[0]}); its error is printed above; "
                                  "nothing written")

    mode_options = {name: getattr(args, name) for name in MODE_OPTIONS if getattr(args, name) is not None}
    image_field = RGBImageField(write_mode=args.write_mode, max_resolution=args.max_resolution or None,
                                jpeg_quality=args.jpeg_quality, **mode_options)
    return MonitoredDatasetWriter(path, {"image": image_field, "label": IntField()},
                                  page_size=page_size_for(sizes), num_workers=args.workers)


def settle_store_options(args) -> str | None:
    """--write-mode's default (jpg for --val, as ffcv-imagenet's validation store; else proportion), and the
    defaults of the options of that mode; an option of another mode is refused (it was ignored without a word, as
    --val overrode a --write-mode given)."""
    if args.write_mode is None:
        args.write_mode = "jpg" if args.val else "proportion"
    for name, (mode, default) in MODE_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, default if args.write_mode == mode else None)  # the manifest records what applies
        elif args.write_mode != mode:
            return (f"--{name.replace('_', '-')} applies to --write-mode {mode}, and this store's mode is "
                    f"{args.write_mode}{' (the default with --val)' if args.val else ''}")
    return None


def convert(args) -> None:
    listing, samples = select_samples(args, PROG)  # a bad source is reported before FFCV's import (seconds)
    import_ffcv_or_fail()  # before the conversion's clock starts, and a clear error if missing
    report = ConversionReport("ffcv-beton", args, listing, samples)
    # the manifest's block closes first: it is renamed into place just before the store
    with StagedPath(args.out) as store, StagedPath(beton_manifest_path(args.out)) as manifest:
        sizes = []
        scans = parallel_map(scan_sample, samples, args.workers, f"{NAME} (scan)", args.progress)
        with closing(scans):  # its pool ends here, not when the collector finds it (a stop then was "ignored")
            for sample, (size, reason) in zip(samples, scans):
                reason = reason or unusable_size(*size, args.max_resolution)
                if reason:
                    report.skipped.append((sample[0], reason))
                else:
                    report.written.append(sample)
                    sizes.append(fitted_size(*size, args.max_resolution))
        report.check_outcome(PROG)
        writer = make_writer(store.temporary, args, sizes)
        writer.from_indexed_dataset(StoreDataset(report.written, args.max_resolution, args.seed),
                                    chunksize=max(1, min(100, len(report.written) // (8 * args.workers))))
        write_json(manifest.temporary, report.manifest(args.out))
        size = stored_bytes(store.temporary)
        commit_point()
    print(report.summary(PROG, args.out, beton_manifest_path(args.out), size))


def check_output_name(out: str) -> None:
    """A .beton is one file whose name ends in .beton: training and evaluation recognise a store by its suffix."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        raise OutputError(f"output {out!r} names a folder, and {NAME} writes one file: give OUT{BETON_SUFFIX}, e.g. "
                          f"{os.path.join(out, 'train' + BETON_SUFFIX)}")
    if not out.endswith(BETON_SUFFIX):
        raise OutputError(f"output {out!r} lacks the {BETON_SUFFIX} suffix by which training and evaluation "
                          f"recognise an FFCV store: name it {out}{BETON_SUFFIX}")


def build_parser() -> argparse.ArgumentParser:
    parser = writer_parser(PROG, __doc__, "OUT.beton", "the store to create",
                           "longest side of stored images, larger ones are shrunk (default 256; 0 keeps full "
                           "resolution)", default_resolution=256)
    parser.add_argument("--write-mode", choices=WRITE_MODES, default=None,
                        help="how images are stored: 'jpg', 'raw' pixels (fast to read, ~6x larger), "
                             "'proportion' (JPEG with probability --compress-probability, else raw), 'smart' "
                             "(raw unless larger than --smart-threshold bytes); default proportion, jpg with --val")
    parser.add_argument("--compress-probability", type=probability, default=None, metavar="P",
                        help="'proportion' mode: fraction stored as JPEG (default "
                             f"{MODE_OPTIONS['compress_probability'][1]})")
    parser.add_argument("--smart-threshold", type=positive_int, default=None, metavar="BYTES",
                        help="'smart' mode: raw images above this many bytes are stored as JPEG (default "
                             f"{MODE_OPTIONS['smart_threshold'][1]})")
    return parser


def main(argv=None) -> int:
    return run_cli(PROG, build_parser(), convert, argv, check_output_name, settle_store_options)


if __name__ == "__main__":
    sys.exit(main())
