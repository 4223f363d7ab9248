"""Long runs that survive: resume=auto, preemption signals, time-based checkpoints, the non-finite guard,
checkpoint rotation and integrity, failed saves; and the run folder that is never written over by another run.

Every run here is 2 epochs of 12 steps on the tiny ImageFolder with the deterministic torchvision loader, so a
continued run must end bit-identical to the uninterrupted reference."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from msf_fast.config import ConfigError, load_config
from msf_fast.errors import UserError
from msf_fast.stopping import RunStopped
from msf_fast.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 24  # 96 images / batch 8 = 12 steps per epoch, 2 epochs


def options(data, folder, *extra) -> list[str]:
    return [f"--data.train_path={data / 'train'}", "--data.backend=torch", "--model.arch=resnet18",
            "--model.hidden_dim=64", "--model.proj_dim=32", "--data.resolution=32", "--train.batch_size=8",
            "--msf.bank_size=32", "--train.epochs=2", "--data.workers=0", "--train.threads=1",
            f"--logging.folder={folder}", "--logging.progress=0", "--logging.log_every=1", "--eval.knn_final=0",
            *extra]


def trainer(data, folder, *extra) -> Trainer:
    return Trainer(load_config(options(data, folder, *extra)))


def train(data, folder, *extra, signal_at: int | None = None, signal_number=signal.SIGUSR1) -> Trainer:
    """A whole run; with `signal_at`, the process sends itself `signal_number` when that step's batch arrives."""
    run = trainer(data, folder, *extra)
    if signal_at is not None:
        iterate = run.loader.iterate

        def signalling(epoch, skip_batches=0):
            for step, batch in enumerate(iterate(epoch, skip_batches), start=epoch * 12 + skip_batches + 1):
                if step == signal_at:
                    os.kill(os.getpid(), signal_number)
                yield batch
        run.loader.iterate = signalling
    run.train()
    return run


def state_of(run: Trainer) -> dict:
    """Weights, momenta, and each completed epoch's logged loss and purity: a run resumed mid-epoch logged the mean
    of the steps after the resume only."""
    state = {f"model.{k}": v.clone() for k, v in run.model.state_dict().items()}
    for index, buffers in run.optimizer.state_dict()["state"].items():
        state[f"momentum.{index}"] = buffers["momentum_buffer"].clone()
    epochs = [r for r in records(run.folder) if r["event"] == "epoch" and r.get("complete")]
    state["epoch_means"] = torch.tensor([[r["epoch"], r["loss"], r["purity"]] for r in epochs], dtype=torch.float64)
    return state


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def records(folder) -> list[dict]:
    def refuse(constant):
        raise AssertionError(f"log.jsonl holds {constant}: not strict JSON")
    return [json.loads(line, parse_constant=refuse) for line in (Path(folder) / "log.jsonl").read_text().splitlines()]


def saved_step(path) -> int:
    return torch.load(path, weights_only=False)["step"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_imagefolder, tmp_path_factory):
    """The uninterrupted run every continued run must equal."""
    threads = torch.get_num_threads()
    run = train(tiny_imagefolder, tmp_path_factory.mktemp("reference"))
    torch.set_num_threads(threads)
    assert run.step == STEPS
    return state_of(run)


def test_a_preempted_run_continues_exactly_with_resume_auto(tiny_imagefolder, tmp_path, reference):
    with pytest.raises(RunStopped) as stopped:
        train(tiny_imagefolder, tmp_path, "--train.resume=auto", signal_at=7)
    assert stopped.value.exit_code == 128 + signal.SIGUSR1
    assert str(stopped.value).startswith("stopped by SIGUSR1 at step 7: the checkpoint")
    latest = tmp_path / "checkpoints" / "latest.pt"
    assert saved_step(latest) == 7  # the step it was in, finished and saved: not the epoch's start
    assert records(tmp_path)[-1] == {"event": "stopped", "step": 7, "reason": str(stopped.value),
                                     "exit_code": 128 + signal.SIGUSR1}
    again = train(tiny_imagefolder, tmp_path, "--train.resume=auto")  # the same command line, rerun
    assert again.step == STEPS
    assert_same_state(state_of(again), reference)
    steps = [r["step"] for r in records(tmp_path) if r["event"] == "step"]
    assert steps == list(range(1, STEPS + 1))  # one log across both processes


