"""Mistakes with the evaluation commands, `export` and checkpoints (issue 16): each is one line on stderr and exit
code 2, found before any feature is extracted: wrong counts (k, clusters, classes, queries), fractions, sets
whose classes differ, an unwritable --out, paths that are no dataset and files that are no checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msf_fast import eval as evaluation
from msf_fast import export
from msf_fast.checkpoint import Checkpoint, NotACheckpoint, read_checkpoint
from msf_fast.model import MSF
from msf_fast.eval import PROG as EVAL
from msf_fast.export import PROG as EXPORT

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--resolution", "32", "--workers", "0", "--batch-size", "32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def sets(tiny_imagefolder, tmp_path_factory) -> dict[str, str]:
    """train/val (class_0..class_3), a val lacking class_3 and one naming it class_x."""
    root = tmp_path_factory.mktemp("sets")
    for name, classes in (("missing", {"class_0": "class_0", "class_1": "class_1", "class_2": "class_2"}),
                          ("renamed", {"class_0": "class_0", "class_1": "class_1", "class_2": "class_2",
                                       "class_3": "class_x"})):
        for source, target in classes.items():
            shutil.copytree(tiny_imagefolder / "val" / source, root / name / target)
    return {"train": str(tiny_imagefolder / "train"), "val": str(tiny_imagefolder / "val"),
            "missing": str(root / "missing"), "renamed": str(root / "renamed")}


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a command gets as far as building a backbone (the step before feature extraction)."""
    def refuse(self):
        raise AssertionError("the command started its work before finding the mistake")
    monkeypatch.setattr(Checkpoint, "backbone", refuse)


def run(main, argv, capsys) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of a command's main, argparse's SystemExit included."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def eval_command(command, backbone, *options) -> list[str]:
    return [command, "--ckpt", backbone, *options, *FAST]


# --- eval knn ----------------------------------------------------------------------------------------------------

def test_knn_k_zero_is_refused_by_the_parser(backbone, sets, no_work, capsys):
    argv = eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"], "--k", "0")
    assert run(evaluation.main, argv, capsys) == (2, [
        "python -m msf_fast.eval knn: error: argument --k: must be at least 1, got 0 (see --help)"])


def test_knn_k_larger_than_the_memory_set_is_refused_before_extraction(backbone, sets, no_work, capsys):
    argv = eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"], "--k", "1", "200")
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} knn: error: --k 200: the memory set --train {sets['train']} has only 96 images; give --k values of "
        "at most 96"])


@pytest.mark.parametrize("val, only_val", [("missing", None), ("renamed", "class_x")])
def test_knn_val_with_other_classes_is_refused(backbone, sets, no_work, capsys, val, only_val):
    argv = eval_command("knn", backbone, "--train", sets["train"], "--val", sets[val])
    train, other = f"--train {sets['train']}", f"--val {sets[val]}"
    in_val = f", {only_val} only in {other}" if only_val else ""  # no "none only in --val" (issue 21, item 12)
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} knn: error: {train} and {other} have different classes: class_3 only in {train}{in_val}; their labels "
        "would not match"])


def test_knn_search_faiss_without_faiss(backbone, sets, no_work, capsys, monkeypatch):
    monkeypatch.setattr("msf_fast.eval.knn_command.faiss_available", lambda: False)
    argv = eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"], "--search", "faiss")
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} knn: error: --search faiss: faiss is not installed (pip install -e '.[faiss]', or --search torch)"])


