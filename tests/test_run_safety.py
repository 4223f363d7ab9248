"""No run is damaged by a plausible mistake: what a resume refuses, notes and honours; one run per folder; a full
disk; a batch BatchNorm cannot train on; a run that never stepped leaves its folder free; the one-line errors of
a bad output folder, a bench option and a YAML key without a value.

Runs here are ResNet-18 at 32 px on the tiny ImageFolder (96 training images), as in test_long_runs."""
from __future__ import annotations

import builtins
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_imagenet
from msf_fast import runlog
from msf_fast.config import ConfigError, load_config
from msf_fast.errors import UserError
from msf_fast.resume_rules import ResumeRefused, RunIdentity, check_resume
from msf_fast.schedule import learning_rate, scaled_lr
from msf_fast.trainer import Trainer
from tests.test_long_runs import options, records, saved_step, train, trainer
from train_imagenet import PROG as TRAIN

ROOT = Path(__file__).resolve().parents[1]


def files_of(folder: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.name != ".lock"}


# --- resume identity ---------------------------------------------------------------------------------------------

def test_a_resume_with_another_batch_is_refused_even_with_the_same_steps_per_epoch(tiny_imagefolder, tmp_path,
                                                                                    capsys):
    """96 images make 2 steps per epoch at batch 40 and at batch 48: the old check let this through, and the bank
    pointer then broke the run at the next resume. The refusal is all it says (the precision line and the loader's
    note came first)."""
    train(tiny_imagefolder, tmp_path, "--train.batch_size=40", "--msf.bank_size=240", "--train.max_steps=1")
    before = files_of(tmp_path)
    capsys.readouterr()
    with pytest.raises(UserError) as refused:
        trainer(tiny_imagefolder, tmp_path, "--train.batch_size=48", "--msf.bank_size=240", "--train.epochs=2",
                "--train.resume=auto")
    latest = tmp_path / "checkpoints" / "latest.pt"
    assert str(refused.value) == (
        f"train.resume=auto: {latest}: it was saved with a global batch of 40 (train.batch_size=40 x 1 process), this "
        "run has 48 (train.batch_size=48 x 1 process): resume with --train.batch_size=40")
    assert files_of(tmp_path) == before
    assert capsys.readouterr() == ("", "")


def test_a_run_tells_its_precision_and_loader_when_it_starts(tiny_imagefolder, tmp_path, capsys):
    run = trainer(tiny_imagefolder, tmp_path, "--data.backend=auto", "--train.max_steps=1")
    assert capsys.readouterr() == ("", "")  # nothing yet: a resume refused here would have been its one line
    run.train()
    precision, loader = capsys.readouterr().out.splitlines()[:2]
    assert precision.startswith("precision: ") and precision.endswith(", 1 torch thread")
    assert loader.startswith(("note: torchvision loader for the ImageFolder", "note: FFCV is not installed"))


MODEL_ARGS = {"arch": "resnet18", "small_input": False, "hidden_dim": 64, "proj_dim": 32, "bank_size": 32}


def identity(config: dict, world_size: int = 1, precision: str = "fp32") -> RunIdentity:
    return RunIdentity(model_args=MODEL_ARGS, data={"format": "torch", "classes": ["a"], "samples": 96},
                       steps_per_epoch=12, world_size=world_size, config=config, precision=precision)


def saved_state(config: dict, world_size: int | None = 1, precision: str = "fp32") -> dict:
    state = {"model_args": MODEL_ARGS, "data": {"format": "torch", "classes": ["a"], "samples": 96},
             "steps_per_epoch": 12, "config": config, "precision": precision}
    if world_size is not None:
        state["world_size"] = world_size
    return state


def settings(**changes) -> dict:
    config = {"train": {"batch_size": 8, "seed": 0, "epochs": 2}, "msf": {"topk": 5, "momentum": 0.99,
              "bank_dtype": "auto"}, "optim": {"lr": 0.05, "weight_decay": 1e-4, "momentum": 0.9, "schedule": "cosine"},
              "data": {"recipe": "w/s", "resolution": 32, "min_resolution": 0, "start_ramp": 0, "end_ramp": 0,
                       "train_path": "/data/train"}}
    for name, value in changes.items():
        section, parameter = name.split("__")
        config[section][parameter] = value
    return config


