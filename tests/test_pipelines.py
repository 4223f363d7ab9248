"""The recipe spec and the torchvision baseline loader's contract."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from pipelines import build_train_loader, two_view_recipe
from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, STRONG, WEAK
from pipelines.sampling import rank_batches


def test_recipe_names_map_target_then_online():
    recipe = two_view_recipe("w/s", 224)
    assert recipe.target == WEAK and recipe.online == STRONG and recipe.eval_resize == 256
    assert two_view_recipe("s/w", 32).target == STRONG
    assert (STRONG.brightness, STRONG.contrast, STRONG.saturation, STRONG.hue, STRONG.jitter_p) == (0.4, 0.4, 0.4, 0.1, 0.8)
    assert (STRONG.grayscale_p, STRONG.blur_p, STRONG.blur_sigma, STRONG.crop_scale) == (0.2, 0.5, (0.1, 2.0), (0.2, 1.0))
    with pytest.raises(ValueError, match="recipe"):
        two_view_recipe("strong", 224)


def test_loader_contract(tiny_imagefolder):
    loader = build_train_loader("torch", str(tiny_imagefolder / "train"), two_view_recipe("w/s", 32),
                                batch_size=16, workers=0, seed=0)
    assert len(loader) == 96 // 16 and loader.num_classes == 4
    order = rank_batches(96, 16, epoch=0, seed=0)
    folder = datasets.ImageFolder(tiny_imagefolder / "train")
    for i, (online, target, labels) in enumerate(loader.iterate(0)):
        for view in (online, target):
            assert view.shape == (16, 3, 32, 32) and view.dtype == torch.float32
            assert view.is_contiguous(memory_format=torch.channels_last)
        assert labels.tolist() == [folder.targets[j] for j in order[i]]
    assert i == len(loader) - 1


def batches(loader, epoch, skip=0):
    return [tuple(t.clone() for t in batch) for batch in loader.iterate(epoch, skip_batches=skip)]


def test_epochs_are_reproducible_whatever_the_workers_and_resume_point(tiny_imagefolder):
    args = (str(tiny_imagefolder / "train"), two_view_recipe("w/s", 32))
    serial = build_train_loader("torch", *args, batch_size=16, workers=0, seed=3)
    parallel = build_train_loader("torch", *args, batch_size=16, workers=2, seed=3)
    first = batches(serial, 0)
    again = batches(parallel, 0)
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    resumed = batches(serial, 0, skip=4)
    assert all(torch.equal(x, y) for x, y in zip(first[4], resumed[0])) and len(resumed) == 2
    other_epoch = batches(serial, 1)
    assert not torch.equal(first[0][2], other_epoch[0][2]) or not torch.equal(first[0][0], other_epoch[0][0])


def test_ranks_split_each_global_batch(tiny_imagefolder):
    per_rank = [rank_batches(96, 8, epoch=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 6
    seen = [i for r in per_rank for batch in r for i in batch]
    assert sorted(seen) == list(range(96))


def test_weak_view_keeps_colour_strong_view_changes_it(tmp_path):
    folder = tmp_path / "flat" / "only"
    folder.mkdir(parents=True)
    colour = (200, 60, 30)
    for i in range(64):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
    loader = build_train_loader("torch", str(tmp_path / "flat"), two_view_recipe("w/s", 16), batch_size=64,
                                workers=0, seed=0)
    online, target, _ = next(loader.iterate(0))
    expected = (torch.tensor(colour) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(target, expected.view(1, 3, 1, 1).expand_as(target), rtol=0, atol=1e-6)
    changed = ((online - expected.view(1, 3, 1, 1)).abs().amax(dim=(1, 2, 3)) > 0.05).float().mean().item()
    # jitter (p 0.8) or grayscale (p 0.2) changes the colour with probability 1 - 0.2 * 0.8 = 0.84
    assert 0.84 - 3 * np.sqrt(0.84 * 0.16 / 64) <= changed <= 1.0


def test_default_workers_fit_the_machine(tiny_imagefolder, monkeypatch):
    import warnings

    from dataset_prep.progress import available_cores
    from pipelines import build_eval_loader, default_workers

    assert default_workers("ffcv") == available_cores() and default_workers("torch") == min(8, available_cores())
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * available_cores()))  # torchrun: more processes than cores
    assert default_workers("dali") == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    loader = build_eval_loader(str(tiny_imagefolder / "val"), two_view_recipe("w/s", 32), batch_size=8,
                               workers=default_workers("torch"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "suggested max number of worker" warning would fail this
        assert sum(len(labels) for _, labels in loader) == 24


FORK_INTERRUPTED = """
import os, signal, sys
from pipelines import build_eval_loader, two_view_recipe
loader = build_eval_loader(sys.argv[1], two_view_recipe("w/s", 32), batch_size=8, workers=1)
fired = []
def interrupt():  # as a Ctrl-C that lands while a worker is forked (in the logging module's at-fork handler)
    if not fired:
        fired.append(True)
        os.kill(os.getpid(), signal.SIGINT)
os.register_at_fork(before=interrupt)
try:
    for batch in loader:
        pass
except KeyboardInterrupt:
    sys.exit("stopped")
print("went on")
"""


def test_a_ctrl_c_while_the_loader_forks_its_workers_is_not_lost(tiny_imagefolder):
    """Raised inside an at-fork handler, it was printed as 'Exception ignored' and the run went on to its end."""
    import subprocess
    import sys
    from pathlib import Path
    done = subprocess.run([sys.executable, "-c", FORK_INTERRUPTED, str(tiny_imagefolder / "val")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert (done.returncode, done.stdout, done.stderr.strip().splitlines()[-1:]) == (1, "", ["stopped"]), done.stderr
    assert "Exception ignored" not in done.stderr
