"""train_imagenet.py's user mistakes: one line on stderr, exit code 2, nothing written (config files, options,
the run folder). Each test runs the entry point as a user would."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_imagenet import PROG as TRAIN
from msf_fast.eval import PROG as EVAL

ROOT = Path(__file__).resolve().parents[1]


def train(*options, cwd=ROOT) -> tuple[int, str]:
    done = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), *options], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stderr


def one_line(code: int, stderr: str) -> str:
    assert code == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


@pytest.fixture
def data(tmp_path):
    (tmp_path / "train" / "a_class").mkdir(parents=True)
    (tmp_path / "train" / "a_class" / "0.jpg").touch()  # the config checks for an image file, not its pixels
    return [f"--data.train_path={tmp_path / 'train'}", "--train.batch_size=8", "--msf.bank_size=32",
            f"--logging.folder={tmp_path / 'run'}"]


@pytest.mark.parametrize("text, expected", [
    ("train:\n  epochs: [1\n", "not valid YAML at line 3, column 1 (expected ',' or ']', but got '<stream end>')"),
    ("- train\n- epochs\n", "expected sections of parameters (e.g. 'train:' then '  epochs: 100'), found a list"),
    ("train: 3\n", "train: expected a section of parameters or a section.param key, found 3"),
])
def test_a_config_file_that_is_no_recipe_is_one_line(data, tmp_path, text, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert one_line(*train("--config-file", str(recipe), *data)) == \
        f"{TRAIN}: error: --config-file={recipe}: {expected}"
    assert not (tmp_path / "run").exists()


def test_a_binary_config_file_is_one_line(data, tmp_path):
    recipe = tmp_path / "model.pt"
    recipe.write_bytes(bytes(range(256)) * 4)
    assert one_line(*train("--config-file", str(recipe), *data)) == \
        f"{TRAIN}: error: --config-file={recipe}: not a text file (a YAML recipe is text)"


def test_flat_dotted_keys_are_accepted_and_typos_named(data, tmp_path):
    from msf_fast.config import ConfigError, load_config

    recipe = tmp_path / "flat.yaml"
    recipe.write_text("train.epochs: 3\nmsf:\n  topk: 2\n")
    cfg = load_config(["--config-file", str(recipe), *data])
    assert (cfg.train.epochs, cfg.msf.topk) == (3, 2)
    recipe.write_text("train.epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown parameter train.epoch \(did you mean train.epochs\?\)"):
        load_config(["--config-file", str(recipe), *data])


@pytest.mark.parametrize("option, expected", [
    ("--train.epoch=2", "unknown option --train.epoch (did you mean --train.epochs?)"),
    ("--data.val=x", "unknown option --data.val (did you mean --data.val_path?)"),
])
def test_options_are_never_abbreviated(data, option, expected):
    assert one_line(*train(*data, option)) == f"train_imagenet.py: error: {expected} (see --help)"


def test_bad_logging_folders_name_the_parameter(data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert one_line(*train(*data, f"--logging.folder={afile}")) == \
        f"{TRAIN}: error: logging.folder={afile}: a file, not a folder"
    assert one_line(*train(*data, f"--logging.folder={afile}/run")) == \
        f"{TRAIN}: error: logging.folder={afile}/run: a file on its path ({afile}), not a folder"


def config_error(argv) -> str:
    from msf_fast.config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config(argv)
    return str(refused.value)


def test_a_config_file_that_is_a_folder(data, tmp_path):
    assert config_error(["--config-file", str(tmp_path), *data]) == (
        f"--config-file={tmp_path}: a folder, not a YAML recipe (e.g. configs/rn50_200_epochs.yaml)")


@pytest.mark.parametrize("text, expected", [
    ("train:\n  epochs: 1\n  epochs: 3\n", "epochs is given twice (lines 2 and 3)"),
    ("train.epochs: 1\ntrain.epochs: 3\n", "train.epochs is given twice (lines 1 and 2)"),
    ("train.epochs: 1\ntrain:\n  epochs: 3\n", "train.epochs is given twice (as 'train.epochs:' and under 'train:')"),
])
def test_a_parameter_given_twice_in_a_recipe_is_refused(data, tmp_path, text, expected):
    """PyYAML keeps the last of two equal keys: the run silently used one of the two values."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert config_error(["--config-file", str(recipe), *data]) == f"{recipe}: {expected}"


