"""A process confined to one core (taskset, Slurm --cpus-per-task=1, a quota of one CPU) runs FFCV to the end: with
numba's TBB threading layer it hung forever at exit, after writing or reading a store."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dataset_prep

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cores, quota, chosen", [
    ({0}, None, "omp"), ({0, 1}, 1.0, "omp"), ({0, 1}, None, None), ({0, 1}, 2.0, None)])
def test_one_core_picks_numbas_openmp_layer(monkeypatch, cores, quota, chosen):
    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    monkeypatch.setattr(dataset_prep, "cpu_quota_cores", lambda: quota)
    dataset_prep.avoid_tbb_on_one_core()
    assert os.environ.get("NUMBA_THREADING_LAYER") == chosen


def test_a_layer_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "workqueue")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    dataset_prep.avoid_tbb_on_one_core()
    assert os.environ["NUMBA_THREADING_LAYER"] == "workqueue"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_write_beton_on_one_core_exits(tiny_imagefolder, tmp_path):
    if importlib.util.find_spec("ffcv") is None:
        pytest.skip("FFCV is not installed (pip install -e '.[ffcv]')")
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_THREADING_LAYER"}
    one_core = min(os.sched_getaffinity(0))
    done = subprocess.run([sys.executable, "-m", "dataset_prep.write_beton", str(tiny_imagefolder / "train"),
                           str(tmp_path / "train.beton"), "--no-progress"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300,  # a hang guard: it takes seconds
                          preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "train.beton").stat().st_size > 0


def test_more_ffcv_workers_than_numba_allows_is_one_clear_error(monkeypatch):
    numba = pytest.importorskip("numba")
    from pipelines.ffcv_backend import ffcv_workers

    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert ffcv_workers(0) == ffcv_workers(1) == 1
    with pytest.raises(ValueError, match=r"^2 loader workers: FFCV's workers are numba threads, and numba allows 1 "
                                         r"here .* or start with NUMBA_NUM_THREADS=2 to run more threads than cores$"):
        ffcv_workers(2)


@pytest.mark.parametrize("command", ["loader", "order"])
def test_the_ffcv_benches_ask_for_one_worker_on_one_core(monkeypatch, command):
    """Their fixed default of 2 workers failed on one core: FFCV's numba threads are at most one per core there."""
    import argparse
    import importlib

    bench = importlib.import_module(f"msf_fast.bench.{command}")

    def default_workers(cores):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
        parser = argparse.ArgumentParser()
        bench.add_arguments(parser)
        return parser.get_default("workers")

    assert (default_workers({0}), default_workers({0, 1}), default_workers({0, 1, 2, 3})) == (1, 2, 2)