def test_ctrl_c_stops_at_the_step_with_a_checkpoint(tiny_imagefolder, tmp_path, capfd):
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; SIG_IGN in a pytest-xdist worker
    with pytest.raises(RunStopped) as stopped:
        train(tiny_imagefolder, tmp_path, signal_at=3, signal_number=signal.SIGINT)
    assert ("Ctrl-C: stopping after this step, with a checkpoint; Ctrl-C again stops at once, without it"
            in capfd.readouterr().err)  # said at once: the step and the save can take a while
    assert stopped.value.exit_code == 130 and str(stopped.value).startswith("stopped by SIGINT at step 3")
    assert saved_step(tmp_path / "checkpoints" / "latest.pt") == 3
    assert signal.getsignal(signal.SIGINT) is before  # the trainer's handlers are gone


def test_a_second_ctrl_c_before_the_first_step_says_nothing_was_kept(tiny_imagefolder, tmp_path, capsys,
                                                                     monkeypatch):
    """It said 'the last checkpoint is where it was' of a fresh run that had none (and kept nothing)."""
    import train_imagenet

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "train", interrupted)
    assert train_imagenet.main(options(tiny_imagefolder, tmp_path / "run")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"train_imagenet.py: interrupted before the first step; nothing was kept in {tmp_path / 'run'}")


def test_a_stop_after_the_last_step_finishes_the_run(tiny_imagefolder, tmp_path, capsys):
    """A stop at the last step said "continue with --train.resume=auto", which found a finished run with nothing
    to do and no end record; a stop while training.png was drawn left the finished run without it for good."""
    run = train(tiny_imagefolder, tmp_path, signal_at=STEPS)
    assert run.step == STEPS and records(tmp_path)[-1]["event"] == "end"
    assert "SIGUSR1 came at the last step: the run is finished" in capsys.readouterr().out
    plot, log = tmp_path / "training.png", tmp_path / "log.jsonl"
    assert plot.stat().st_size > 0
    for stale in ("missing", "older than the log"):  # a stop while it was drawn, or before it was brought up to date
        if stale == "missing":
            plot.unlink()
        else:
            os.utime(plot, ns=(log.stat().st_mtime_ns - 10**9,) * 2)
        again = train(tiny_imagefolder, tmp_path, "--train.resume=auto")
        assert again.step == STEPS and "is finished (step 24 of 24): nothing to do" in capsys.readouterr().out
        assert plot.stat().st_mtime_ns >= log.stat().st_mtime_ns and records(tmp_path)[-1]["event"] == "end"


def test_a_stop_after_the_final_checkpoint_leaves_an_ending_the_resume_completes(tiny_imagefolder, tmp_path,
                                                                                 capsys):
    """A second Ctrl-C right after the final checkpoint (a stop is held while one is written) left a run at its
    last step without its `end` record, which a resume called finished and never completed."""
    train(tiny_imagefolder, tmp_path)
    log = tmp_path / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "end"
    log.write_text("".join(lines[:-1]))  # the state that stop left: checkpoint at step 24, no end record
    os.utime(tmp_path / "training.png", ns=(log.stat().st_mtime_ns - 10**9,) * 2)
    capsys.readouterr()
    again = train(tiny_imagefolder, tmp_path, "--train.resume=auto")
    out = capsys.readouterr().out
    assert again.step == STEPS and "is finished (step 24 of 24)" in out
    assert "its end, which a stop kept from being logged, is logged now" in out
    assert records(tmp_path)[-1] == {"event": "end", "step": STEPS, "logged_on_resume": True}
    assert (tmp_path / "training.png").stat().st_mtime_ns >= log.stat().st_mtime_ns
    train(tiny_imagefolder, tmp_path, "--train.resume=auto")  # once only
    assert [r["event"] for r in records(tmp_path)].count("end") == 1
    assert "is logged now" not in capsys.readouterr().out


def test_a_stop_does_not_evaluate_the_partial_epoch(tiny_imagefolder, tmp_path, capsys):
    """The k-NN monitor of a partial epoch is a misleading point, and delays the checkpoint past a scheduler's
    grace period (minutes on ImageNet). Its console line says it is partial (it read as a finished epoch)."""
    with pytest.raises(RunStopped):
        train(tiny_imagefolder, tmp_path, f"--data.val_path={tiny_imagefolder / 'val'}", "--eval.knn_every=1",
              signal_at=15)
    epochs = [r for r in records(tmp_path) if r["event"] == "epoch"]
    assert [(r["epoch"], r["knn_top1"] is not None) for r in epochs] == [(0, True), (1, True), (2, False)]
    assert epochs[-1]["complete"] is False
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert ["partial" in line for line in lines] == [False, True] and lines[-1].endswith("partial, stopped at step 15)")


