"""More DataLoader workers than cores: torch printed two 4-line UserWarnings at every loader it made and again when
its workers started (eval --workers 50: four of them); the loaders now say it once per process, in one line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from pipelines import two_view_recipe
from pipelines.torchvision_backend import TorchvisionImageLoader, TorchvisionTwoViewLoader
workers = int(sys.argv[2])
recipe = two_view_recipe("w/s", 16)
for _ in range(2):  # a train and a val pass, as eval knn makes them
    images = TorchvisionImageLoader(sys.argv[1], recipe, batch_size=32, workers=workers)
    print(sum(len(labels) for _, labels in images))
two_views = TorchvisionTwoViewLoader(sys.argv[1], recipe, batch_size=32, workers=workers)
print(sum(len(labels) for _, _, labels in two_views.iterate(0)))
"""


@pytest.mark.parametrize("workers, notes", [(2, 1), (1, 0)])
def test_workers_beyond_the_cores_are_one_note(tiny_imagefolder, workers, notes):
    # LOCAL_WORLD_SIZE shares the cores among torchrun's processes: here it leaves this process one core
    env = {**os.environ, "LOCAL_WORLD_SIZE": "1024"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_imagefolder / "train"), str(workers)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["96", "96", "96"]
    assert "UserWarning" not in done.stderr and "check_worker_number_rationality" not in done.stderr, done.stderr
    expected = ["note: 2 DataLoader workers on 1 core available here: they take turns on them, which is no faster "
                "than one per core (the default)"] * notes
    assert done.stderr.strip().splitlines() == expected, done.stderr


def test_the_loader_benchmark_says_it_before_its_children_start(tiny_imagefolder):
    """bench loader runs each loader in a child whose stderr is shown only when it fails: the note was lost."""
    env = {**os.environ, "LOCAL_WORLD_SIZE": "1024"}
    done = subprocess.run([sys.executable, "-m", "msf_fast.bench", "loader", "--data", str(tiny_imagefolder / "train"),
                           "--backend", "torch", "--workers", "2", "--epochs", "1", "--max-batches", "1",
                           "--batch-size", "8", "--resolution", "32", "--photometric", "off"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "note: 2 DataLoader workers on 1 core available here: they take turns on them, which is no faster than "
        "one per core (the default)"], done.stderr
