"""The linear probe: the original's feature standardisation, learning a separable problem, chance on random
labels, and the `linear` / `semi` commands end to end (cached and augmented modes)."""
from __future__ import annotations

import json

import pytest
import torch

from msf_fast import eval as evaluation
from msf_fast import export
from msf_fast.eval.linear_probe import (NormalizeThenStandardize, ProbeSettings, cached_batches, make_probe,
                                   topk_accuracies, train_probe)
from msf_fast.model import MSF


def separable_problem(samples: int, seed: int, classes: int = 5, dim: int = 64, random_labels: bool = False):
    """Gaussian features labelled by a fixed random linear map (linearly separable by construction), keeping
    those with a margin between the two best scores."""
    weights = torch.randn(dim, classes, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    features = 3 * torch.randn(4 * samples, dim, generator=generator) + 1.0
    scores = (features @ weights).topk(2, dim=1).values
    features = features[scores[:, 0] - scores[:, 1] > 0.1 * scores[:, 0].abs()][:samples]
    assert len(features) == samples
    labels = (features @ weights).argmax(dim=1)
    if random_labels:
        labels = torch.randint(0, classes, (samples,), generator=generator)
    return features, labels


def test_standardisation_is_the_originals():
    features = torch.randn(50, 8) * 4 + 2
    normalised = features / features.norm(2, dim=1, keepdim=True)
    var, mean = torch.var_mean(normalised, dim=0)  # the original caches torch.var_mean of normalised features
    expected = (normalised - mean) * (1.0 / torch.sqrt(var + 1e-5))
    probe = make_probe(features, num_classes=3)
    assert isinstance(probe[0], NormalizeThenStandardize)
    torch.testing.assert_close(probe[0](features), expected)
    standardised = probe[0](features)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(8), atol=1e-5, rtol=0)


def test_topk_accuracies():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    assert topk_accuracies(logits, torch.tensor([0, 1, 1]), ks=(1, 2)) == {"top1": round(1 / 3, 4), "top2": 1.0}


def test_probe_learns_a_linearly_separable_problem():
    train, train_labels = separable_problem(10000, seed=1)  # 40 steps per epoch at batch 256
    val, val_labels = separable_problem(1000, seed=2)
    settings = ProbeSettings(epochs=40)
    result = train_probe(make_probe(train, 5), cached_batches(train, train_labels, settings.batch_size, 0),
                         settings, val, val_labels)
    assert result["top1"] > 0.97, result["history"][-1]
    assert result["top5"] == 1.0
    losses = [record["train_loss"] for record in result["history"]]
    assert losses[-1] < 0.5 * losses[0]
    again = train_probe(make_probe(train, 5), cached_batches(train, train_labels, settings.batch_size, 0),
                        settings, val, val_labels)
    assert again["top1"] == result["top1"], "a seeded probe must be reproducible"


def test_probe_on_random_labels_stays_at_chance():
    train, train_labels = separable_problem(2000, seed=1, random_labels=True)
    val, val_labels = separable_problem(1000, seed=2, random_labels=True)
    settings = ProbeSettings(epochs=10)
    result = train_probe(make_probe(train, 5), cached_batches(train, train_labels, 256, 0), settings, val,
                         val_labels)
    assert abs(result["top1"] - 0.2) < 0.06


@pytest.fixture(scope="module")
def backbone_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pth"
    torch.save(export.backbone_state_dict(MSF("resnet18", bank_size=32, topk=5, small_input=True)), path)
    return str(path)


def probe_command(command, checkpoint, folder, out, *extra):
    return evaluation.main([command, "--ckpt", checkpoint, "--train", str(folder / "train"), "--val",
                            str(folder / "val"), "--resolution", "32", "--workers", "0", "--batch-size", "32",
                            "--device", "cpu", "--out", str(out), "--no-progress", "--epochs", "3", *extra])


@pytest.mark.parametrize("mode", ["cached", "augmented"])
def test_linear_command(tiny_imagefolder, backbone_checkpoint, tmp_path, mode):
    assert probe_command("linear", backbone_checkpoint, tiny_imagefolder, tmp_path, "--mode", mode) == 0
    result = json.loads((tmp_path / "linear.json").read_text())
    assert result["mode"] == mode and result["classes"] == 4
    assert result["train_images"] == result["labelled_images"] == 96 and result["val_images"] == 24
    assert [record["epoch"] for record in result["history"]] == [1, 2, 3]
    assert 0 <= result["top1"] <= result["top5"] <= 1
    assert "## Linear probe" in (tmp_path / "report.md").read_text()


def test_semi_command_balanced_subsets_and_list_files(tiny_imagefolder, backbone_checkpoint, tmp_path, capsys):
    assert probe_command("semi", backbone_checkpoint, tiny_imagefolder, tmp_path, "--fractions", "0.1", "0.5") == 0
    result = json.loads((tmp_path / "semi.json").read_text())
    assert result["subsets"]["0.1"]["labelled_images"] == 4 * 2  # round(0.1 x 24) per class
    assert result["subsets"]["0.5"]["labelled_images"] == 4 * 12
    listed = (tmp_path / "subset_0.1_seed0.txt").read_text().split()
    assert len(listed) == 8 and all(name.startswith(f"class_{c}/") for c in range(4)
                                    for name in listed[2 * c:2 * c + 2])
    report = (tmp_path / "report.md").read_text()
    assert "## Semi-supervised" in report and "| 0.1 | 8 |" in report

    # the saved list, given back as a user's file, trains on the same images
    assert probe_command("semi", backbone_checkpoint, tiny_imagefolder, tmp_path / "again", "--subset-file",
                         str(tmp_path / "subset_0.1_seed0.txt")) == 0
    again = json.loads((tmp_path / "again" / "semi.json").read_text())
    assert list(again["subsets"].values())[0]["labelled_images"] == 8
    assert list(again["subsets"].values())[0]["top1"] == result["subsets"]["0.1"]["top1"]

    bad = tmp_path / "bad.txt"
    bad.write_text("class_0/0.jpg\nclass_9/nothing.jpg\n")
    capsys.readouterr()
    assert probe_command("semi", backbone_checkpoint, tiny_imagefolder, tmp_path, "--subset-file", str(bad)) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "bad.txt:2: class_9/nothing.jpg" in error