@pytest.mark.parametrize("text, expected", [
    ("train:\n  epochs:\n", "train.epochs: no value"),  # the nested case, as it was
    ("epochs:\n", "epochs: no value, and no section (did you mean train.epochs?)"),
    ("momentum:\n", "momentum: no value, and no section (did you mean msf.momentum or optim.momentum?)"),
    ("train:\nepochs: 3\n", "train: no value (a section: indent its parameters under it, e.g. '  epochs: 100')"),
])
def test_a_top_level_key_without_a_value_reads_like_the_nested_case(data, tmp_path, text, expected):
    """A top-level key with nothing after it said "found None"."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert config_error(["--config-file", str(recipe), *data]) == f"{recipe}: {expected}"


def test_a_run_folder_inside_the_data_is_refused(tiny_imagefolder, tmp_path):
    """Its checkpoints, plots and reports would be listed as a class of images by this run's next epoch's loader,
    a resume or the k-NN monitor."""
    train, val = tiny_imagefolder / "train", tiny_imagefolder / "val"
    options = [f"--data.train_path={train}", f"--data.val_path={val}", "--train.batch_size=8", "--msf.bank_size=32"]
    for folder, name, path in ((train, "data.train_path", train), (train / "runs" / "msf", "data.train_path", train),
                               (val / "class_0" / "run", "data.val_path", val)):
        assert config_error([*options, f"--logging.folder={folder}"]) == (
            f"logging.folder={folder} is inside {name}={path}: the run would write its checkpoints and log among the "
            "images it reads; choose a folder outside the data")
    assert sorted(os.listdir(train)) == [f"class_{c}" for c in range(4)]
    assert not (val / "class_0" / "run").exists()


def test_a_run_folder_inside_the_folder_a_store_was_written_from_is_refused(tiny_imagefolder, tmp_path):
    """The trainer reads the store, but the run's folder became a class of the source folder's images: the
    evaluation on that folder then said 'different classes: run only in --train'."""
    pytest.importorskip("ffcv")
    from dataset_prep import write_beton
    source = tmp_path / "source"
    shutil.copytree(tiny_imagefolder / "train", source)
    store = tmp_path / "train.beton"
    assert write_beton.main([str(source), str(store), "--write-mode", "raw", "--no-progress", "--workers", "1",
                             "--max-resolution", "32"]) == 0
    folder = source / "run"
    assert config_error([f"--data.train_path={store}", "--train.batch_size=8", "--msf.bank_size=32",
                         f"--logging.folder={folder}"]) == (
        f"logging.folder={folder} is inside {os.path.realpath(source)}, the folder data.train_path={store} was "
        "written from: the run's folder would be listed there as a class of images (by the evaluation, by a new "
        "store); choose a folder outside the data")
    assert sorted(os.listdir(source)) == [f"class_{c}" for c in range(4)]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_a_folder_that_cannot_be_made_is_told_before_anything_else(tiny_imagefolder, capsys):
    """As root, os.access said /proc was writable: the precision and loader lines came first, then the lock's error."""
    import train_imagenet

    options = [f"--data.train_path={tiny_imagefolder / 'train'}", "--train.batch_size=8", "--msf.bank_size=32",
               "--model.arch=resnet18", "--data.resolution=32", "--data.workers=0", "--train.device=cpu",
               "--logging.folder=/proc/x"]
    assert train_imagenet.main(options) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.strip().splitlines()
    assert line.startswith(f"{TRAIN}: error: logging.folder=/proc/x: ")


def test_resume_and_overwrite_exclude_each_other(data):
    assert one_line(*train(*data, "--train.resume=auto", "--logging.overwrite=1")) == (
        f"{TRAIN}: error: logging.overwrite=1 starts over and train.resume=auto continues: choose one")


def test_a_run_folder_holding_a_run_is_refused(data, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "log.jsonl").write_text("")
    assert one_line(*train(*data)) == (
        f"{TRAIN}: error: logging.folder={tmp_path / 'run'} holds a run: continue it with --train.resume=auto, start "
        "over with --logging.overwrite=1 (deletes it), or choose another --logging.folder")