def test_a_resumed_run_reports_the_whole_run(tiny_imagefolder, tmp_path):
    """A run resumed mid-way returns every epoch's loss and k-NN, the random init's included, as its log has them:
    the demo resumed after Ctrl-C said 'k-NN was not evaluated' and wrote no report (its history began at the
    resume)."""
    knn = (f"--data.val_path={tiny_imagefolder / 'val'}", "--eval.knn_every=1")
    with pytest.raises(RunStopped):
        train(tiny_imagefolder, tmp_path, *knn, signal_at=15)  # in epoch 2 of 2
    result = trainer(tiny_imagefolder, tmp_path, *knn, "--train.resume=auto").train()
    assert sorted(result.knn_by_epoch) == [0, 1, 2] and sorted(result.loss_by_epoch) == [1, 2]
    logged = [r for r in records(tmp_path) if r["event"] == "epoch"]
    assert result.knn_by_epoch == {r["epoch"]: r["knn_top1"] for r in logged if r["knn_top1"] is not None}
    assert result.final_loss == logged[-1]["loss"]  # epoch 2 as the resumed session logged it


def test_resume_auto_in_an_empty_folder_starts_a_new_run(tiny_imagefolder, tmp_path, capsys):
    run = trainer(tiny_imagefolder, tmp_path / "new", "--train.resume=auto", "--train.max_steps=2")
    assert run.step == 0
    assert "train.resume=auto: no checkpoint in" in capsys.readouterr().out


@pytest.mark.parametrize("workers, group, stop", [(0, False, signal.SIGTERM), (1, True, signal.SIGTERM),
                                                 (1, True, signal.SIGINT)],
                         ids=["process", "process-group", "ctrl-c"])
def test_sigterm_ends_train_imagenet_soon_with_a_checkpoint(tiny_imagefolder, tmp_path, workers, group, stop):
    """A scheduler signals the whole process group on preemption (SLURM), and a terminal's Ctrl-C reaches the whole
    foreground group: the loader's workers must leave the stop to the trainer (a worker killed by SIGTERM was a
    traceback, exit 1, no checkpoint; each worker printed the trainer's Ctrl-C line again)."""
    folder = tmp_path / "run"
    command = [sys.executable, "train_imagenet.py",
               *options(tiny_imagefolder, folder, "--train.epochs=50", f"--data.workers={workers}")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=group)
    log = folder / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and '"event": "step"' in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group:
        os.killpg(process.pid, stop)
    else:
        process.send_signal(stop)
    written = log.read_text()
    written = written[:written.rfind("\n")].splitlines()  # without a line being written
    logged = max(json.loads(line)["step"] for line in written if '"event": "step"' in line)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + stop
    *notice, line = stderr.strip().splitlines()
    assert notice == ([] if stop == signal.SIGTERM else
                      ["Ctrl-C: stopping after this step, with a checkpoint; Ctrl-C again stops at once, without it"])
    step = saved_step(folder / "checkpoints" / "latest.pt")
    assert line.startswith(f"train_imagenet.py: stopped by {signal.Signals(stop).name} at step {step}: the checkpoint")
    assert logged <= step <= logged + 2  # soon: the step under way and the one whose record was not yet written
    assert records(folder)[-1]["event"] == "stopped"


def test_time_based_checkpoints_let_a_crashed_run_continue_mid_epoch(tiny_imagefolder, tmp_path, reference):
    crashed = trainer(tiny_imagefolder, tmp_path, "--logging.checkpoint_every=0", "--logging.checkpoint_minutes=1e-9")
    iterate = crashed.loader.iterate

    def crashing(epoch, skip_batches=0):
        for step, batch in enumerate(iterate(epoch, skip_batches), start=1):
            if epoch == 0 and step == 6:
                raise KeyboardInterrupt("the node went away")
            yield batch
    crashed.loader.iterate = crashing
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    assert saved_step(tmp_path / "checkpoints" / "latest.pt") == 5  # mid-epoch, by time
    continued = train(tiny_imagefolder, tmp_path, "--train.resume=auto")
    assert_same_state(state_of(continued), reference)


