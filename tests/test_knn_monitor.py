"""The online k-NN monitor (held-out subsets, both votes, beside purity) and the snapshots kept for figures."""
from __future__ import annotations

import json

import pytest
import torch

from msf_fast.config import load_config
from msf_fast.checkpoint import read_checkpoint
from msf_fast.knn_monitor import KnnMonitor
from msf_fast.trainer import Trainer


def test_monitor_subsets_log_and_snapshots(tiny_imagefolder, tmp_path):
    folder = tmp_path / "run"
    cfg = load_config([f"--data.train_path={tiny_imagefolder / 'train'}", f"--data.val_path={tiny_imagefolder / 'val'}",
                       "--model.arch=resnet18", "--model.small_input=1", "--data.resolution=32",
                       "--train.batch_size=8", "--msf.bank_size=32", "--train.epochs=2", "--data.workers=0",
                       f"--logging.folder={folder}", "--logging.progress=0", "--train.threads=1",
                       "--eval.knn_every=1", "--eval.knn_k=3", "--eval.knn_memory_per_class=5",
                       "--eval.knn_val_per_class=2", "--logging.snapshot_every=1"])
    trainer = Trainer(cfg)
    initial = {name: value.clone() for name, value in trainer.model.online.state_dict().items()}
    assert trainer.monitor.memory.num_samples == 4 * 5 and trainer.monitor.held_out.num_samples == 4 * 2
    trainer.train()

    epochs = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    epochs = [record for record in epochs if record["event"] == "epoch"]
    assert [record["epoch"] for record in epochs] == [0, 1, 2]
    for record in epochs:
        assert record["knn_top1"] in {i / 8 for i in range(9)}  # a fraction of the 8 held-out images
        assert record["knn_weighted_top1"] in {i / 8 for i in range(9)}
    assert all(0 <= record["purity"] <= 1 for record in epochs[1:])

    snapshots = sorted(path.name for path in (folder / "checkpoints").glob("epoch_*.pt"))
    assert snapshots == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    assert read_checkpoint(folder / "checkpoints" / "epoch_0001.pt").label == "epoch 1"
    at_init = read_checkpoint(folder / "checkpoints" / "epoch_0000.pt").backbone().state_dict()
    for name, value in initial.items():
        assert torch.equal(at_init[name], value), name
    trained = read_checkpoint(folder / "checkpoints" / "epoch_0002.pt").backbone().state_dict()
    assert not torch.equal(trained["conv1.weight"], initial["conv1.weight"])


def test_monitor_lists_each_folder_once_and_scores_separable_classes(tiny_imagefolder, monkeypatch):
    from pipelines import torchvision_backend
    from pipelines.recipe import two_view_recipe

    listed = []
    original = torchvision_backend.image_folder
    monkeypatch.setattr(torchvision_backend, "image_folder", lambda root, *rest: listed.append(root) or
                        original(root, *rest))
    monitor = KnnMonitor(str(tiny_imagefolder / "train"), str(tiny_imagefolder / "val"), two_view_recipe("w/s", 32),
                         k=1, batch_size=16, workers=0, memory_per_class=5, val_per_class=2, seed=0, every=2)
    assert sorted(listed) == [str(tiny_imagefolder / "train"), str(tiny_imagefolder / "val")]
    assert (monitor.memory.num_samples, monitor.held_out.num_samples) == (20, 8)
    assert [monitor.due(epoch, last=False) for epoch in (1, 2, 3, 4)] == [False, True, False, True]
    assert monitor.due(3, last=True)  # the final evaluation

    class ChannelMeans(torch.nn.Module):
        """A 'backbone' whose pooled features are the mean colour: the tiny classes differ by one halved channel."""

        def __init__(self):
            super().__init__()
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
                setattr(self, name, torch.nn.Identity())
            self.avgpool = torch.nn.AdaptiveAvgPool2d(1)

    report = monitor.evaluate(ChannelMeans(), torch.device("cpu"), None)
    assert set(report) == {"knn_top1", "knn_weighted_top1"} and report["knn_top1"] >= 0.5


@pytest.mark.parametrize("existed", [False, True])
def test_a_held_out_set_with_other_classes_is_refused_at_start(tiny_imagefolder, tmp_path, existed):
    """Refused at config time, before the run takes its folder: the monitor's refusal in the trainer came after the
    run had made the folder and its .lock."""
    import shutil

    from msf_fast.config import ConfigError
    from pipelines.recipe import two_view_recipe

    val = tmp_path / "val"
    shutil.copytree(tiny_imagefolder / "val", val)
    shutil.rmtree(val / "class_3")  # a val folder that lacks a class: every label after it would shift
    (val / "class_9").mkdir()
    shutil.copy(next((tiny_imagefolder / "val" / "class_3").iterdir()), val / "class_9" / "0.jpg")
    train, run = tiny_imagefolder / "train", tmp_path / "run"
    if existed:
        run.mkdir()
    with pytest.raises(ConfigError) as refused:
        load_config([f"--data.train_path={train}", f"--data.val_path={val}", "--model.arch=resnet18",
                     "--data.resolution=32", "--train.batch_size=8", "--msf.bank_size=32", "--data.workers=0",
                     f"--logging.folder={run}", "--train.threads=1"])
    assert str(refused.value) == (
        f"the k-NN monitor: data.train_path={train} and data.val_path={val} have different classes: class_3 only in "
        f"data.train_path={train}, class_9 only in data.val_path={val}; their labels would not match (give both the "
        "same class folders, or data.val_path='' for no monitor)")
    assert (sorted(run.iterdir()) == []) if existed else not run.exists()
    # the monitor checks again what a config cannot see (a store without a manifest), in the same words
    with pytest.raises(ValueError) as refused:
        KnnMonitor(str(train), str(val), two_view_recipe("w/s", 32), k=1, batch_size=8, workers=0)
    assert str(refused.value) == (
        f"the searched images {train} and the held-out images {val} have different classes: class_3 only in the "
        f"searched images {train}, class_9 only in the held-out images {val}; their labels would not match")


def test_the_default_k_shrinks_to_a_small_searched_set_and_a_typed_one_is_refused(tiny_imagefolder, capsys):
    from pipelines.recipe import two_view_recipe

    def monitor(k):
        return KnnMonitor(str(tiny_imagefolder / "train"), str(tiny_imagefolder / "val"), two_view_recipe("w/s", 32),
                          k=k, batch_size=16, workers=0, memory_per_class=3, val_per_class=1, seed=0)
    assert monitor(20).k == 12
    assert (f"note: eval.knn_k=12: the searched images {tiny_imagefolder / 'train'} are only 12 (fewer than the "
            "default 20)") in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"^eval.knn_k=13: the searched images .* are only 12$"):
        monitor(13)
