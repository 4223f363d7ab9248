"""The page-aware order for stores larger than memory: coverage across ranks, seeding, locality, `in_memory`."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines import page_order as po
from pipelines.page_order import page_order, sample_pages, samples_per_rank


def uneven_pages(samples: int = 1001, seed: int = 0) -> np.ndarray:
    """Pages of 3-20 samples, the samples not in page order (several writer workers interleave their pages)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 21, samples)
    pages = np.repeat(np.arange(samples), sizes)[:samples]
    return pages[rng.permutation(samples)]


def open_pages(order: np.ndarray, pages: np.ndarray) -> np.ndarray:
    """At each position of `order`: the pages already started and not yet finished."""
    seq = pages[order]
    first = {p: i for i, p in reversed(list(enumerate(seq)))}
    last = {p: i for i, p in enumerate(seq)}
    starts = np.bincount([first[p] for p in first], minlength=len(seq))
    ends = np.bincount([last[p] + 1 for p in last], minlength=len(seq) + 1)[:len(seq)]
    return np.cumsum(starts) - np.cumsum(ends)


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_every_sample_once_per_epoch_across_ranks(world_size):
    pages, batch = uneven_pages(), 16
    per_rank = [page_order(pages, epoch=5, seed=1, batch_size=batch, rank=r, world_size=world_size,
                           pages_at_a_time=4) for r in range(world_size)]
    steps = len(pages) // (batch * world_size)
    assert [len(order) for order in per_rank] == [steps * batch] * world_size  # full global batches only
    everything = np.concatenate(per_rank)
    assert len(np.unique(everything)) == len(everything) == steps * batch * world_size
    assert everything.min() >= 0 and everything.max() < len(pages)


def test_the_order_is_a_function_of_seed_and_epoch():
    pages = uneven_pages()
    order = lambda epoch, seed=0: page_order(pages, epoch, seed, batch_size=16, rank=1, world_size=2)  # noqa: E731
    assert np.array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))
    assert not np.array_equal(order(3), order(3, seed=1))
    # the tail that fills no global batch changes with the epoch: over a few epochs every sample is read
    seen = set()
    for epoch in range(6):
        for rank in range(2):
            seen.update(page_order(pages, epoch, 0, batch_size=16, rank=rank, world_size=2).tolist())
    assert seen == set(range(len(pages)))


