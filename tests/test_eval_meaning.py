"""Results that cannot mean what they seem (issue 21, items 10-12): held-out images that are the training or searched
images, evaluation defaults that do not fit a small set, and the lines and records that say what was evaluated."""
from __future__ import annotations

import json

import pytest
import torch

from msf_fast import eval as evaluation
from msf_fast.checkpoint import Checkpoint
from msf_fast.config import ConfigError, load_config
from msf_fast.model import MSF
from msf_fast.eval import PROG as EVAL

FAST = ["--resolution", "32", "--workers", "0", "--batch-size", "32", "--device", "cpu", "--no-progress"]


class WorkStarted(Exception):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """Stops a command where it would build a backbone (the step before feature extraction)."""
    def refuse(self):
        raise WorkStarted
    monkeypatch.setattr(Checkpoint, "backbone", refuse)


@pytest.fixture(scope="module")
def stores(tiny_imagefolder, tmp_path_factory) -> dict[str, str]:
    """TFRecord stores of the tiny training folder: as a training split, and as a validation split (--val)."""
    from dataset_prep import write_tfrecord
    root = tmp_path_factory.mktemp("stores")
    train = str(tiny_imagefolder / "train")
    for name, options in (("train_store", []), ("val_store", ["--val"])):
        assert write_tfrecord.main([train, str(root / name), "--workers", "1", "--no-progress", *options]) == 0
    return {"train": str(root / "train_store"), "val": str(root / "val_store")}


def run(main, argv, capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


# --- item 10: evaluating on the training data ----------------------------------------------------------------

def config(tmp_path, train, *options):
    return load_config([f"--data.train_path={train}", "--train.batch_size=16", "--msf.bank_size=64",
                        f"--logging.folder={tmp_path / 'run'}", *options])


def test_the_monitor_refuses_held_out_images_that_it_searches(tiny_imagefolder, stores, tmp_path):
    train = str(tiny_imagefolder / "train")
    with pytest.raises(ConfigError) as refused:
        config(tmp_path, train, f"--data.val_path={train}")
    assert str(refused.value) == (
        f"data.val_path={train} and data.train_path={train} hold the same data: each held-out image of the k-NN "
        "monitor would find itself among the images it searches (top-1 1.0 at k = 1); give held-out images, or "
        "data.val_path='' for no monitor")
    # the same images in another format: a store written from the training folder
    with pytest.raises(ConfigError, match=rf"hold the same images \({stores['train']} was written from "):
        config(tmp_path, train, f"--data.val_path={stores['train']}")
    # without a monitor, val_path is not read: nothing to refuse
    config(tmp_path, train, f"--data.val_path={train}", "--eval.knn_final=0", "--eval.knn_every=0")


def test_training_images_as_held_out_beside_another_memory_set_is_a_warning(tiny_imagefolder, tmp_path, capsys):
    train, other = str(tiny_imagefolder / "train"), str(tiny_imagefolder / "val")
    config(tmp_path, train, f"--data.val_path={train}", f"--eval.knn_memory_path={other}")
    assert capsys.readouterr().err.splitlines() == [
        f"warning: data.val_path={train} and data.train_path={train} hold the same data: the k-NN monitor scores "
        "images the network trains on, which inflates it"]


def test_training_on_a_store_written_as_a_validation_split_is_a_warning(tiny_imagefolder, stores, tmp_path, capsys):
    config(tmp_path, stores["val"], f"--data.val_path={tiny_imagefolder / 'val'}")
    assert capsys.readouterr().err.splitlines() == [
        f"warning: data.train_path={stores['val']} was written as a validation split (--val: its manifest says "
        "\"split\": \"val\"): the run trains on held-out images"]
    config(tmp_path, stores["train"], f"--data.val_path={tiny_imagefolder / 'val'}")
    assert capsys.readouterr().err == ""


def test_eval_knn_refuses_the_searched_images_as_held_out(backbone, tiny_imagefolder, stores, no_work, capsys):
    train = str(tiny_imagefolder / "train")
    assert run(evaluation.main, ["knn", "--ckpt", backbone, "--train", train, "--val", train, *FAST], capsys) == (2, [
        f"{EVAL} knn: error: --train {train} and --val {train} hold the same data: each held-out image would find "
        "itself among the searched ones (top-1 1.0 at k = 1); give --val held-out images"])
    code, lines = run(evaluation.main, ["knn", "--ckpt", backbone, "--train", stores["train"], "--val", train, *FAST],
                      capsys)
    assert code == 2 and len(lines) == 1 and f"hold the same images ({stores['train']} was written from " in lines[0]


def test_eval_linear_warns_when_it_is_scored_on_its_training_images(backbone, tiny_imagefolder, no_work, capsys):
    train = str(tiny_imagefolder / "train")
    with pytest.raises(WorkStarted):
        evaluation.main(["linear", "--ckpt", backbone, "--train", train, "--val", train, *FAST])
    assert capsys.readouterr().err.splitlines() == [
        f"{EVAL} linear: warning: --train {train} and --val {train} hold the same data: the probe is scored on images "
        "it was trained on, which measures its fit, not how it generalises; give --val held-out images"]


def test_eval_neighbours_warns_when_the_queries_are_gallery_images_in_another_form(backbone, tiny_imagefolder,
                                                                                 stores, no_work, capsys):
    train = str(tiny_imagefolder / "train")
    with pytest.raises(WorkStarted):
        evaluation.main(["neighbours", "--ckpt", backbone, "--data", stores["train"], "--queries-from", train, *FAST])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"{EVAL} neighbours: warning: --queries-from {train} and --data {stores['train']} hold the same images (")
    assert lines[0].endswith(": each query finds itself among its neighbours; give --queries-from the path of --data "
                             "(a query is then never its own neighbour) or held-out images")