def test_knn_k_zero_exits_2_from_the_command_line(backbone, sets):
    done = subprocess.run([sys.executable, "-m", "msf_fast.eval", "knn", "--ckpt", backbone, "--train",
                           sets["train"], "--val", sets["val"], "--k", "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "python -m msf_fast.eval knn: error: argument --k: must be at least 1, got 0 (see --help)"]


@pytest.mark.parametrize("argv", [["--help"], ["tsne", "--help"], ["semi", "--ckpt", "a", "--train", "b", "--val",
                                                                      "c", "--fractions", "10"],
                                  ["clusters", "--ckpt", "a", "--data", "b", "--rows", "0"],
                                  ["knn", "--ckpt", "a", "--train", "b", "--val", "c", "--device", "gpu"],
                                  ["semi", "--ckpt", "a", "--train", "b", "--val", "c", "--fractions", "0.1",
                                   "--subset-file", "d"],
                                  ["linear", "--ckpt", "a", "--train", "b", "--val", "c", "--epochs", "5",
                                   "--milestones", "2", "5"]])
def test_help_and_option_mistakes_answer_before_torch_loads(argv):
    """--help and a mistyped value answer at once: torch and torchvision take 3-5 s to load (they loaded first)."""
    probe = ("import sys\nfrom msf_fast.eval.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print(e.code, sorted({'torch', 'torchvision'} & set(sys.modules)), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stderr.strip().splitlines()[-1] == ("0 []" if "--help" in argv else "2 []"), done.stderr


def test_missing_or_wrong_files_answer_before_torch_loads(backbone, sets, tmp_path):
    """A checkpoint or a data path that is plainly wrong was told after torch loaded (2-3 s): now at once, in the
    same words, as one line and exit 2."""
    probe = ("import sys\nfrom msf_fast.eval.cli import main\ncode = main(sys.argv[1:])\n"
             "print(code, sorted({'torch', 'torchvision'} & set(sys.modules)), file=sys.stderr)\n")
    text = tmp_path / "notes.txt"
    text.write_text("learning rate 0.05\n")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    cases = [(["knn", "--ckpt", str(tmp_path / "missing.pt"), "--train", sets["train"], "--val", sets["val"]],
              f"{EVAL} knn: error: {tmp_path / 'missing.pt'}: no such file"),
             (["tsne", "--ckpt", backbone, str(text), "--data", sets["train"]],
              f"{EVAL} tsne: error: {text}: a text file (starting 'learning rate 0.05'), not a checkpoint"),
             (["linear", "--ckpt", backbone, "--train", sets["train"], "--val", str(tmp_path / "nothing")],
              f"{EVAL} linear: error: --val {tmp_path / 'nothing'}: expected an ImageFolder, a .beton or a TFRecord "
              "store; it does not exist"),
             (["semi", "--ckpt", backbone, "--train", sets["train"], "--val", sets["val"], "--subset-file",
               str(tmp_path)], f"{EVAL} semi: error: --subset-file {tmp_path}: a folder, not a list file (one image "
                               "name or index per line)"),
             (["semi", "--ckpt", backbone, "--train", sets["train"], "--val", sets["val"], "--subset-file",
               str(photo)], f"{EVAL} semi: error: --subset-file {photo}: not a text file (a list file holds one image "
                            "name or index per line)"),
             (["neighbours", "--ckpt", backbone, "--data", sets["train"], "--queries-from", str(text)],
              f"{EVAL} neighbours: error: --queries-from {text}: expected an ImageFolder, a .beton or a TFRecord "
              "store; found a file, neither a .beton nor a folder")]
    for argv, expected in cases:
        done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.stderr.strip().splitlines() == [expected, "2 []"], done.stderr


@pytest.mark.parametrize("given, epochs, used, conflict", [
    (None, 40, (15, 30), None),  # the paper's
    (None, 20, (15,), None),  # those below --epochs
    (None, 10, (), None),
    ([], 10, (), None),  # none given: a constant lr
    ([30, 5, 5], 40, (5, 30), None),
    ([2, 5], 5, None, "--milestones 5: not below --epochs 5, so the lr would never drop there (a milestone is the "
                      "epoch after which it drops)"),
])
def test_probe_milestones_fall_below_the_epochs(given, epochs, used, conflict):
    """A milestone at or past --epochs was accepted, and the report said the lr dropped there."""
    from msf_fast.eval.arguments import option_conflict, probe_milestones

    args = Namespace(milestones=given, epochs=epochs)
    assert option_conflict(args) == conflict
    if used is not None:
        assert probe_milestones(args) == used


@pytest.mark.parametrize("milestones, said", [((15, 30), "lr x0.1 after epochs 15, 30;"), ((), "a constant lr;")])
def test_the_report_says_when_the_lr_drops(milestones, said):
    """With no milestone below --epochs the report said 'lr x0.1 after epochs -'."""
    from msf_fast.eval.arguments import ProbeSettings
    from msf_fast.eval.probe_commands import protocol_text

    run = Namespace(settings=ProbeSettings(epochs=40, milestones=milestones), args=Namespace(mode="cached"),
                    train_features=torch.zeros(4, 512), num_classes=2, val_labels=torch.zeros(6))
    assert said in protocol_text(run)


# --- options: unknown, abbreviated, --out, --device ------------------------------------------------------------

def test_unknown_or_abbreviated_options_name_the_closest(backbone, sets, capsys):
    code, lines = run(evaluation.main, eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"],
                                                    "--kk", "5"), capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("python -m msf_fast.eval knn: error: unknown option --kk (did you mean --k?)")
    code, lines = run(evaluation.main, eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"],
                                                    "--bogus"), capsys)
    assert lines == ["python -m msf_fast.eval knn: error: unknown option --bogus (see --help)"]  # not "--out?"
    code, lines = run(evaluation.main, eval_command("semi", backbone, "--train", sets["train"], "--val", sets["val"],
                                                    "--fraction", "0.1"), capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("python -m msf_fast.eval semi: error: unknown option --fraction (did you mean "
                               "--fractions?)")


def test_an_unwritable_out_is_refused_before_any_work(backbone, sets, no_work, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, expected in ((a_file / "sub", f"--out {a_file / 'sub'}: cannot make the folder, {a_file} is a file"),
                          (a_file, f"--out {a_file}: a file, not a folder")):
        for command in ("knn", "linear", "semi"):
            argv = eval_command(command, backbone, "--train", sets["train"], "--val", sets["val"], "--out", str(out))
            assert run(evaluation.main, argv, capsys) == (2, [f"{EVAL} {command}: error: {expected}"])
        argv = [*eval_command("clusters", backbone, "--data", sets["val"]), "--out", str(out)]
        assert run(evaluation.main, argv, capsys) == (2, [f"{EVAL} clusters: error: {expected}"])
    assert not (a_file / "sub").exists()


def test_an_out_inside_the_data_or_where_nothing_can_be_made_is_refused_before_any_work(backbone, sets, no_work,
                                                                                         tmp_path, capsys):
    """A report folder inside an ImageFolder would be listed as a class folder by the next run or evaluation; a
    folder the OS refuses (/proc, where os.access says yes to root) was found only when the result was written."""
    train = Path(sets["train"])
    for out, option, data in ((train / "report", "--train", train), (train / "class_0", "--train", train),
                              (Path(sets["val"]) / "x", "--val", sets["val"])):
        argv = eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"], "--out", str(out))
        assert run(evaluation.main, argv, capsys) == (2, [
            f"{EVAL} knn: error: --out {out} is inside {option} {data}: the next listing of the data would read its "
            "report and figures as images; choose a folder outside the data"])
    out = Path(sets["val"]) / "figures"
    argv = [*eval_command("tsne", backbone, "--data", sets["val"]), "--out", str(out)]
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} tsne: error: --out {out} is inside --data {sets['val']}: the next listing of the data would read its "
        "report and figures as images; choose a folder outside the data"])
    assert sorted(os.listdir(train)) == [f"class_{c}" for c in range(4)] and not out.exists()
    if os.path.isdir("/proc") and os.access("/proc", os.W_OK | os.X_OK):  # root: os.access cannot tell
        argv = eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"], "--out", "/proc/x")
        assert run(evaluation.main, argv, capsys) == (2, [
            f"{EVAL} knn: error: --out /proc/x: cannot be created or written (No such file or directory)"])


def test_an_out_inside_the_folder_a_store_was_written_from_is_refused(backbone, sets, no_work, tmp_path, capsys):
    """The store is read, but the report became a class of its source folder's images."""
    pytest.importorskip("ffcv")
    from dataset_prep import write_beton
    source = tmp_path / "source"
    shutil.copytree(sets["train"], source)
    store = tmp_path / "train.beton"
    assert write_beton.main([str(source), str(store), "--write-mode", "raw", "--no-progress", "--workers", "1",
                             "--max-resolution", "32"]) == 0
    capsys.readouterr()
    out = source / "report"
    argv = eval_command("knn", backbone, "--train", str(store), "--val", sets["val"], "--out", str(out))
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} knn: error: --out {out} is inside {os.path.realpath(source)}, the folder --train {store} was written "
        "from: its next listing would read the report and figures as a class of images; choose a folder outside the "
        "data"])
    assert sorted(os.listdir(source)) == [f"class_{c}" for c in range(4)]