def test_another_split_of_the_same_global_batch_is_refused_with_the_processes_named():
    with pytest.raises(ResumeRefused) as refused:
        check_resume(saved_state(settings(train__batch_size=16), world_size=1), identity(settings(), world_size=2))
    assert str(refused.value) == ("it was saved with a global batch of 16 (train.batch_size=16 x 1 process), this "
                                  "run has 16 (train.batch_size=8 x 2 processes): resume with --train.batch_size=16 "
                                  "on 1 process")


@pytest.mark.parametrize("name, value, what", [
    ("train__seed", 3, "the data order and crops"), ("data__recipe", "s/s", "the augmentations"),
    ("data__resolution", 64, "the resolution schedule"), ("msf__topk", 1, "the method"),
    ("optim__schedule", "constant", "the learning-rate schedule")])
def test_settings_that_make_another_run_are_refused(name, value, what):
    parameter = name.replace("__", ".")
    with pytest.raises(ResumeRefused) as refused:
        check_resume(saved_state(settings()), identity(settings(**{name: value})))
    before = settings()[name.split("__")[0]][name.split("__")[1]]
    assert str(refused.value) == (f"it was trained with {parameter}={before}, this run has {parameter}={value} "
                                  f"({what}): resume with --{parameter}={before}")


def test_lr_precision_and_a_moved_data_path_are_allowed_with_a_note_each():
    notes = check_resume(saved_state(settings(), precision="bf16"),
                         identity(settings(optim__lr=0.01, data__train_path="/mnt/train"), precision="fp32"))
    assert notes == [
        "note: optim.lr: 0.05 -> 0.01",
        "note: precision: the checkpoint was trained in bf16, this run continues in fp32 (not step for step the same "
        "run)",
        "note: data.train_path: /mnt/train (the checkpoint's run read /data/train; same data: an ImageFolder of 96 "
        "images in 1 classes)"]
    assert check_resume(saved_state(settings()), identity(settings(train__epochs=9))) == []  # epochs: honoured


def test_a_beton_read_in_another_order_is_refused():
    """data.in_memory=auto resolves by the machine's memory: a resume elsewhere could change the order mid-epoch."""
    state = saved_state(settings())
    state["data"] = {**state["data"], "in_memory": False}
    run = identity(settings())
    run.data = {**run.data, "in_memory": True}
    with pytest.raises(ResumeRefused) as refused:
        check_resume(state, run)
    assert str(refused.value) == ("it read its .beton in the page-aware order without the cache (data.in_memory=0), "
                                  "this run would read through the page cache in RANDOM order: another order of "
                                  "samples; resume with --data.in_memory=0")


def test_an_older_checkpoint_without_settings_names_the_steps_and_the_batch_to_change():
    legacy = {**saved_state(None, world_size=None), "steps_per_epoch": 6}
    with pytest.raises(ResumeRefused, match=r"^it was saved with 6 steps per epoch, this run has 12 \(another batch "
                                            r"size or number of processes\)$"):
        check_resume(legacy, identity(settings()))


def test_more_epochs_on_resume_continue_the_schedule_of_the_new_total_with_a_note(tiny_imagefolder, tmp_path,
                                                                                   capsys):
    train(tiny_imagefolder, tmp_path, "--train.epochs=1", "--train.max_steps=1")  # 12 steps per epoch
    capsys.readouterr()
    train(tiny_imagefolder, tmp_path, "--train.epochs=2", "--train.resume=auto", "--train.max_steps=3")
    base = scaled_lr(0.05, 8)
    new, old = learning_rate(base, "cosine", 1, 12, 2), learning_rate(base, "cosine", 1, 12, 1)
    assert (f"note: train.epochs 1 -> 2: the cosine schedule now spans 2 epochs; the lr at step 1 is {new:.4g} "
            f"({old:.4g} under 1 epoch)") in capsys.readouterr().out
    logged = {r["step"]: r["lr"] for r in records(tmp_path) if r["event"] == "step"}
    assert logged[2] == pytest.approx(new) and logged[3] == pytest.approx(learning_rate(base, "cosine", 2, 12, 2))


