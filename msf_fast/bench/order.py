"""`bench order`: bytes read per epoch without the page cache, RANDOM order against the page-aware order.

    python -m msf_fast.bench order [--beton STORE] [--batch-size 16 --world-size 2 --pages-at-a-time 0]

Each epoch reads the store through FFCV with `os_cache=False` (what `data.in_memory=0` does), after the store's
pages were dropped from the kernel's page cache (fsync + posix_fadvise DONTNEED), and prints one JSON line:
- `read_over_store`: bytes the process read from disk in the epoch (/proc/self/io read_bytes), over the store's
  size; the page order's ranks run one after the other, each from a dropped cache, and their reads add up;
- `held_over_store`: the pages FFCV's process cache holds at its peak (its schedule's slots) times the page
  size, over the store's size: the memory an epoch needs besides the page cache;
- `classes_per_batch`: distinct labels per batch (the store is written in class order, as write_beton writes).
The summary line adds the ratios, and `random_reads_in_page_memory`: computed from RANDOM's epoch (nothing
read), the bytes over the store a reader would read that keeps only as many pages as the page order held
(least recently used out), i.e. RANDOM where the store does not fit.
With `--imagenet-layout`, lines computed from the orders alone (nothing read) for ImageNet's layout follow.

Without `--beton`, a class-sorted store of synthetic JPEGs is written once into data/bench/stores/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np

from dataset_prep.argument_parser import int_at_least
from dataset_prep.progress import available_cores
from msf_fast.bench.loader import STORES
from msf_fast.errors import UsageError
from pipelines.page_order import page_order, sample_pages, samples_per_rank

IMAGENET = {"classes": 1000, "per_class": 1281, "per_page": 75}  # 8 MiB pages of ~110 KB 500-px images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beton", default="", help="the store to read (default: a synthetic class-sorted store "
                                                     f"written once into {STORES}/)")
    parser.add_argument("--classes", type=int_at_least(2), default=200, help="classes of the synthetic store")
    parser.add_argument("--per-class", type=int_at_least(1), default=40, help="images per class of the synthetic "
                                                                                "store")
    parser.add_argument("--batch-size", type=int_at_least(1), default=16, help="images per batch and rank")
    parser.add_argument("--world-size", type=int_at_least(1), default=2,
                        help="ranks the page order is also measured with (each one in turn)")
    parser.add_argument("--pages-at-a-time", type=int_at_least(0), default=0,
                        help="pages the page order keeps open (0: 2 x batch size, the loader's default)")
    parser.add_argument("--workers", type=int_at_least(1), default=min(2, available_cores()),
                        help="FFCV threads; default 2, or 1 on one core (numba's threads are at most one per core)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="order seed")
    parser.add_argument("--imagenet-layout", action="store_true",
                        help="also compute (no reading) classes per batch and pages held for ImageNet's layout")


def bench_order(args) -> None:
    from dataset_prep.ffcv_import import import_ffcv
    from dataset_prep.stores import beton_problem
    if args.beton and not os.path.isfile(args.beton):
        raise UsageError(f"--beton {args.beton}: no such file")
    problem = beton_problem(args.beton) if args.beton else None
    if problem:  # a foreign file was an FFCV IndexError traceback
        raise UsageError(f"--beton {args.beton}: {problem}")
    import_ffcv()
    store = args.beton or synthetic_store(args.classes, args.per_class)
    width = args.pages_at_a_time or 2 * args.batch_size
    random = read_epoch(store, "random", args, rank=0, world_size=1)
    runs = [random, read_epoch(store, "page", args, rank=0, world_size=1, width=width)]
    if args.world_size > 1:
        ranks = [read_epoch(store, "page", args, rank=r, world_size=args.world_size, width=width)
                 for r in range(args.world_size)]
        runs.append(merged(ranks))
    for run in runs:
        print(json.dumps({k: v for k, v in run.items() if not k.startswith("_")}), flush=True)
    page = runs[1]
    loads = lru_page_loads(random["_pages_read"], page["_held"])
    print(json.dumps({
        "summary": "page order vs RANDOM, os_cache=False", "store_bytes": random["store_bytes"],
        "page_size": random["page_size"], "pages_at_a_time": width,
        "read_ratio": round(page["read_over_store"] / random["read_over_store"], 3),
        "held_ratio": round(page["held_over_store"] / random["held_over_store"], 3),
        "classes_ratio": round(page["classes_per_batch"] / random["classes_per_batch"], 3),
        "random_reads_in_page_memory": round(loads * random["page_size"] / random["store_bytes"], 2),
    }), flush=True)
    if args.imagenet_layout:
        for line in imagenet_layout(args.seed):
            print(json.dumps(line), flush=True)


def read_epoch(store: str, order: str, args, rank: int, world_size: int, width: int = 0) -> dict:
    """One epoch of `order` from a cold page cache: the first epoch of a new FFCV Loader (numba compiles in it,
    which reads no store page; the few library files it may read count too)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor

    from pipelines.ffcv_backend import ffcv_workers
    from pipelines.ffcv_page_order import PageOrder

    traversal = (OrderOption.RANDOM if order == "random"
                 else PageOrder(args.batch_size, rank, world_size, pages_at_a_time=width))
    loader = Loader(store, batch_size=args.batch_size, num_workers=ffcv_workers(args.workers), order=traversal, os_cache=False,
                    seed=args.seed, drop_last=True, batches_ahead=2,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32)), ToTensor()],
                               "label": [IntDecoder(), ToTensor(), Squeeze()]})
    page_size = int(loader.reader.page_size)
    drop_from_page_cache(store)
    before = read_bytes()
    epoch = iter(loader)
    held = epoch.memory_context.schedule.num_slots
    classes = [len(np.unique(labels.numpy())) for _, labels in epoch]
    read = read_bytes() - before
    samples = np.asarray(epoch.order)
    size = os.path.getsize(store)
    table = loader.reader.alloc_table
    pages = sample_pages(table["sample_id"], table["ptr"], table["size"], page_size, int(loader.reader.num_samples))
    return {"order": order, "rank": rank, "world_size": world_size, "batches": len(classes),
            "read_over_store": round(read / size, 3), "held_over_store": round(held * page_size / size, 3),
            "classes_per_batch": round(float(np.mean(classes)), 2), "store_bytes": size, "page_size": page_size,
            "store_pages": int(len(np.unique(pages))),
            "_pages_read": pages[samples], "_read": read, "_held": held}