@pytest.mark.parametrize("width, world_size", [(1, 1), (4, 1), (4, 3), (16, 2)])
def test_at_most_pages_at_a_time_are_open(width, world_size):
    pages = uneven_pages()
    for rank in range(world_size):
        order = page_order(pages, epoch=2, seed=7, batch_size=8, rank=rank, world_size=world_size,
                           pages_at_a_time=width)
        opened = open_pages(order, pages)
        assert opened.max() <= width
        assert opened.max() >= max(1, width // 2)  # the window really mixes pages (a small one may close early)
    # a random order of the same samples keeps most of them open at once
    shuffled = np.random.default_rng(0).permutation(order)
    assert open_pages(shuffled, pages).max() > 0.8 * len(np.unique(pages[order])) > width


def test_a_page_is_read_in_one_stretch_and_batches_mix_pages():
    pages = uneven_pages()
    order = page_order(pages, epoch=0, seed=0, batch_size=16, pages_at_a_time=4)
    seq = pages[order]
    # once a page is finished it never comes back: each page occupies one contiguous stretch of the epoch
    finished = set()
    for i, page in enumerate(seq):
        assert page not in finished
        if page not in seq[i + 1:]:
            finished.add(page)
    distinct = [len(set(seq[i:i + 16])) for i in range(0, len(seq), 16)]
    assert min(distinct) >= 2 and np.mean(distinct) > 3


def test_sample_pages_from_an_allocation_table():
    # sample 0: one value on page 0; sample 1: a small value on page 0, its large one on page 2; sample 2: none
    ids = np.array([1, 0, 1], dtype=np.uint64)
    pointers = np.array([100, 200, 2 * 4096 + 8], dtype=np.uint64)
    sizes = np.array([10, 50, 3000], dtype=np.uint64)
    assert sample_pages(ids, pointers, sizes, 4096, 3).tolist() == [0, 2, -1]


def test_a_rank_with_fewer_pages_than_the_window_is_a_plain_shuffle():
    pages = np.repeat(np.arange(3), 10)
    order = page_order(pages, epoch=0, seed=0, batch_size=10, pages_at_a_time=100)
    assert sorted(order.tolist()) == list(range(30)) and open_pages(order, pages).max() == 3
    assert samples_per_rank(30, 10, 4) == 0 and len(page_order(pages, 0, 0, batch_size=10, world_size=4)) == 0


def test_in_memory_auto_compares_the_store_with_the_memory_available(tmp_path, monkeypatch):
    store = tmp_path / "store.beton"
    store.write_bytes(b"\0" * 1000)
    monkeypatch.setattr(po, "memory_available", lambda: 10_000)
    assert po.reads_in_memory("auto", str(store))
    monkeypatch.setattr(po, "memory_available", lambda: 1_100)  # 1000 bytes > 0.8 x 1100
    assert not po.reads_in_memory("auto", str(store))
    assert po.reads_in_memory(True, str(store)) and not po.reads_in_memory(False, str(store))
    monkeypatch.setattr(po, "memory_available", lambda: None)  # unknown: the page cache, as before
    assert po.reads_in_memory("auto", str(store))


def test_memory_available_reads_meminfo():
    available = po.memory_available()
    assert available is None or available > 0


# ---- the FFCV loader ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paged_store(tmp_path_factory):
    """40 raw 256-px images, one per class (labels identify samples), ~10 to a 2 MiB page."""
    pytest.importorskip("ffcv")
    from dataset_prep import write_beton
    from tests.image_cases import coordinate_images, write_image_folder

    source = write_image_folder(tmp_path_factory.mktemp("paged") / "src", coordinate_images(40, size=256))
    assert write_beton.main([source, source + ".beton", "--write-mode", "raw", "--workers", "1",
                             "--no-progress"]) == 0
    return source + ".beton"


def test_the_ffcv_loader_reads_a_rank_in_page_order_and_resumes_mid_epoch(paged_store):
    from ffcv.memory_managers import ProcessCacheManager

    from pipelines.ffcv_backend import FFCVTwoViewLoader
    from pipelines.recipe import two_view_recipe

    # rank 1 of 2 without a process group: the page order shards by itself
    loader = FFCVTwoViewLoader(paged_store, two_view_recipe("w/s", 32), batch_size=4, workers=1, seed=3, rank=1,
                               world_size=2, in_memory=False, pages_at_a_time=2)
    ffcv = loader.loader
    assert ffcv.distributed and isinstance(ffcv.memory_manager, ProcessCacheManager) and not loader.in_memory
    pages = ffcv.traversal_order.pages
    assert len(np.unique(pages)) >= 4 and len(loader) == 5  # 40 samples / (4 per rank x 2 ranks)
    epoch = [labels.tolist() for _, _, labels in loader.iterate(2)]
    expected = page_order(pages, epoch=2, seed=3, batch_size=4, rank=1, world_size=2, pages_at_a_time=2)
    assert sum(epoch, []) == expected.tolist()
    assert [labels.tolist() for _, _, labels in loader.iterate(2, skip_batches=3)] == epoch[3:]
    assert sum((labels.tolist() for _, _, labels in loader.iterate(3)), []) != sum(epoch, [])


# ---- data.in_memory -----------------------------------------------------------------------------------------

def test_data_in_memory_is_parsed_and_reaches_the_loader(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    from msf_fast import trainer
    from msf_fast.config import ConfigError, load_config

    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "0.jpg").touch()
    argv = [f"--data.train_path={tmp_path / 'train'}", "--train.batch_size=64", "--msf.bank_size=1024",
            f"--logging.folder={tmp_path / 'run'}"]
    assert load_config(argv).data.in_memory == "auto"
    assert [load_config(argv + [f"--data.in_memory={v}"]).data.in_memory for v in ("0", "1", "AUTO")] == \
        [False, True, "auto"]
    with pytest.raises(ConfigError, match=r"data\.in_memory"):
        load_config(argv + ["--data.in_memory=half"])

    built = {}
    monkeypatch.setattr(trainer, "build_train_loader", lambda *args, **options: built.update(options))
    cfg = load_config(argv + ["--data.in_memory=0"])
    host = SimpleNamespace(cfg=cfg, recipe=None, rank=0, world_size=1, device=torch.device("cpu"), is_main=False,
                           precision=SimpleNamespace(dtype=None), start_lines=[])
    trainer.Trainer.create_loader(host)
    assert built["in_memory"] is False


# ---- bench order ------------------------------------------------------------------------------------------

def test_bench_order_counts_page_loads_of_a_bounded_reader():
    from msf_fast.bench.order import lru_page_loads

    assert lru_page_loads(np.array([0, 0, 1, 0, 2, 1, 0]), capacity=2) == 5  # loads 0, 1, 2 (1 out), 1 (0 out), 0
    assert lru_page_loads(np.array([0, 0, 1, 0, 2, 1, 0]), capacity=3) == 3


@pytest.mark.parametrize("name, expected", [
    ("/nonexistent/store.beton", "no such file"),
    ("notes.txt", "not an FFCV .beton (no version-2 FFCV header); write it again with python -m "
                  "dataset_prep.write_beton SRC_DIR OUT.beton")])  # was FFCV's IndexError traceback
def test_bench_order_refuses_a_missing_or_foreign_store_in_one_line(name, expected, tmp_path, capsys):
    from msf_fast.bench.cli import main

    (tmp_path / "notes.txt").write_text("hello\n")
    path = name if name.startswith("/") else str(tmp_path / name)
    with pytest.raises(SystemExit) as stopped:
        main(["order", "--beton", path])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (f"python -m msf_fast.bench order: error: --beton {path}: {expected} "
                                               "(see --help)")