def test_a_device_that_is_not_there(backbone, sets, no_work, capsys):
    argv = eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"])
    argv[argv.index("cpu")] = "gpu"
    assert run(evaluation.main, argv, capsys) == (2, ["python -m msf_fast.eval knn: error: argument --device: 'gpu': "
                                                      "expected auto, cpu, cuda or cuda:N (see --help)"])


# --- data paths --------------------------------------------------------------------------------------------------

def test_data_paths_that_are_no_dataset_name_the_accepted_kinds(backbone, sets, no_work, tmp_path, capsys):
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg)
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    shard.write_bytes(b"\0" * 16)
    unnamed = fake_beton(tmp_path / "val_store")
    accepted = "expected an ImageFolder, a .beton or a TFRecord store; found"
    cases = {str(jpeg): f"{accepted} an image file: give the ImageFolder that holds class_name/image.jpg",
             str(shard): f"{accepted} a single TFRecord shard: give the store's folder (the one holding "
                         "manifest.json, written by python -m dataset_prep.write_tfrecord)",
             str(tmp_path / "nothing"): f"{accepted.removesuffix('; found')}; it does not exist",
             str(unnamed): f"{accepted} an FFCV store without the .beton suffix: rename it to {unnamed}.beton"}
    for path, found in cases.items():
        argv = eval_command("knn", backbone, "--train", sets["train"], "--val", path)
        assert run(evaluation.main, argv, capsys) == (2, [f"{EVAL} knn: error: --val {path}: {found}"])
    argv = eval_command("tsne", backbone, "--data", str(jpeg))
    assert run(evaluation.main, argv, capsys) == (2, [f"{EVAL} tsne: error: --data {jpeg}: {cases[str(jpeg)]}"])