def merged(ranks: list[dict]) -> dict:
    """The ranks' epochs as one: reads add up (each rank reads its own pages), the peak is the largest rank's."""
    first = ranks[0]
    size, page_size = first["store_bytes"], first["page_size"]
    held = max(r["_held"] for r in ranks)
    return {**first, "rank": "all", "batches": sum(r["batches"] for r in ranks),
            "read_over_store": round(sum(r["_read"] for r in ranks) / size, 3),
            "held_over_store": round(held * page_size / size, 3), "held_per_rank": True,
            "classes_per_batch": round(float(np.mean([r["classes_per_batch"] for r in ranks])), 2)}


def read_bytes() -> int:
    with open("/proc/self/io") as counters:
        for line in counters:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def drop_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a store just written) cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def lru_page_loads(pages: np.ndarray, capacity: int) -> int:
    """Page loads of a reader that keeps the `capacity` pages used last and reads the pages of `pages` in turn."""
    kept: OrderedDict = OrderedDict()
    loads = 0
    for page in pages.tolist():
        if page in kept:
            kept.move_to_end(page)
            continue
        loads += 1
        kept[page] = None
        if len(kept) > capacity:
            kept.popitem(last=False)
    return loads


def imagenet_layout(seed: int, batch_size: int = 256, world_size: int = 8) -> list[dict]:
    """Classes per batch and pages FFCV would hold on rank 0 of `world_size`, for ImageNet written in class order
    (75 samples a page), RANDOM against the page order at two widths; computed from the orders."""
    from ffcv.memory_managers.process_cache.schedule import compute_schedule

    labels = np.repeat(np.arange(IMAGENET["classes"]), IMAGENET["per_class"])
    pages = np.arange(len(labels)) // IMAGENET["per_page"]
    count = samples_per_rank(len(labels), batch_size, world_size)
    orders = {"random": np.random.default_rng(seed).permutation(len(labels))[:count]}
    for width in (2 * batch_size, 4 * batch_size):
        orders[f"page-{width}"] = page_order(pages, 0, seed, batch_size, 0, world_size, width)
    lines = []
    for name, order in orders.items():
        batches = order.reshape(-1, batch_size)
        classes = [len(np.unique(labels[batch])) for batch in batches]
        held = compute_schedule([set(pages[batch].tolist()) for batch in batches]).num_slots
        lines.append({"layout": "imagenet", "order": name, "batch_size": batch_size, "world_size": world_size,
                      "classes_per_batch": round(float(np.mean(classes)), 1),
                      "classes_p5": float(np.percentile(classes, 5)),
                      "held_pages": held, "held_gib": round(held * 8 / 1024, 2), "store_pages": int(pages[-1] + 1)})
    return lines


def synthetic_store(classes: int, per_class: int, size=(160, 120)) -> str:
    """A store written by write_beton (class order, its default write mode) from synthetic JPEGs: smooth random
    colour fields with noise."""
    import shutil
    import subprocess
    import tempfile

    from PIL import Image

    from dataset_prep.stores import beton_problem
    from msf_fast.bench.loader import child_env

    name = f"order-{classes}x{per_class}-{size[0]}x{size[1]}"
    store = os.path.join(STORES, name + ".beton")
    if os.path.isfile(store) and beton_problem(store) is None:
        print(f"bench order: reusing {store}", file=sys.stderr, flush=True)
        return store
    os.makedirs(STORES, exist_ok=True)
    source = tempfile.mkdtemp(prefix=name + "-src-", dir=STORES)
    try:
        y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
        for c in range(classes):
            os.makedirs(os.path.join(source, f"c{c:04d}"), exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([c, i])
                a, b, phase = rng.uniform(-3, 3, (3, 3))
                pixels = (128 + 90 * np.sin(a * x[..., None] + b * y[..., None] + phase)
                          + rng.normal(0, 12, (*y.shape, 3)))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    os.path.join(source, f"c{c:04d}", f"{i:05d}.jpg"), quality=90)
        done = subprocess.run([sys.executable, "-m", "dataset_prep.write_beton", source, store, "--no-progress"],
                              capture_output=True, text=True, env=child_env())
    finally:
        shutil.rmtree(source)
    print(done.stdout + done.stderr, end="", file=sys.stderr)
    if done.returncode:
        raise SystemExit(f"bench order: could not write {store}")
    return store