# --- item 11: defaults that fit the data, results that say when they cannot mean anything -------------------------

@pytest.fixture(scope="module")
def four_images(tiny_imagefolder, tmp_path_factory) -> str:
    """One image of each of the tiny set's 4 classes."""
    import shutil
    root = tmp_path_factory.mktemp("four") / "data"
    for label in range(4):
        (root / f"class_{label}").mkdir(parents=True)
        shutil.copy(tiny_imagefolder / "val" / f"class_{label}" / "0.jpg", root / f"class_{label}" / "0.jpg")
    return str(root)


def result_of(main, argv, capsys) -> tuple[int, dict, list[str]]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else {}, captured.err.strip().splitlines()


def test_clusters_default_to_the_classes_of_a_small_set_and_report_the_purity_floor(backbone, tiny_imagefolder,
                                                                                  tmp_path, capsys):
    # 24 images: the default made 24 clusters, one image each, and reported purity 1.0
    val = str(tiny_imagefolder / "val")
    code, result, lines = result_of(evaluation.main, ["clusters", "--ckpt", backbone, "--data", val, "--thumb", "8",
                                                      "--out", str(tmp_path), *FAST], capsys)
    assert code == 0
    assert lines == [f"{EVAL} clusters: note: 4 clusters, one per class of the 24 images clustered (fewer than the "
                     "default --clusters 100)"]
    assert (result["images"], result["clusters"]) == (24, 4)
    assert result["purity_floor"] == [0.25] and 0.25 <= result["purity"][0] <= 1.0  # the largest class: 6 of 24
    assert "| checkpoint | purity | floor |" in (tmp_path / "report.md").read_text()


def test_purity_floor_says_when_purity_cannot_mean_anything():
    import numpy as np

    from msf_fast.eval.figures.analyses import cluster_purity, purity_floor
    one_class = np.zeros(6, dtype=np.int64)
    assignments = np.array([0, 0, 1, 1, 2, 2])
    assert purity_floor(assignments, one_class) == cluster_purity(assignments, one_class) == 1.0
    labels = np.array([0, 1, 0, 1, 0, 1])
    assert purity_floor(assignments, labels) == 0.5 == cluster_purity(assignments, labels)  # the worst clustering
    assert purity_floor(np.arange(6), labels) == 1.0  # one image per cluster


def test_tsne_shows_every_class_of_a_set_with_fewer_than_the_default(backbone, tiny_imagefolder, no_work, capsys):
    # refused before with "--classes 10: ... has only 4 classes", though --classes was never typed
    val = str(tiny_imagefolder / "val")
    with pytest.raises(WorkStarted):  # past every check (the embedding itself is test_figures')
        evaluation.main(["tsne", "--ckpt", backbone, "--data", val, *FAST])
    assert capsys.readouterr().err.splitlines() == [
        f"{EVAL} tsne: note: all 4 classes of {val} (fewer than the default --classes 10)"]