# --- linear / semi -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["linear", "semi"])
def test_probe_train_and_val_must_share_classes(backbone, sets, no_work, capsys, command):
    argv = eval_command(command, backbone, "--train", sets["train"], "--val", sets["renamed"])
    train, other = f"--train {sets['train']}", f"--val {sets['renamed']}"
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} {command}: error: {train} and {other} have different classes: class_3 only in {train}, class_x only "
        f"in {other}; their labels would not match"])


@pytest.mark.parametrize("value, expected", [
    ("0", "must be in (0, 1], got 0"), ("10", "must be in (0, 1], got 10 (a fraction: 0.1 for 10 %)"),
    ("1.5", "must be in (0, 1], got 1.5 (a fraction: 0.015 for 1.5 %)"), ("nan", "must be in (0, 1], got nan"),
    ("ten", "invalid fraction value: 'ten'")])
def test_semi_bad_fractions_are_refused_by_the_parser(backbone, sets, no_work, capsys, value, expected):
    argv = eval_command("semi", backbone, "--train", sets["train"], "--val", sets["val"], "--fractions", "0.1", value)
    assert run(evaluation.main, argv, capsys) == (2, [
        f"python -m msf_fast.eval semi: error: argument --fractions: {expected} (see --help)"])


def test_semi_subset_file_mistakes(backbone, sets, no_work, tmp_path, capsys):
    base = eval_command("semi", backbone, "--train", sets["train"], "--val", sets["val"])
    listed = tmp_path / "list.txt"
    listed.write_text("class_0/0.jpg\nclass_1/0.jpg\n")
    assert run(evaluation.main, [*base, "--subset-file", str(listed), "--fractions", "0.1"], capsys) == (2, [
        "python -m msf_fast.eval semi: error: --subset-file and --fractions exclude each other: the list file names "
        "the labelled images (see --help)"])
    assert run(evaluation.main, [*base, "--subset-file", str(tmp_path / "none.txt")], capsys) == (2, [
        f"{EVAL} semi: error: --subset-file {tmp_path / 'none.txt'}: no such file"])
    assert run(evaluation.main, [*base, "--subset-file", str(listed)], capsys) == (2, [
        f"{EVAL} semi: error: --subset-file {listed}: no image of 2 of the 4 classes (class_2, class_3); the probe "
        "could never predict them: list at least one image per class"])


