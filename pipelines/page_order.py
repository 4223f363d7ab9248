"""A page-aware epoch order for FFCV stores larger than memory (`data.in_memory`).

FFCV stores its samples in pages (8 MiB in big stores); reading one sample reads its page. Without the page cache
(`os_cache=False`) FFCV's process cache holds each page from the first to the last batch that needs it, so a RANDOM
order holds nearly the whole store in memory by mid-epoch. This order keeps a few pages open at a time:

- the epoch's pages are shuffled (seeded by (seed, epoch)) and their samples laid out page after page, each page's
  samples shuffled; every rank takes its own contiguous run of that sequence, of the same length (full global
  batches only: the tail that fills no global batch is dropped, a different one each epoch);
- within a rank, each page's samples are spread at random over a window `pages_at_a_time` pages wide that slides
  along the rank's pages: at every point of the epoch exactly that many pages are open.

The crops and photometric parameters are seeded by sample and step, not by position, so any order keeps them
reproducible; a resumed epoch skips batches of the same order.
"""
from __future__ import annotations

import os

import numpy as np

FITS_IN_MEMORY = 0.8  # share of the available memory a store may take and still be read through the page cache


def sample_pages(sample_ids: np.ndarray, pointers: np.ndarray, sizes: np.ndarray, page_size: int,
                 num_samples: int) -> np.ndarray:
    """The page of each sample: the one holding its largest stored value (a store's allocation table, `sample_id`,
    `ptr`, `size`). A sample with nothing stored outside the metadata gets -1, a page of its own kind."""
    pages = np.full(num_samples, -1, dtype=np.int64)
    by_sample = np.lexsort((sizes, sample_ids))  # each sample's largest value last
    ids = sample_ids[by_sample].astype(np.int64)
    last = np.append(ids[1:] != ids[:-1], True)
    pages[ids[last]] = (pointers[by_sample][last] // np.uint64(page_size)).astype(np.int64)
    return pages


def samples_per_rank(num_samples: int, batch_size: int, world_size: int) -> int:
    return num_samples // (batch_size * world_size) * batch_size


def page_order(pages: np.ndarray, epoch: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1,
               pages_at_a_time: int = 8) -> np.ndarray:
    """This rank's sample indices for one epoch (`pages`: the page of each sample, as `sample_pages` gives)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size}")
    if pages_at_a_time < 1:
        raise ValueError(f"pages_at_a_time={pages_at_a_time}: must be at least 1")
    generator = np.random.default_rng([seed, epoch])
    dense = np.unique(pages, return_inverse=True)[1].reshape(-1)
    position = generator.permutation(int(dense.max()) + 1 if len(dense) else 0)[dense]
    spread = generator.random(len(pages))
    laid_out = np.lexsort((generator.random(len(pages)), position))  # page after page, shuffled within each
    count = samples_per_rank(len(pages), batch_size, world_size)
    mine = laid_out[rank * count:(rank + 1) * count]
    if count == 0:
        return mine
    local = position[mine] - position[mine[0]]  # 0, 1, ... over this rank's pages (whole or cut at its ends)
    return mine[np.argsort(window_keys(local, spread[mine], pages_at_a_time), kind="stable")]


def window_keys(local_page: np.ndarray, uniform: np.ndarray, width: int) -> np.ndarray:
    """Sort keys that spread page p's samples over [a_p, b_p) with a_p = max(0, p - w + 1), b_p = min(p + 1,
    n - w + 1) (n pages, w = min(width, n)): at a key in [m, m + 1) the open pages are exactly m .. m + w - 1.
    The first and last pages get shorter windows, so the epoch starts and ends with w pages open as well."""
    pages = int(local_page.max()) + 1
    width = min(width, pages)
    start = np.maximum(0, local_page - width + 1)
    end = np.minimum(local_page + 1, pages - width + 1)
    return start + uniform * (end - start)


def memory_available() -> int | None:
    """Bytes of memory available without swapping (Linux's MemAvailable; None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def reads_in_memory(in_memory, path: str) -> bool:
    """`data.in_memory`: True/False as given; "auto": True when the store takes at most FITS_IN_MEMORY of the
    memory available (the page cache then keeps it after the first epoch), or when that cannot be told."""
    if in_memory != "auto":
        return bool(in_memory)
    available = memory_available()
    return available is None or os.path.getsize(path) <= FITS_IN_MEMORY * available