def test_neighbours_defaults_fit_a_small_gallery(backbone, four_images, tmp_path, capsys):
    code, result, lines = result_of(evaluation.main, ["neighbours", "--ckpt", backbone, "--data", four_images,
                                                      "--thumb", "8", "--out", str(tmp_path), *FAST], capsys)
    assert code == 0
    assert lines == [
        f"{EVAL} neighbours: note: 4 queries, every image of {four_images} (fewer than the default --queries 6)",
        f"{EVAL} neighbours: note: 3 neighbours per query, every image of the gallery {four_images} (a query is not "
        "its own neighbour) (fewer than the default --k 8)"]
    assert (len(result["queries"]), result["k"]) == (4, 3)


def test_knn_default_k_fits_a_small_memory_set_and_a_k_of_all_of_it_is_a_warning(backbone, four_images,
                                                                                tiny_imagefolder, tmp_path, capsys):
    val = str(tiny_imagefolder / "val")
    argv = ["knn", "--ckpt", backbone, "--train", four_images, "--val", val, "--out", str(tmp_path), *FAST]
    code, result, lines = result_of(evaluation.main, argv, capsys)
    assert code == 0
    assert lines == [f"{EVAL} knn: note: --k 1: the memory set --train {four_images} has only 4 images, too few for "
                     "the default k = 20"]
    assert "top1_k1_majority" in result and "top1_k20_majority" not in result
    code, result, lines = result_of(evaluation.main, [*argv, "--k", "4"], capsys)
    assert code == 0 and lines == [
        f"{EVAL} knn: warning: --k 4: every image of the memory set --train {four_images} votes, so the majority vote "
        "gives every held-out image the same class"]
    assert result["top1_k4_majority"] == 0.25  # one class for the 24 images of 4 balanced classes


# --- item 12: messages and records ---------------------------------------------------------------------------------

def test_knn_json_names_the_step_and_epoch_of_the_checkpoint_it_evaluated(tiny_imagefolder, four_images, tmp_path,
                                                                          capsys):
    # a live run's latest.pt moves on: the result says which state it scored
    from msf_fast.checkpoint import training_state
    torch.manual_seed(0)
    model = MSF("resnet18", bank_size=32, topk=5, small_input=True)
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    torch.save(training_state(model, None, None, epoch=3, step=40, steps_per_epoch=12, config=None), latest)
    code = evaluation.main(["knn", "--ckpt", str(latest), "--train", four_images, "--val",
                            str(tiny_imagefolder / "val"), "--k", "1", *FAST])
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "run" / "knn.json").read_text())
    assert (written["step"], written["epoch"], written["steps_per_epoch"]) == (40, 3, 12)
    assert json.loads(capsys.readouterr().out) == written
    assert f"## k-NN ({latest} (step 40, epoch 3))" in (tmp_path / "run" / "report.md").read_text()


def test_a_choice_parameter_lists_its_choices_in_their_order(tmp_path):
    with pytest.raises(ConfigError) as refused:
        config(tmp_path, tmp_path, "--model.arch=resnet5")
    assert str(refused.value) == (
        "model.arch='resnet5': expected one of resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d, "
        "resnext101_32x8d, wide_resnet50_2, wide_resnet101_2")


def test_ctrl_c_in_the_linear_probe_leaves_no_half_drawn_bar(backbone, tiny_imagefolder, four_images, tmp_path,
                                                             monkeypatch, capsys):
    # the sibling of the writers' bar (item 12): the probe's bar stayed drawn above f"{EVAL} linear: interrupted"
    from msf_fast.eval import probe_commands
    from tests.test_writer_mistakes import screen

    def interrupted(probe, batches, settings, val_features, val_labels, progress):
        progress({"train_loss": 1.0, "val_top1": 0.5})
        raise KeyboardInterrupt

    monkeypatch.setattr(probe_commands, "train_probe", interrupted)
    # a redraw per update, as on a terminal (stderr is captured here: a bar would redraw every 30 s)
    monkeypatch.setattr(probe_commands, "bar_options", lambda: {"mininterval": 0})
    argv = ["linear", "--ckpt", backbone, "--train", four_images, "--val", str(tiny_imagefolder / "val"),
            "--epochs", "3", "--out", str(tmp_path), *[option for option in FAST if option != "--no-progress"]]
    assert evaluation.main(argv) == 130
    err = capsys.readouterr().err
    assert "1/3" in err  # the bar was drawn
    assert screen(err) == [f"{EVAL} linear: interrupted"]
