"""`page_order` as FFCV's Loader takes a custom order (import after dataset_prep.ffcv_import.import_ffcv)."""
from __future__ import annotations

import numpy as np
from ffcv.traversal_order.base import TraversalOrder

from pipelines.page_order import page_order, sample_pages


class PageOrder(TraversalOrder):
    """Pass an instance as `Loader(order=...)`: ffcv 1.0.2 accepts a custom order only as an instance, which it
    then calls with the loader. It shards by `rank`/`world_size` itself, so it needs no process group, and
    `Loader(distributed=...)` changes nothing here."""

    def __init__(self, batch_size: int, rank: int = 0, world_size: int = 1, pages_at_a_time: int = 8):
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.pages_at_a_time = pages_at_a_time
        self.loader = self.pages = self.seed = None

    def __call__(self, loader) -> PageOrder:
        reader = loader.reader
        if len(loader.indices) != reader.num_samples:
            raise ValueError("the page order reads the whole store (no `indices` subset)")
        table = reader.alloc_table
        self.loader, self.seed = loader, int(loader.seed)
        self.pages = sample_pages(table["sample_id"], table["ptr"], table["size"], int(reader.page_size),
                                  int(reader.num_samples))
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        return page_order(self.pages, epoch, self.seed, self.batch_size, self.rank, self.world_size,
                          self.pages_at_a_time)