def test_no_checkpoint_by_time_is_saved_before_its_epochs_record(tiny_imagefolder, tmp_path, monkeypatch):
    """Saved by time at an epoch's last step, a checkpoint a crash then left behind resumed past an epoch the log
    never recorded (at the run's last step: a finished run without its last epoch)."""
    from msf_fast.run_checkpoints import RunCheckpoints
    save, ahead_of_the_log = RunCheckpoints.save, []

    def checked(self, step, state, snapshot_epoch=None):
        logged = {r["epoch"] for r in records(tmp_path) if r["event"] == "epoch"}
        if step and step % 12 == 0 and step // 12 not in logged:
            ahead_of_the_log.append(step)
        return save(self, step, state, snapshot_epoch)
    monkeypatch.setattr(RunCheckpoints, "save", checked)
    run = train(tiny_imagefolder, tmp_path, "--logging.checkpoint_every=0", "--logging.checkpoint_minutes=1e-9")
    assert run.step == STEPS and ahead_of_the_log == []


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_imagefolder, tmp_path):
    train(tiny_imagefolder, tmp_path, "--train.epochs=1")
    latest = tmp_path / "checkpoints" / "latest.pt"
    good = latest.read_bytes()
    with pytest.raises(RunStopped) as stopped:
        train(tiny_imagefolder, tmp_path, "--train.resume=auto", "--optim.lr=1e30")
    assert stopped.value.exit_code == 1
    message = str(stopped.value)
    assert message.startswith("non-finite loss (")
    assert 12 < int(re.search(r" at step (\d+):", message).group(1)) <= STEPS
    assert f"the last good checkpoint is {latest} (step 12)" in message and "--optim.lr (now 1e+30" in message
    assert latest.read_bytes() == good
    log = records(tmp_path)  # strict JSON, the bad losses as null
    assert any(r["event"] == "step" and r["loss"] is None for r in log) and log[-1]["event"] == "stopped"


def test_non_finite_weights_are_never_saved(tiny_imagefolder, tmp_path):
    with pytest.raises(RunStopped, match=r"^non-finite weights at step \d+: the run stopped without saving"):
        # no loss is checked before the time-based save that finds the weights ruined
        train(tiny_imagefolder, tmp_path, "--optim.lr=1e30", "--logging.log_every=1000",
              "--logging.checkpoint_minutes=1e-9")
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=False)["model"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path


def test_fp16_skipped_steps_do_not_stop_the_run(tiny_imagefolder, tmp_path, monkeypatch):
    scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: scaler(device, init_scale=2.0**60))
    run = train(tiny_imagefolder, tmp_path, "--train.amp=fp16", "--train.max_steps=3")
    assert run.step == 3 and run.scaler.get_scale() < 2.0**60  # it skipped overflowing steps, and went on


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tiny_imagefolder, tmp_path, capsys):
    train(tiny_imagefolder, tmp_path)
    latest, previous = tmp_path / "checkpoints" / "latest.pt", tmp_path / "checkpoints" / "previous.pt"
    assert (saved_step(latest), saved_step(previous)) == (24, 12)
    with open(latest, "r+b") as handle:
        handle.truncate(1000)
    capsys.readouterr()
    resumed = trainer(tiny_imagefolder, tmp_path, "--train.resume=auto", "--train.epochs=3")
    assert resumed.step == 12
    out = capsys.readouterr().out
    assert f"warning: {latest}: a truncated or damaged torch file" in out and f"resuming from {previous}" in out
    with pytest.raises(UserError, match=rf"^train.resume={latest}: a truncated or damaged torch file"):
        trainer(tiny_imagefolder, tmp_path, f"--train.resume={latest}")


def test_a_failed_save_stops_the_run_and_keeps_the_previous_checkpoint(tiny_imagefolder, tmp_path, monkeypatch):
    from msf_fast import checkpoint

    save = torch.save

    def disk_full_after_the_first_epoch(obj, handle):
        if obj["step"] > 12:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, handle)
    monkeypatch.setattr(checkpoint.torch, "save", disk_full_after_the_first_epoch)
    with pytest.raises(RunStopped) as stopped:
        train(tiny_imagefolder, tmp_path)
    latest = tmp_path / "checkpoints" / "latest.pt"
    assert stopped.value.exit_code == 1
    assert str(stopped.value) == (f"cannot write the checkpoint {latest}: No space left on device; {latest} (step 12) "
                                  "is intact")
    assert saved_step(latest) == 12 and not [p for p in latest.parent.iterdir() if "partial" in p.name]


# --- the run folder (issue: never a clobbered run) -----------------------------------------------------------

def test_a_new_run_never_writes_over_a_run(tiny_imagefolder, tmp_path):
    train(tiny_imagefolder, tmp_path, "--train.max_steps=3", "--logging.snapshot_every=1")
    (tmp_path / "report.md").write_text("an earlier evaluation")
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    with pytest.raises(ConfigError) as refused:
        trainer(tiny_imagefolder, tmp_path)
    assert str(refused.value) == (f"logging.folder={tmp_path} holds a run: continue it with --train.resume=auto, "
                                  "start over with --logging.overwrite=1 (deletes it), or choose another "
                                  "--logging.folder")
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before
    fresh = trainer(tiny_imagefolder, tmp_path, "--logging.overwrite=1", "--train.max_steps=1")
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "checkpoints").exists()
    fresh.train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.pt"]


