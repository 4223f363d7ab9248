"""Other processes' share of this process's cores, and the trainer's note when its torch threads would share them."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dataset_prep import core_load
from dataset_prep.core_load import (CpuSample, busy_cores_of_others, parse_proc_stat, threads_note,
                                    threads_that_fit)

PROC_STAT = """cpu  300 0 100 900 0 0 0 0 0 0
cpu0 200 0 50 250 0 0 0 0 0 0
cpu1 100 0 50 650 0 0 0 0 0 0
cpu2 0 0 0 1000 0 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_proc_stat_counts_only_this_process_cores():
    assert parse_proc_stat(PROC_STAT, {0, 1}) == (400, 1300)
    assert parse_proc_stat(PROC_STAT, {2}) == (0, 1000)
    # iowait (5th) is idle; irq, softirq and steal (6th-8th: the host ran another guest) are busy
    assert parse_proc_stat("cpu0 10 0 0 50 20 1 2 7 0 0\n", {0}) == (20, 90)


def test_busy_cores_of_others_subtracts_this_process_own_time():
    start = CpuSample(busy_s=10.0, total_s=100.0, own_s=1.0, cores=2)
    # 2 s of wall on 2 cores: 3 busy seconds, 1 of them this process's: one core's worth for the others
    assert busy_cores_of_others(start, CpuSample(13.0, 104.0, 2.0, 2)) == pytest.approx(1.0)
    assert busy_cores_of_others(start, CpuSample(11.0, 104.0, 2.0, 2)) == 0.0  # only this process
    assert busy_cores_of_others(start, CpuSample(10.5, 100.5, 1.1, 2)) is None  # 0.25 s: too short to tell
    assert busy_cores_of_others(start, CpuSample(13.0, 104.0, 2.0, 3)) is None  # other cores
    assert busy_cores_of_others(None, start) is None


def test_threads_fit_the_cores_other_processes_leave_idle():
    assert threads_that_fit(2, 2, 1.0) == 1
    assert threads_that_fit(2, 2, 2.0) == 1  # at least one
    assert threads_that_fit(6, 8, 3.4) == 5
    assert threads_that_fit(2, 8, 3.0) == 2  # enough idle cores
    assert threads_that_fit(2, 2, 0.3) == 2  # a quiet machine
    assert threads_that_fit(2, 2, None) == 2  # not measured
    assert threads_that_fit(2, 1, None) == 1  # a one-core process (taskset, --cpus-per-task=1): the demo's 2 ran 18x
    assert threads_that_fit(4, 4, 1.5) == 3  # halves round up: 2.5 idle cores
    assert threads_that_fit(2, 2, 0.5) == 2


def test_the_notes_say_what_was_chosen_and_how_to_choose_otherwise():
    lowered = threads_note(2, 1, 2, 1.0, "--train.threads")
    assert lowered.startswith("note: other processes kept 1.0 of this process's 2 cores busy as it started: 1 torch "
                              "thread instead of 2 (threads sharing cores with busy processes trained 2.3x")
    assert lowered.endswith("; --train.threads=2 uses 2 anyway") and "\n" not in lowered
    given = threads_note(4, 4, 8, 5.2, "--threads")  # the user's 4, not lowered: advice
    assert given.startswith("note: other processes kept 5.2 of this process's 8 cores busy as it started; threads "
                            "sharing cores")
    assert given.endswith('--threads=3 if that load stays (README, "Precision, layout and threads")')
    assert "1 core busy" in threads_note(2, 2, 1, 0.9, "--train.threads")
    assert threads_note(2, 2, 2, 0.2, "--train.threads") is None  # a quiet machine
    assert threads_note(1, 1, 2, 1.0, "--train.threads") is None  # one thread shares nothing
    assert threads_note(2, 2, 8, 3.0, "--train.threads") is None  # enough idle cores
    assert threads_note(2, 1, 1, None, "--train.threads") is None  # fewer cores, not busier ones: no note
    assert threads_note(2, 1, 1, 0.1, "--train.threads") is None
    assert threads_note(2, 1, 1, 0.5, "--train.threads") is None  # one core, shared: 1 thread is all it could have
    assert threads_note(2, 2, 2, None, "--train.threads") is None  # not measured


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc/stat")
def test_busy_processes_on_every_core_are_seen():
    """Busy loops on all of this process's cores while it sleeps: at least 1.5 cores' worth of others on 2 (the
    other pytest worker, if any, only adds to it)."""
    cores = len(os.sched_getaffinity(0))
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # they start
        core_load.mark_start()
        time.sleep(1.5)
        others = core_load.busy_cores_since_start()
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert others is not None and others >= 0.75 * cores, others


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc/stat")
def test_this_process_own_work_is_in_both_counts():
    """A busy loop in this process: its CPU time is counted (os.times), and the cores' busy time holds it, so
    that subtracting one from the other leaves the others' share."""
    start = core_load.sample()
    begun, deadline = time.process_time(), time.monotonic() + 60
    while time.process_time() - begun < 1.0 and time.monotonic() < deadline:  # 1 CPU second, however shared
        pass
    end = core_load.sample()
    own = end.own_s - start.own_s
    assert own >= 0.9, own
    assert end.busy_s - start.busy_s >= own - 0.1, (end.busy_s - start.busy_s, own)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc/stat")
@pytest.mark.parametrize("given", [None, 2], ids=["auto", "given"])
def test_a_training_run_on_busy_cores_fits_its_threads_or_says_so(tiny_imagefolder, tmp_path, given):
    """Every core busy: automatic threads (2 on 2 cores with no loader workers) become 1, said once; threads the
    user gave are kept, with advice. Either way the setup record holds the measurement."""
    import json
    from pathlib import Path

    from tests.test_long_runs import options
    folder = tmp_path / "run"
    threads = ["--train.threads=0"] if given is None else [f"--train.threads={given}"]
    # two per core: one loop alone on the one core a pytest worker has would share it with the run's own start-up
    # and show as ~0.5 core of others, at the threshold
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in 2 * list(os.sched_getaffinity(0))]
    try:
        done = subprocess.run([sys.executable, "train_imagenet.py", *options(tiny_imagefolder, folder), *threads,
                               "--train.max_steps=1"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=600)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: other processes kept")]
    setup = next(json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if '"setup"' in line)
    assert setup["busy_cores_of_others"] >= 0.6, setup
    cores = len(os.sched_getaffinity(0))
    if given is None:
        assert setup["torch_threads"] == 1, setup
        if cores > 1:
            assert len(notes) == 1 and f"1 torch thread instead of {cores}" in notes[0], done.stderr
    else:
        assert setup["torch_threads"] == 2, setup
        assert len(notes) == 1 and "--train.threads=1 if that load stays" in notes[0], done.stderr
