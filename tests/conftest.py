import os
import sys
from pathlib import Path

import pytest


def own_cores_per_worker() -> None:
    """Under pytest-xdist (make test runs `-n auto`), each worker and every process it starts keep to their own
    share of the cores, so that one test's OpenMP threads and loader workers do not preempt another's, and the
    defaults that follow the cores available (data.workers, train.threads) fit the share. On 2 cores capped at AVX2:
    one worker 990-1,058 s, two sharing both cores 753 s (and 15% more CPU time), two with a core each 698 s."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= count:
        # tests that ask for more loader workers than their share (FFCV's numba threads) still get them
        os.environ.setdefault("NUMBA_NUM_THREADS", str(len(cores)))
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) % count::count])


own_cores_per_worker()  # before torch sizes its thread pool

from dataset_prep.command_start import load_heavy_packages_without_gc  # noqa: E402

load_heavy_packages_without_gc()  # as every command does: the pytest workers' heaps hold torch, FFCV, numba, DALI

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
# One torch thread: tiny models gain little from a second one, and on a busy machine (a DataLoader worker, FFCV's
# threads, another job) two OpenMP threads on two cores ran a test 4-8x slower than one (66-124 s against 15 s).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # The slow end-to-end tests first: with `-n` workers (make test) each starts at once beside the short ones,
    # instead of one of them running alone at the end.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def away_from_the_checkout(tmp_path, monkeypatch):
    """Every test runs in its own empty folder, so the relative defaults (logging.folder=runs/msf, the demo's
    runs/demo, the benches' data/bench/stores) never meet what a user made in the checkout: after `make demo`, or a
    run with the default folder, `make test` failed on "runs/... holds a run"."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory):
    """4 classes x (24 train + 6 val) small random JPEGs of varied sizes."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 6)):
        for c in range(4):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(24, 48, size=2)
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                pixels[..., c % 3] //= 2
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


@pytest.fixture(scope="session")
def backbone(tmp_path_factory) -> str:
    """A torchvision ResNet-18 backbone (small-input stem) of a seeded random MSF, as msf_fast.export writes it:
    the checkpoint the eval commands' tests read."""
    import torch

    from msf_fast import export
    from msf_fast.model import MSF
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pth"
    torch.save(export.backbone_state_dict(MSF("resnet18", bank_size=32, topk=5, small_input=True)), path)
    return str(path)
