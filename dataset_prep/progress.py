"""Ordered parallel map over images with a progress bar (images/s and ETA)."""
from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Callable, Iterable, Iterator

from tqdm import tqdm


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def progress_bar(total: int, description: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total, desc=description, unit="img", disable=not enabled, dynamic_ncols=True,
                smoothing=0.05)


def default_sigterm() -> None:
    """Run first in every worker process: SIGTERM (Pool.terminate, Process.terminate) kills it at once. The
    converter's Python-level SIGTERM handler, inherited through fork, runs only between bytecodes, so a worker
    that the signal reached just as it blocked on the task queue's lock slept on forever and its join hung."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def parallel_map(function: Callable, items: list, workers: int, description: str,
                 progress: bool = True) -> Iterator:
    """`function(item)` for each item, in order; `workers` <= 1 runs in this process (one core),
    otherwise in a pool of that many processes while this one consumes the results."""
    with progress_bar(len(items), description, progress) as bar:
        if workers <= 1:
            results: Iterable = map(function, items)
            pool = None
        else:
            pool = multiprocessing.Pool(workers, initializer=default_sigterm)
            chunksize = max(1, min(32, len(items) // (workers * 16)))
            results = pool.imap(function, items, chunksize=chunksize)
        try:
            for result in results:
                bar.update()
                yield result
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