def test_semi_report_describes_the_subset_file_it_ran(backbone, sets, tmp_path, capsys):
    listed = tmp_path / "list.txt"
    listed.write_text("# one image per class, one twice\n" + "".join(f"class_{c}/{c}.jpg\n" for c in range(4))
                      + "class_0/0.jpg\n")
    argv = [*eval_command("semi", backbone, "--train", sets["train"], "--val", sets["val"]), "--subset-file",
            str(listed), "--epochs", "1", "--out", str(tmp_path / "out")]
    assert run(evaluation.main, argv, capsys)[0] == 0
    section = (tmp_path / "out" / "report" / "semi.md").read_text()
    assert f"the 4 distinct images listed in {listed} (of 96, covering all 4 classes)" in section
    assert "drawn with seed" not in section
    result = json.loads((tmp_path / "out" / "semi.json").read_text())
    assert result["subset_source"] == f"--subset-file {listed}"
    assert result["subsets"][str(listed)]["labelled_images"] == 4


# --- figures -----------------------------------------------------------------------------------------------------

def test_tsne_classes_beyond_the_data_are_refused_before_reading_an_image(backbone, sets, no_work, capsys):
    argv = eval_command("tsne", backbone, "--data", sets["val"], "--classes", "5")
    assert run(evaluation.main, argv, capsys) == (2, [f"{EVAL} tsne: error: --classes 5: {sets['val']} has only 4 "
                                                      "classes"])
    argv = eval_command("tsne", backbone, "--data", sets["val"], "--classes", "many")
    assert run(evaluation.main, argv, capsys) == (2, [
        "python -m msf_fast.eval tsne: error: argument --classes: expected a number of classes or 'all', got 'many' "
        "(see --help)"])


def test_tsne_classes_all_shows_every_class(backbone, sets, tmp_path, capsys):
    argv = [*eval_command("tsne", backbone, "--data", sets["val"], "--classes", "all", "--per-class", "2", "--thumb",
                          "8"), "--out", str(tmp_path)]
    assert run(evaluation.main, argv, capsys) == (0, [])
    assert json.loads((tmp_path / "tsne.json").read_text())["classes"] == [0, 1, 2, 3]
    assert f"8 images of {sets['val']}: all 4 classes, the first 2 images" in (tmp_path / "report.md").read_text()


