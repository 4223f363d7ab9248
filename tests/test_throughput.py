"""Where the time goes: the wait for the loader against the step, and which side bounds a run."""
import json
import time

import torch

from msf_fast.throughput import StepClock, TimeSplit


def timed_epoch(load_seconds: float, step_seconds: float, steps: int = 6) -> TimeSplit:
    clock = StepClock(torch.device("cpu"), images_per_step=8)

    def loader():
        for index in range(steps):
            time.sleep(load_seconds)
            yield index

    for _ in clock.batches(loader()):
        with clock.step():
            time.sleep(step_seconds)
    return clock.read(wait_for_gpu=True)


def test_a_slow_loader_bounds_the_run():
    split = timed_epoch(load_seconds=0.03, step_seconds=0.005)
    assert split.images == 48 and split.data_wait_seconds >= 6 * 0.03 and split.step_seconds >= 6 * 0.005
    assert split.data_wait_fraction > 0.6 and split.bound == "loader" and "bound: loader" in split.verdict()
    assert 0 < split.images_per_s < 48 / (6 * 0.03)


def test_a_slow_step_bounds_the_run():
    split = timed_epoch(load_seconds=0.0, step_seconds=0.02)
    assert split.data_wait_fraction < 0.1 and split.bound == "compute"
    record = split.record()
    assert set(record) == {"images_per_s", "data_wait_s", "step_s", "data_wait_fraction"}
    total = TimeSplit()
    total.add(split)
    total.add(split)
    assert total.images == 2 * split.images and total.data_wait_fraction == split.data_wait_fraction


def test_training_logs_the_split_and_says_which_side_bounds(tiny_imagefolder, tmp_path, capsys):
    from msf_fast.config import load_config
    from msf_fast.trainer import Trainer

    threads = torch.get_num_threads()
    try:
        result = Trainer(load_config([
            f"--data.train_path={tiny_imagefolder / 'train'}", "--data.backend=torch", "--model.arch=resnet18",
            "--data.resolution=32", "--train.batch_size=16", "--msf.bank_size=64", "--train.epochs=2",
            "--data.workers=0", "--train.threads=1", f"--logging.folder={tmp_path}", "--logging.log_every=2",
            "--eval.knn_final=0"])).train()
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    for record in [r for r in records if r["event"] in ("step", "epoch")]:
        assert record["images_per_s"] > 0 and 0 <= record["data_wait_fraction"] <= 1
        assert record["step_s"] > 0 and record["data_wait_s"] >= 0
    [end] = [r for r in records if r["event"] == "end"]
    assert end["bound"] == result.time.bound and end["step"] == 12
    assert f"bound: {result.time.bound}" in capsys.readouterr().out  # the end-of-run line
