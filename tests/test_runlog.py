"""Step records read device scalars without stalling: at once on the CPU, one log interval later on CUDA."""
import json

import pytest
import torch

from msf_fast.runlog import DeferredScalars


def test_cpu_records_complete_at_once():
    scalars = DeferredScalars(torch.device("cpu"))
    record = scalars.stage({"step": 10}, loss=torch.tensor(0.5), purity=torch.tensor(0.25))
    assert record == {"step": 10, "loss": 0.5, "purity": 0.25}
    assert scalars.flush() is None


@pytest.mark.cuda
def test_cuda_records_arrive_one_interval_later():
    scalars = DeferredScalars(torch.device("cuda"))
    assert scalars.stage({"step": 10}, loss=torch.tensor(0.5, device="cuda")) is None
    assert scalars.stage({"step": 20}, loss=torch.tensor(0.75, device="cuda")) == {"step": 10, "loss": 0.5}
    assert scalars.flush() == {"step": 20, "loss": 0.75} and scalars.flush() is None


def test_training_figure_has_whole_epochs_and_a_legend_below_the_curves():
    from msf_fast.runlog import training_figure

    records = [{"epoch": 0, "loss": None, "knn_top1": 0.3}] + [
        {"epoch": e, "loss": 0.8 - 0.1 * e, "knn_top1": 0.3 + 0.1 * e if e % 2 == 0 else None} for e in (1, 2, 3)]
    figure = training_figure(records)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(figure).draw()
    loss_axes = figure.axes[0]
    ticks = [tick for tick in loss_axes.get_xticks() if loss_axes.get_xlim()[0] <= tick <= loss_axes.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    [legend] = figure.legends
    renderer = figure.canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 <= loss_axes.get_window_extent(renderer).y0  # nothing covered
    assert [text.get_text() for text in legend.get_texts()] == ["MSF loss", "k-NN top-1", "k-NN of the random init"]


def test_log_is_strict_json_and_tensorboard_gets_the_scalars(tmp_path):
    import json
    import math

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from msf_fast.runlog import JsonlLog

    log = JsonlLog(tmp_path / "log.jsonl", tensorboard=True)
    log.write(event="step", step=10, loss=0.5, lr=0.1, purity=math.nan)
    log.write(event="epoch", step=20, epoch=1, loss=math.inf, knn_top1=0.25, complete=True)
    log.write(event="loader", backend="ffcv", compile_seconds=3.0)
    log.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["purity"] is None and json.loads(lines[1])["loss"] is None
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"step/loss", "step/lr", "epoch/knn_top1", "epoch/epoch"} <= set(scalars)
    assert [(e.step, e.value) for e in events.Scalars("step/loss")] == [(10, 0.5)]
    assert not any(tag.startswith("loader/") for tag in scalars) and "epoch/complete" not in scalars


def test_tensorboard_without_the_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from msf_fast.config import ConfigError, load_config

    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "0.jpg").touch()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logging.tensorboard=1 needs the tensorboard package: pip install"):
        load_config([f"--data.train_path={tmp_path / 'train'}", "--logging.tensorboard=1",
                     f"--logging.folder={tmp_path / 'run'}"])


def test_a_record_cut_short_is_dropped_before_the_log_continues(tmp_path, capsys):
    from msf_fast.runlog import JsonlLog, plot_run, read_jsonl
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path)
    log.write(event="epoch", epoch=1, step=2, loss=0.5)
    log.close()
    with open(path, "a") as handle:
        handle.write('{"event": "step", "epo')  # the node was lost mid-write
    assert [r["epoch"] for r in read_jsonl(path)] == [1]  # readers skip it
    plot_run(path, tmp_path / "training.png")
    log = JsonlLog(path, append=True)
    log.write(event="epoch", epoch=2, step=4, loss=0.4)
    log.close()
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]
    assert "ended in a record cut short (22 bytes, a write interrupted): dropped it" in capsys.readouterr().err


def test_the_training_bar_in_a_log_file_is_not_redrawn_by_every_record(tiny_imagefolder, tmp_path):
    """stderr to a pipe (a batch job's log): the bar's first and last frames, not a redraw per logged step (its
    figures were set with a redraw, log_every steps apart, whatever the bar's interval)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_long_runs import options
    done = subprocess.run([sys.executable, "train_imagenet.py", *options(tiny_imagefolder, tmp_path / "run"),
                           "--logging.progress=1", "--logging.log_every=1", "--train.max_steps=8"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
                          env={key: value for key, value in os.environ.items() if key != "TQDM_MININTERVAL"})
    assert done.returncode == 0, done.stderr[-2000:]
    frames = [frame for frame in done.stderr.replace("\r", "\n").splitlines() if frame.startswith("MSF:")]
    assert frames and "8/" in frames[-1], frames
    # opened, its last step, closed, and one redraw after each line written above it (the loader's first batch, the
    # epoch's line): 8 records redrew it 8 times more
    assert len(frames) <= 6, frames