def test_neighbours_queries_from_other_classes_are_refused(backbone, sets, no_work, capsys):
    argv = eval_command("neighbours", backbone, "--data", sets["train"], "--queries-from", sets["missing"])
    queries, gallery = f"--queries-from {sets['missing']}", f"--data {sets['train']}"
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} neighbours: error: {queries} and {gallery} have different classes: class_3 only in {gallery}; "
        "their labels would not match"])


def test_neighbours_counts_beyond_the_data_are_refused_before_reading_an_image(backbone, sets, no_work, capsys):
    argv = eval_command("neighbours", backbone, "--data", sets["val"], "--k", "24")
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} neighbours: error: --k 24: the gallery {sets['val']} has only 24 images (a query is not its own "
        "neighbour)"])
    argv = eval_command("neighbours", backbone, "--data", sets["train"], "--queries-from", sets["val"],
                        "--queries", "25")
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} neighbours: error: --queries 25: {sets['val']} has only 24 images"])


def test_more_clusters_or_rows_than_possible_are_refused_before_reading_an_image(backbone, sets, no_work, capsys):
    for clusters in ("9", "8"):  # one image per cluster scores purity 1.0 whatever the features
        argv = eval_command("clusters", backbone, "--data", sets["val"], "--per-class", "2", "--clusters", clusters)
        assert run(evaluation.main, argv, capsys) == (2, [
            f"{EVAL} clusters: error: --clusters {clusters}: only 8 images are clustered (the first --per-class 2 of "
            f"each class of {sets['val']}); give at most 7 (with one image per cluster, purity is 1.0 whatever the "
            "features)"])
    argv = eval_command("clusters", backbone, "--data", sets["val"], "--clusters", "3", "--rows", "4")
    assert run(evaluation.main, argv, capsys) == (2, [
        f"{EVAL} clusters: error: --rows 4: only 3 clusters to show; give at most 3"])


def test_default_clusters_shrink_to_the_data_and_say_so(backbone, sets, tmp_path, capsys):
    # issue 21 item 11: the default made one cluster per image, purity 1.0 by construction
    argv = [*eval_command("clusters", backbone, "--data", sets["val"], "--per-class", "1", "--thumb", "8"),
            "--out", str(tmp_path)]
    code, lines = run(evaluation.main, argv, capsys)
    assert code == 0
    assert lines == [f"{EVAL} clusters: note: 2 clusters, half the 4 images clustered, two per cluster on average "
                     "(fewer than the default --clusters 100)"]
    assert "2 clusters (half the 4 images clustered, two per cluster on average)" in (tmp_path / "report.md").read_text()


# --- checkpoints that are none -----------------------------------------------------------------------------------

def fake_beton(path: Path) -> Path:
    """A file starting with an FFCV version-2 header: what write_beton writes, whatever its name."""
    header = np.zeros(1, dtype=[("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                                ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")])
    header["version"], header["num_fields"] = 2, 2
    path.write_bytes(header.tobytes() + b"\0" * 64)
    return path


@pytest.fixture
def not_checkpoints(backbone, tmp_path) -> dict[str, str]:
    """{path: what read_checkpoint says it is}."""
    beton, unnamed = fake_beton(tmp_path / "train.beton"), fake_beton(tmp_path / "store")
    text = tmp_path / "notes.pt"
    text.write_text("learning rate 0.05 was too high\n")
    truncated = tmp_path / "truncated.pt"
    whole = Path(backbone).read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    pickled = tmp_path / "features.pkl"
    pickled.write_bytes(__import__("pickle").dumps({"features": [1.0, 2.0]}, protocol=4))
    run_folder = tmp_path / "run"
    (run_folder / "checkpoints").mkdir(parents=True)
    shutil.copy(backbone, run_folder / "checkpoints" / "latest.pt")
    beton_words = ("an FFCV .beton (a dataset written by dataset_prep.write_beton), not a checkpoint; checkpoints "
                   "are .pt files such as runs/NAME/checkpoints/latest.pt")
    return {str(beton): beton_words, str(unnamed): beton_words,
            str(text): "a text file (starting 'learning rate 0.05 was too high'), not a checkpoint",
            str(truncated): f"a truncated or damaged torch file ({len(whole) // 2:,} bytes): copy or save it again",
            str(empty): "an empty file (0 bytes), not a checkpoint",
            str(pickled): "a Python pickle (protocol 4), not a torch checkpoint (torch.save writes a zip archive); not "
                          "loaded: unpickling runs its code",
            str(run_folder): f"a folder, not a checkpoint file (a run folder: give {run_folder}/checkpoints/latest.pt)",
            str(tmp_path / "missing.pt"): "no such file"}