def test_fewer_epochs_than_trained_say_the_run_is_past_their_end(tiny_imagefolder, tmp_path, capsys):
    train(tiny_imagefolder, tmp_path, "--train.epochs=2", "--train.max_steps=14")  # 12 steps per epoch
    capsys.readouterr()
    train(tiny_imagefolder, tmp_path, "--train.epochs=1", "--train.resume=auto")
    out = capsys.readouterr().out
    assert "note: train.epochs" not in out  # no lr of a step past the schedule's end
    assert (f"the run in {tmp_path} is finished (step 14 of 12; it is past the end of this schedule "
            "(train.epochs=1)): nothing to do") in out


# --- one run per folder --------------------------------------------------------------------------------------------

HOLD_LOCK = ("import sys, time; from msf_fast.run_lock import RunFolderLock; RunFolderLock(sys.argv[1]).acquire(); "
             "print('locked', flush=True); time.sleep(600)")


def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_holder_frees_it(tiny_imagefolder, tmp_path,
                                                                                  capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = train_imagenet.main(options(tiny_imagefolder, tmp_path, "--train.max_steps=1"))
        error = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in error
        assert error.startswith(f"{TRAIN}: error: logging.folder={tmp_path} is in use by another run "
                                f"(PID {holder.pid} on ")
        assert error.endswith("): wait for it to end, or choose another --logging.folder")
        assert not (tmp_path / "log.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert train_imagenet.main(options(tiny_imagefolder, tmp_path, "--train.max_steps=1")) == 0


def test_a_run_written_after_the_config_was_checked_is_refused_not_deleted(tiny_imagefolder, tmp_path):
    """Two runs started at once: both passed load_config's check; the later one must not delete the other's."""
    late = load_config(options(tiny_imagefolder, tmp_path, "--train.max_steps=1"))
    train(tiny_imagefolder, tmp_path, "--train.max_steps=1")
    before = files_of(tmp_path)
    with pytest.raises(UserError, match=rf"^logging.folder={tmp_path} holds a run: continue it with"):
        Trainer(late)
    assert files_of(tmp_path) == before and saved_step(tmp_path / "checkpoints" / "latest.pt") == 1


def test_overwrite_deletes_only_what_a_run_writes(tiny_imagefolder, tmp_path):
    """A model the user keeps in RUN/checkpoints is no run, and logging.overwrite leaves it."""
    kept = tmp_path / "checkpoints" / "my_other_model.pth"
    kept.parent.mkdir()
    kept.write_bytes(b"the user's model")
    load_config(options(tiny_imagefolder, tmp_path))  # no run there: no refusal
    train(tiny_imagefolder, tmp_path, "--train.max_steps=1", "--logging.snapshot_every=1")
    assert {p.name for p in kept.parent.iterdir()} >= {"my_other_model.pth", "epoch_0000.pt", "latest.pt"}
    with pytest.raises(ConfigError, match="holds a run"):
        load_config(options(tiny_imagefolder, tmp_path))
    trainer(tiny_imagefolder, tmp_path, "--logging.overwrite=1", "--train.max_steps=1").release_folder()
    assert [p.name for p in kept.parent.iterdir()] == ["my_other_model.pth"]
    assert kept.read_bytes() == b"the user's model"
    assert [r["event"] for r in records(tmp_path)] == ["setup"]  # the old run's log went too


def test_a_resume_from_a_run_folder_names_its_checkpoint(tiny_imagefolder, tmp_path):
    train(tiny_imagefolder, tmp_path / "run", "--train.max_steps=1")
    with pytest.raises(ConfigError, match=rf"^train.resume={tmp_path / 'run'}: a folder, not a checkpoint file \(a run "
                                          rf"folder: give {tmp_path / 'run' / 'checkpoints' / 'latest.pt'}\)"):
        load_config(options(tiny_imagefolder, tmp_path / "branch", f"--train.resume={tmp_path / 'run'}"))


def test_a_checkpoint_resumed_into_a_folder_holding_another_run_is_refused(tiny_imagefolder, tmp_path):
    """--train.resume=PATH into a folder with another run would replace that run's checkpoints and extend its log."""
    first, second = tmp_path / "first", tmp_path / "second"
    train(tiny_imagefolder, first, "--train.max_steps=1")
    train(tiny_imagefolder, second, "--train.max_steps=2")
    before = files_of(second)
    other = first / "checkpoints" / "latest.pt"
    with pytest.raises(ConfigError, match=rf"^train.resume={other}: logging.folder={second} holds another run, "
                                          "which resuming there would overwrite: resume into an empty"):
        load_config(options(tiny_imagefolder, second, f"--train.resume={other}"))
    late = load_config(options(tiny_imagefolder, tmp_path / "third", f"--train.resume={other}"))
    train(tiny_imagefolder, tmp_path / "third", "--train.max_steps=1")  # written since the config was checked
    with pytest.raises(UserError, match=r"holds another run, which resuming there would overwrite"):
        Trainer(late)
    assert files_of(second) == before
    own = trainer(tiny_imagefolder, second, f"--train.resume={second / 'checkpoints' / 'latest.pt'}")
    assert own.step == 2  # its own checkpoint, named by path, still resumes
    own.release_folder()
    branched = trainer(tiny_imagefolder, tmp_path / "branch", f"--train.resume={other}")
    assert branched.step == 1  # and a checkpoint still starts a branch in an empty folder
    branched.release_folder()


# --- failures that must be one line --------------------------------------------------------------------------------

def test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_previous_one(tiny_imagefolder, tmp_path,
                                                                                 monkeypatch, capsys):
    """torch.save reports a full disk as RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")."""
    from collections import namedtuple

    from msf_fast import checkpoint, run_checkpoints
    save = torch.save

    def full_after_step_0(obj, handle):
        if obj["step"] > 0:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1366")
        save(obj, handle)
    monkeypatch.setattr(checkpoint.torch, "save", full_after_step_0)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_checkpoints.shutil, "disk_usage", lambda path: usage(2**30, 2**30, 0))
    code = train_imagenet.main(options(tiny_imagefolder, tmp_path, "--logging.snapshot_every=1",
                                       "--train.max_steps=1"))  # saves at step 0, then fails at step 1
    latest = tmp_path / "checkpoints" / "latest.pt"
    error = capsys.readouterr().err.strip()
    assert code == 1 and error == (
        f"{TRAIN}: cannot write the checkpoint {latest}: No space left on device (0 MiB free; torch.save: [enforce "
        f"fail at inline_container.cc:672] . unexpected pos 1472 vs 1366); {latest} (step 0) is intact")
    assert saved_step(latest) == 0
    assert [r["exit_code"] for r in records(tmp_path) if r["event"] == "stopped"] == [1]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (writes fail with ENOSPC)")
def test_a_log_on_a_full_disk_is_one_line_exit_1(tiny_imagefolder, tmp_path, monkeypatch, capsys):
    def full_disk_open(path, mode="r", *args, **kwargs):
        return builtins.open("/dev/full", mode, *args, **kwargs)
    monkeypatch.setattr(runlog, "open", full_disk_open, raising=False)
    code = train_imagenet.main(options(tiny_imagefolder, tmp_path, "--train.max_steps=1"))
    error = capsys.readouterr().err.strip()
    assert code == 1 and error == f"{TRAIN}: cannot write the log {tmp_path / 'log.jsonl'}: No space left on device"


def test_batch_size_1_is_a_config_error(tiny_imagefolder, tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_config(options(tiny_imagefolder, tmp_path, "--train.batch_size=1", "--msf.bank_size=8"))
    assert str(refused.value) == ("train.batch_size=1: BatchNorm needs at least 2 images per process and step (the "
                                  "batch statistics of one image are undefined)")
    assert not tmp_path.joinpath("log.jsonl").exists()


def test_a_run_that_fails_before_its_first_step_leaves_the_folder_free(tiny_imagefolder, tmp_path, monkeypatch):
    from msf_fast import trainer as trainer_module

    def broken_step(*args, **kwargs):
        raise RuntimeError("a failure inside the first step")
    monkeypatch.setattr(trainer_module, "train_step", broken_step)
    with pytest.raises(RuntimeError, match="a failure inside the first step"):
        train(tiny_imagefolder, tmp_path, "--logging.snapshot_every=1")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    load_config(options(tiny_imagefolder, tmp_path))  # the same command is accepted again


def test_a_run_refused_after_taking_its_folder_leaves_no_trace(tiny_imagefolder, tmp_path, monkeypatch):
    from msf_fast import trainer as trainer_module

    def refused(*args, **kwargs):
        raise ValueError("refused late")
    monkeypatch.setattr(trainer_module.KnnMonitor, "from_config", refused)
    with pytest.raises(UserError, match="refused late"):
        trainer(tiny_imagefolder, tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone, .lock included
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match="refused late"):
        trainer(tiny_imagefolder, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_lock_discarded_while_another_run_opened_it_is_not_shared(tmp_path):
    from dataset_prep.staging import hold_lock_file
    from msf_fast.run_lock import RunFolderLock
    first, second = RunFolderLock(tmp_path / "run").acquire(), RunFolderLock(tmp_path / "run")
    opened = second._open()  # the second run opened .lock, and waits for the first
    first.discard()
    fcntl.flock(opened.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the lock of a file no longer there...
    fcntl.flock(opened.fileno(), fcntl.LOCK_UN)
    opens = [opened]
    handle = hold_lock_file(str(second.path), lambda: opens.pop() if opens else second._open(), "second")
    assert not opens and opened.closed  # ...which acquire sees, and it locks the new one instead
    assert os.stat(second.path).st_ino == os.fstat(handle.fileno()).st_ino
    handle.close()
    second.acquire()
    assert os.stat(second.path).st_ino == os.fstat(second._file.fileno()).st_ino
    second.release()


def test_an_output_folder_that_cannot_be_created_is_one_line(tiny_imagefolder, capsys):
    code = train_imagenet.main(options(tiny_imagefolder, Path("/proc/msf-fast-run")))
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and "logging.folder=/proc/msf-fast-run" in error


def test_bench_bank_names_a_topk_beyond_the_bank(capsys):
    from msf_fast.bench.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["bank", "--topk", "100", "--bank-size", "64"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("python -m msf_fast.bench bank: error: --topk 100: must not exceed "
                                               "--bank-size 64 (see --help)")


@pytest.mark.parametrize("text", ["train:\n  epochs:\n", "train.epochs:\n"])
def test_a_yaml_key_without_a_value_is_refused(tmp_path, text):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{recipe}: train.epochs: no value$"):
        load_config([f"--config-file={recipe}"], check_data=False)


def test_resume_auto_after_a_run_that_wrote_no_checkpoint_starts_it_again(tiny_imagefolder, tmp_path, capsys):
    """A run killed before its first checkpoint leaves only its log: the same command with resume=auto restarts."""
    train(tiny_imagefolder, tmp_path, "--train.max_steps=1", "--logging.checkpoint_every=0")
    (tmp_path / "checkpoints" / "latest.pt").unlink()  # as if killed (-9) before the end's checkpoint
    (tmp_path / "checkpoints").rmdir()
    run = trainer(tiny_imagefolder, tmp_path, "--train.resume=auto", "--train.max_steps=1")
    assert run.step == 0 and [r["event"] for r in records(tmp_path)] == ["setup"]  # the old log replaced


def test_the_trainer_help_prints(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_config(["--help"])
    assert exit_.value.code == 0 and "data.in_memory" in capsys.readouterr().out
