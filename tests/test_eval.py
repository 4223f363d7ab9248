"""k-NN evaluation: exact on separable features, chance on random labels, and the same backbone whichever
checkpoint format it comes from (ours, an exported torchvision backbone, the original MSF code)."""
from __future__ import annotations

import json

import pytest
import torch

from msf_fast import eval as evaluation
from msf_fast import export
from msf_fast.checkpoint import atomic_save, original_to_msf_state, training_state
from msf_fast.checkpoint import read_checkpoint
from msf_fast.eval.knn import knn_predict, weighted_knn_predict
from msf_fast.model import MSF, pooled_features
from msf_fast.reference import OriginalMeanShift, data_parallel_state_dict


def toy_features(classes: int, per_class: int, separable: bool, seed: int = 0):
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.nn.functional.normalize(torch.randn(classes, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    generator = torch.Generator().manual_seed(100 + seed)  # the same centres, fresh noise per seed
    noise = 0.05 if separable else 1.0
    features = centres[labels] + noise * torch.randn(len(labels), 32, generator=generator)
    return torch.nn.functional.normalize(features, dim=1), labels


@pytest.mark.parametrize("predict", [knn_predict, weighted_knn_predict])
def test_separable_features_are_classified_perfectly(predict):
    train, train_labels = toy_features(10, 50, separable=True)
    val, val_labels = toy_features(10, 20, separable=True, seed=1)
    for k in (1, 20):
        assert (predict(train, train_labels, val, k=k) == val_labels).all()


@pytest.mark.parametrize("predict", [knn_predict, weighted_knn_predict])
def test_random_labels_give_chance(predict):
    train, _ = toy_features(10, 200, separable=True)
    val, val_labels = toy_features(10, 100, separable=True, seed=1)
    shuffled = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(3))  # labels unrelated to features
    accuracy = (predict(train, shuffled, val, k=20) == val_labels).float().mean().item()
    assert abs(accuracy - 0.1) < 0.05


def test_every_checkpoint_format_gives_the_same_backbone(tmp_path):
    torch.manual_seed(0)
    original = OriginalMeanShift("resnet18", m=0.99, mem_bank_size=32, topk=5)
    torch.save({"state_dict": data_parallel_state_dict(original), "epoch": 3}, tmp_path / "original.pth")
    ours = MSF("resnet18", bank_size=32, topk=5)
    ours.load_state_dict(original_to_msf_state(original.state_dict()))
    optimizer = torch.optim.SGD(ours.trainable_parameters(), lr=0.1)
    atomic_save(training_state(ours, optimizer, None, 0, 0, 1, None), tmp_path / "ours.pt")
    assert export.main([str(tmp_path / "ours.pt"), str(tmp_path / "backbone.pth")]) == 0

    images = torch.randn(2, 3, 64, 64)
    features = []
    for name in ("ours.pt", "backbone.pth", "original.pth"):
        backbone = read_checkpoint(tmp_path / name).backbone().eval()
        with torch.no_grad():
            features.append(pooled_features(backbone, images))
    torch.testing.assert_close(features[0], features[1], rtol=0, atol=0)
    torch.testing.assert_close(features[0], features[2], rtol=0, atol=0)


def test_faiss_search_finds_the_exact_neighbours():
    pytest.importorskip("faiss")
    from msf_fast.eval.knn import nearest_neighbours
    gallery, _ = toy_features(10, 100, separable=False)
    queries, _ = toy_features(10, 30, separable=False, seed=1)
    exact_similarities, exact = nearest_neighbours(gallery, queries, k=20, search="torch", chunk_size=64)
    faiss_similarities, found = nearest_neighbours(gallery, queries, k=20, search="faiss")
    assert torch.equal(found, exact)
    torch.testing.assert_close(faiss_similarities, exact_similarities, rtol=0, atol=1e-5)
    assert torch.equal(knn_predict(gallery, torch.arange(1000) % 7, queries, search="faiss"),
                       knn_predict(gallery, torch.arange(1000) % 7, queries, search="torch"))


def test_knn_command_reports_json(tiny_imagefolder, tmp_path, capsys):
    torch.manual_seed(0)
    model = MSF("resnet18", bank_size=32, topk=5, small_input=True)
    torch.save(export.backbone_state_dict(model), tmp_path / "backbone.pth")
    assert evaluation.main(["knn", "--ckpt", str(tmp_path / "backbone.pth"), "--train",
                            str(tiny_imagefolder / "train"), "--val", str(tiny_imagefolder / "val"),
                            "--resolution", "32", "--workers", "0", "--batch-size", "32", "--device", "cpu",
                            "--out", str(tmp_path / "results")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == json.loads((tmp_path / "results" / "knn.json").read_text())
    assert report["train_images"] == 96 and report["val_images"] == 24
    for key in ("top1_k1_majority", "top1_k1_weighted", "top1_k20_majority", "top1_k20_weighted"):
        assert 0.0 <= report[key] <= 1.0
    markdown = (tmp_path / "results" / "report.md").read_text()
    assert "## k-NN" in markdown and f"| 20 | {report['top1_k20_majority']:.4f} |" in markdown
    assert evaluation.main(["knn", "--ckpt", str(tmp_path / "missing.pth"), "--train", "x", "--val", "y"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_an_allocation_too_large_is_one_line_naming_the_batch_and_resolution(tiny_imagefolder, tmp_path, capsys,
                                                                             monkeypatch):
    """--resolution 100000 printed the CPU allocator's own message ("[enforce fail at alloc_cpu.cpp:127] ...")."""
    from msf_fast.eval import knn_command

    def features_of_a_huge_batch(args):
        torch.empty(2**50, dtype=torch.uint8)  # a real allocator failure: 1 PiB is past any address space
    monkeypatch.setattr(knn_command, "run_knn", features_of_a_huge_batch)
    torch.save(export.backbone_state_dict(MSF("resnet18", bank_size=32, topk=5)), tmp_path / "backbone.pth")
    assert evaluation.main(["knn", "--ckpt", str(tmp_path / "backbone.pth"), "--train", str(tiny_imagefolder / "train"),
                            "--val", str(tiny_imagefolder / "val"), "--resolution", "100000", "--batch-size", "32",
                            "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip() == ("python -m msf_fast.eval knn: error: out of memory on the CPU: "
                                               "1,048,576.0 GiB asked at once, at --batch-size 32 and --resolution "
                                               "100000: lower either")


def test_eval_defaults_to_the_resolution_the_checkpoint_trained_at(tiny_imagefolder, tmp_path, capsys):
    """The demo's 32-px checkpoint was evaluated at 224 unless told: images 7x the size it learned on, and another
    number than its training's k-NN monitor."""
    torch.manual_seed(0)
    model = MSF("resnet18", bank_size=32, topk=5, small_input=True)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    atomic_save(training_state(model, optimizer, None, 1, 3, 3, {"data": {"resolution": 32}}), tmp_path / "ours.pt")
    common = ["--train", str(tiny_imagefolder / "train"), "--val", str(tiny_imagefolder / "val"), "--workers", "0",
              "--batch-size", "32", "--device", "cpu", "--no-progress", "--k", "1"]
    assert evaluation.main(["knn", "--ckpt", str(tmp_path / "ours.pt"), *common, "--out", str(tmp_path / "a")]) == 0
    chosen = capsys.readouterr()
    assert "note: --resolution 32: the resolution ours.pt trained at" in chosen.err
    assert evaluation.main(["knn", "--ckpt", str(tmp_path / "ours.pt"), *common, "--resolution", "32",
                            "--out", str(tmp_path / "b")]) == 0
    given = capsys.readouterr()
    assert "note: --resolution" not in given.err
    defaulted, explicit = (json.loads((tmp_path / out / "knn.json").read_text()) for out in "ab")
    assert defaulted["resolution"] == explicit["resolution"] == 32
    assert defaulted["top1_k1_majority"] == explicit["top1_k1_majority"]

    from argparse import Namespace
    from msf_fast.eval.common import choose_resolution
    torch.save(export.backbone_state_dict(model), tmp_path / "backbone.pth")
    atomic_save(training_state(model, optimizer, None, 1, 3, 3, {"data": {"resolution": 64}}), tmp_path / "other.pt")
    for paths, expected, said in (
            (["backbone.pth"], 224, "--resolution 224: backbone.pth records no training resolution; give "
                                    "--resolution to choose another"),
            (["backbone.pth", "ours.pt"], 32, "--resolution 32: the resolution ours.pt trained at; backbone.pth "
                                              "records none; give --resolution to choose another"),
            (["ours.pt", "other.pt"], 224, "--resolution 224: the checkpoints trained at 32 and 64 px (ours.pt 32, "
                                           "other.pt 64); give --resolution to choose another")):
        args = Namespace(resolution=None, command="tsne")
        choose_resolution(args, [read_checkpoint(tmp_path / path) for path in paths])
        assert args.resolution == expected, paths
        assert capsys.readouterr().err == f"{evaluation.PROG} tsne: note: {said}\n"
