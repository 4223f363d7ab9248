"""Work on the next batches in a thread while the caller trains on the current one.

torch's CPU ops release the GIL, so on a CPU-only machine a batch's photometric augmentation in this thread and the
model step in the main thread run on two cores at once. The items are the same, in the same order: only when they
are computed changes.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

_DONE = object()


def ahead(items: Iterable, depth: int = 1) -> Iterator:
    """Yield `items`, computing up to `depth` of them ahead in a thread. An exception in the thread is raised
    here; leaving the loop early stops the thread (after the item it is computing)."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((_DONE, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            ready.put((_DONE, error))

    thread = threading.Thread(target=produce, name="batches-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting to put
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