def test_read_checkpoint_names_the_file_and_what_it_seems_to_be(not_checkpoints):
    for path, seems in not_checkpoints.items():
        with pytest.raises(NotACheckpoint) as error:
            read_checkpoint(path)
        assert str(error.value) == f"{path}: {seems}"
        assert isinstance(error.value, ValueError)


def test_eval_with_a_file_that_is_no_checkpoint(not_checkpoints, sets, tmp_path, capsys):
    out = str(tmp_path / "out")  # never made
    for path, seems in not_checkpoints.items():
        argv = eval_command("knn", path, "--train", sets["train"], "--val", sets["val"], "--out", out)
        assert run(evaluation.main, argv, capsys) == (2, [f"{EVAL} knn: error: {path}: {seems}"])
    # found before the data are listed: a wrong --train is not reached
    path, seems = next(iter(not_checkpoints.items()))
    argv = eval_command("tsne", path, "--data", "no/such/folder", "--out", out)
    assert run(evaluation.main, argv, capsys) == (2, [f"{EVAL} tsne: error: {path}: {seems}"])


# --- export ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory) -> str:
    from msf_fast.checkpoint import atomic_save, training_state
    torch.manual_seed(0)
    model = MSF("resnet18", bank_size=32, topk=5, small_input=True)
    path = tmp_path_factory.mktemp("run") / "latest.pt"
    atomic_save(training_state(model, None, None, 1, 3, 3, None), path)
    return str(path)