def test_a_file_given_to_resume_that_is_no_checkpoint(data, tmp_path, tiny_imagefolder):
    notes = tmp_path / "notes.txt"
    notes.write_text("lr 0.05 diverged\n")
    options = [f"--data.train_path={tiny_imagefolder / 'train'}", *data[1:], "--model.arch=resnet18",
               "--data.resolution=32", "--data.workers=0"]
    assert one_line(*train(*options, f"--train.resume={notes}")) == (
        f"{TRAIN}: error: train.resume={notes}: a text file (starting 'lr 0.05 diverged'), not a checkpoint (or "
        "'auto': the run folder's latest checkpoint)")


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_before_training_or_during_an_eval_is_one_line(data, monkeypatch, capsys):
    import train_imagenet
    from msf_fast import trainer
    from msf_fast.eval import cli, knn_command

    monkeypatch.setattr(trainer.Trainer, "__init__", interrupted)  # e.g. while ImageNet is being listed
    assert train_imagenet.main(data) == 130
    folder = data[-1].split("=", 1)[1]
    assert capsys.readouterr().err.strip().splitlines() == [f"{TRAIN}: interrupted while the run started; {folder} is "
                                                            "as it was"]

    def terminated(*args, **kwargs):  # a scheduler's SIGTERM while the run starts: it died without a word
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    monkeypatch.setattr(trainer.Trainer, "__init__", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert train_imagenet.main(data) == 143
    assert capsys.readouterr().err.strip().splitlines() == [f"{TRAIN}: interrupted while the run started; {folder} is "
                                                            "as it was"]
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(knn_command, "run_knn", interrupted)
    monkeypatch.setattr(cli, "path_problem", lambda args: None)  # the files are checked before the run: none here
    assert cli.main(["knn", "--ckpt", "x.pt", "--train", "a", "--val", "b"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [f"{EVAL} knn: interrupted"]
    monkeypatch.setattr(knn_command, "run_knn", terminated)  # a scheduler's SIGTERM: it died without a word
    assert cli.main(["knn", "--ckpt", "x.pt", "--train", "a", "--val", "b"]) == 143
    assert capsys.readouterr().err.strip().splitlines() == [f"{EVAL} knn: interrupted"]
    from msf_fast import export
    monkeypatch.setattr(export, "export", terminated)
    assert export.main(["x.pt", "y.pth"]) == 143
    assert capsys.readouterr().err.strip().splitlines() == ["python -m msf_fast.export: interrupted; nothing written"]
    assert signal.getsignal(signal.SIGTERM) is before


COMMANDS = {  # the program's name, as its messages start: its command line
    "train_imagenet.py": [str(ROOT / "train_imagenet.py")],
    "python -m msf_fast.demo": ["-m", "msf_fast.demo"],
    "python -m msf_fast.bench ema": ["-m", "msf_fast.bench", "ema"],
    # eval and export load torch after their checks of the options: given a file that may be a checkpoint
    # (TMP: the test's folder)
    "python -m msf_fast.eval": ["-m", "msf_fast.eval", "knn", "--ckpt", "TMP/checkpoint.pt", "--train", "TMP",
                                "--val", "TMP"],
    "python -m msf_fast.export": ["-m", "msf_fast.export", "TMP/checkpoint.pt", "TMP/backbone.pth"],
    "python -m dataset_prep.write_beton": ["-m", "dataset_prep.write_beton"],
    "python -m dataset_prep.write_tfrecord": ["-m", "dataset_prep.write_tfrecord"],
    "python -m dataset_prep.bench": ["-m", "dataset_prep.bench"],
    "python -m dataset_prep.synthetic_photos": ["-m", "dataset_prep.synthetic_photos"],
    # the benchmark children read their options before torch loads, as bench does
    "python -m msf_fast.bench.bank": ["-m", "msf_fast.bench.bank", "--variant", "chunked"],
    "python -m msf_fast.bench.loader": ["-m", "msf_fast.bench.loader", "--backend", "torch", "--data", "TMP"]}


@pytest.mark.parametrize("program", COMMANDS)
def test_ctrl_c_while_the_imports_load_is_one_line(program, tmp_path):
    """Ctrl-C in the seconds torch or numpy take to import: a fake torch and numpy that raise KeyboardInterrupt
    when imported stand for it, whichever the command loads first."""
    for name in ("torch", "numpy"):
        (tmp_path / f"{name}.py").write_text("raise KeyboardInterrupt\n")
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04")  # a torch file's first bytes
    command = [part.replace("TMP", str(tmp_path)) for part in COMMANDS[program]]
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    # export imports torch inside its own handling of a stop, which says what it left
    said = "interrupted; nothing written" if program == "python -m msf_fast.export" else "interrupted"
    assert done.stderr.strip().splitlines() == [f"{program}: {said}"]
    # ended by the signal, as an interrupted program does (130 in a shell), or by the command's own handler: 130
    assert done.returncode in (-signal.SIGINT, 130)