def test_resuming_a_finished_run_changes_nothing(tiny_imagefolder, tmp_path, capsys):
    first = trainer(tiny_imagefolder, tmp_path / "a", "--train.max_steps=2").train()
    latest = tmp_path / "a" / "checkpoints" / "latest.pt"
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "a").rglob("*")}
    capsys.readouterr()
    again = trainer(tiny_imagefolder, tmp_path / "a", "--train.resume=auto", "--train.max_steps=2")
    summary = again.train().summary()
    out = capsys.readouterr().out
    assert "is finished (step 2 of 2): nothing to do" in out and "resuming from" not in out  # it said both
    # the summary printed is the run's, read from its log: it said final_loss null, as if nothing had been trained
    assert first.final_loss is not None and (summary["steps"], summary["final_loss"]) == (2, first.final_loss)
    elsewhere = trainer(tiny_imagefolder, tmp_path / "b", f"--train.resume={latest}", "--train.max_steps=2")
    elsewhere.train()
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "a").rglob("*")} == before
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("change, message", [
    ("--model.arch=resnet34", "it holds model.arch=resnet18, this run has model.arch=resnet34 (another model)"),
    ("--msf.bank_size=64", "it holds msf.bank_size=32, this run has msf.bank_size=64 (another model)"),
    ("--model.proj_dim=16", "it holds model.proj_dim=32, this run has model.proj_dim=16 (another model)"),
])
def test_a_resume_into_another_model_names_both_values(tiny_imagefolder, tmp_path, change, message):
    train(tiny_imagefolder, tmp_path / "a", "--train.max_steps=1")
    latest = tmp_path / "a" / "checkpoints" / "latest.pt"
    with pytest.raises(UserError) as refused:
        trainer(tiny_imagefolder, tmp_path / "b", f"--train.resume={latest}", change)
    assert str(refused.value) == f"train.resume={latest}: {message}"


def test_a_resume_on_other_data_is_refused(tiny_imagefolder, tmp_path):
    train(tiny_imagefolder, tmp_path / "a", "--train.max_steps=1")
    latest = tmp_path / "a" / "checkpoints" / "latest.pt"
    with pytest.raises(UserError) as refused:
        Trainer(load_config([*options(tiny_imagefolder, tmp_path / "b", f"--train.resume={latest}"),
                             f"--data.train_path={tiny_imagefolder / 'val'}"]))
    assert "it was trained on an ImageFolder of 96 images in 4 classes, this run reads an ImageFolder of 24 " \
           "images in 4 classes (other data)" in str(refused.value)


GPU_SHORTAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which "
                "1.00 GiB is free. Including non-PyTorch memory, this process has 78.14 GiB memory in use.")


@pytest.mark.parametrize("failing_step, kept", [
    (None, "nothing was written in {run}"),  # while the trainer is built (the model and the bank moved to the GPU)
    (0, "nothing was kept in {run}"),
    (14, "the last checkpoint written is kept (--train.resume=auto continues it with the same settings)"),
])
def test_out_of_memory_is_one_line_naming_the_batch_and_the_resolution(tiny_imagefolder, tmp_path, capsys,
                                                                         monkeypatch, failing_step, kept):
    """A batch too large for the GPU, the commonest first mistake, ended in torch's traceback of the step."""
    import train_imagenet
    train_step = Trainer._train_step

    def short_of_memory(self, *batch):
        if self.step == failing_step:
            raise torch.OutOfMemoryError(GPU_SHORTAGE)
        return train_step(self, *batch)
    monkeypatch.setattr(Trainer, "_train_step", short_of_memory)
    if failing_step is None:
        def building(self):
            raise torch.OutOfMemoryError(GPU_SHORTAGE)
        monkeypatch.setattr(Trainer, "create_device", building)
    run = tmp_path / "run"
    assert train_imagenet.main(options(tiny_imagefolder, run)) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train_imagenet.py: error: out of memory on the GPU: 2.00 GiB asked, 1.00 GiB free of 79.15 GiB, at "
        "train.batch_size=8 per process, data.resolution=32 and msf.bank_size=32: lower one of them in a new run; "
        f"{kept.format(run=run)}")
    assert (run / "checkpoints" / "latest.pt").exists() == bool(failing_step)


def test_other_runtime_errors_keep_their_traceback(tiny_imagefolder, tmp_path, monkeypatch):
    import train_imagenet

    def broken(self):
        raise RuntimeError("a bug")
    monkeypatch.setattr(Trainer, "train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        train_imagenet.main(options(tiny_imagefolder, tmp_path / "run"))