def test_export_follows_the_writers_conventions(training_checkpoint, backbone, not_checkpoints, tmp_path, capsys):
    out = tmp_path / "backbone.pth"
    assert run(export.main, [training_checkpoint, str(out)], capsys) == (0, [])
    assert run(export.main, [training_checkpoint, str(out)], capsys) == (2, [
        f"{EXPORT}: error: output '{out}' already exists (pass --overwrite to replace it)"])
    nested = tmp_path / "missing" / "backbone.pth"
    assert run(export.main, [training_checkpoint, str(nested)], capsys) == (2, [
        f"{EXPORT}: error: cannot write '{nested}': folder '{nested.parent}' does not exist"])
    assert not nested.parent.exists()  # not created
    afile = tmp_path / "notes.txt"
    afile.write_text("notes\n")
    for under in (afile / "backbone.pth", afile / "sub" / "backbone.pth"):  # not "a folder that does not exist"
        assert run(export.main, [training_checkpoint, str(under)], capsys) == (2, [
            f"{EXPORT}: error: cannot write '{under}': '{afile}' is a file, not a folder"])
    assert afile.read_text() == "notes\n"
    assert run(export.main, [training_checkpoint, str(tmp_path)], capsys) == (2, [
        f"{EXPORT}: error: output '{tmp_path}' is a folder; give a file name, e.g. {tmp_path / 'backbone.pth'}"])
    assert run(export.main, [backbone, str(tmp_path / "again.pth")], capsys) == (2, [
        f"{EXPORT}: error: {backbone}: already a torchvision backbone (as this command writes), not a training "
        "checkpoint; python -m msf_fast.eval and torchvision read it as it is"])
    assert run(export.main, [training_checkpoint, str(tmp_path / "x.pth"), "--num-classes", "-1"], capsys) == (2, [
        "python -m msf_fast.export: error: argument --num-classes: must be at least 0, got -1 (see --help)"])
    for path, seems in not_checkpoints.items():
        assert run(export.main, [path, str(tmp_path / "x.pth")], capsys) == (2, [f"{EXPORT}: error: {path}: {seems}"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pth") == ["backbone.pth"]


def test_export_exit_code_from_the_command_line(tmp_path):
    """A file that is plainly no checkpoint is told before torch loads (a stand-in torch fails the test)."""
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    (tmp_path / "torch.py").write_text("raise ImportError('torch was imported before the checks')\n")
    done = subprocess.run([sys.executable, "-m", "msf_fast.export", str(text), str(tmp_path / "out.pth")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{EXPORT}: error: {text}: a text file (starting 'not a checkpoint'), not a checkpoint"]


# --- a full disk (issue 21, item 4's siblings) -------------------------------------------------------------------

def test_a_full_disk_is_one_line_exit_1_for_eval_and_export(backbone, sets, tmp_path, capsys, monkeypatch):
    import errno
    import pathlib

    from msf_fast import checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        patched.setattr(pathlib.Path, "write_text", full)
        code, lines = run(evaluation.main, eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"],
                                                 "--k", "3", "--out", str(out)), capsys)
    assert code == 1 and lines[-1] == (f"{EVAL} knn: error: cannot write into {out}: No space left on device; nothing "
                                       "half-written")
    assert not (out / "knn.json").exists() and not [p for p in out.rglob("*") if "partial" in p.name]
    write_text = pathlib.Path.write_text

    def full_at_the_result(path, *args, **kwargs):  # the disk fills up as the JSON result is written
        return (full if ".knn.json." in path.name else write_text)(path, *args, **kwargs)
    with monkeypatch.context() as patched:
        patched.setattr(pathlib.Path, "write_text", full_at_the_result)
        code, lines = run(evaluation.main, eval_command("knn", backbone, "--train", sets["train"], "--val", sets["val"],
                                                 "--k", "3", "--out", str(out)), capsys)
    assert code == 1 and not (out / "report.md").exists()  # no report of a result that was not saved

    def torch_full(obj, handle):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1366")
    ours = tmp_path / "out" / "latest.pt"
    torch.save(checkpoint.training_state(MSF("resnet18", bank_size=32), None, None, 0, 0, 1, None), ours)
    monkeypatch.setattr(checkpoint.torch, "save", torch_full)
    code, lines = run(export.main, [str(ours), str(tmp_path / "b.pth")], capsys)
    assert code == 1 and lines == [f"{EXPORT}: error: cannot write {tmp_path / 'b.pth'}: No space left on device; "
                                   "nothing written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("command", ["knn", "linear", "semi", "tsne", "neighbours", "clusters"])
def test_every_option_with_a_default_shows_it_in_help(command, capsys):
    """eval's --help named no default (--epochs, --lr, --batch-size ...), where bench's name every one."""
    with pytest.raises(SystemExit):
        evaluation.main([command, "--help"])
    text = capsys.readouterr().out
    from msf_fast.eval.cli import build_parser
    _, commands = build_parser()
    for action in commands[command]._actions:
        if action.default not in (None, False, "") and action.option_strings != ["-h", "--help"]:
            assert action.help, f"{command} {action.option_strings[0]}: no help"
    if command in ("linear", "semi"):
        assert "probe training epochs (default: 40)" in text
    assert "(default: 256)" in text and "(default: auto)" in text  # --batch-size, --device


def test_a_checkpoint_in_torch_legacy_format_is_not_taken_for_a_plain_pickle(tmp_path):
    """torch.save's format before torch 1.6 is a pickle too (of a magic number first): it is loaded, not refused."""
    from msf_fast.checkpoint_files import not_a_checkpoint_file
    legacy = tmp_path / "legacy.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    assert not_a_checkpoint_file(legacy) is None
