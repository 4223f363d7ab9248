"""Training under torchrun on the CPU (two gloo processes): an uninterrupted run reports and logs once, from rank 0,
with the bank filled by the global batch; a preemption signal stops every rank at the same step with one checkpoint
written by rank 0; and a worker killed mid-run is restarted by torchrun and resumes, ending with the weights of the
uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 18  # 96 images / (8 per rank x 2 ranks) = 6 steps per epoch, 3 epochs
BANK = 80  # not a multiple of STEPS x 16: the final bank pointer tells the global batch (48) from a local one (64)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(data, folder, *extra, restarts: int = 0) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{free_port()}", f"--max-restarts={restarts}", "train_imagenet.py", f"--data.train_path={data / 'train'}",
               "--data.backend=torch", "--model.arch=resnet18", "--model.hidden_dim=64", "--model.proj_dim=32",
               "--data.resolution=32", "--data.workers=0", "--train.batch_size=8", f"--msf.bank_size={BANK}",
               "--train.epochs=3", "--train.device=cpu", "--train.threads=1", "--train.amp=off",
               f"--logging.folder={folder}", "--logging.progress=0", "--logging.log_every=1", "--eval.knn_final=0",
               "--train.resume=auto", *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def workers_of(agent: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == agent.pid:
            rank = next((int(item[5:]) for item in environment if item.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = int(entry.name)
    return found


def wait_for(condition, agent: subprocess.Popen, seconds: float = 900) -> None:  # a hang guard, as the timeouts below
    """Until `condition`; fails at once when torchrun ended first (a rank that cannot start, e.g. an import error)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if agent.poll() is not None:
            _, stderr = agent.communicate()
            raise AssertionError(f"torchrun ended with exit code {agent.returncode} first: {stderr[-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def logged_steps(folder: Path) -> list[int]:
    log = folder / "log.jsonl"
    if not log.exists():
        return []
    return [record["step"] for record in map(json.loads, log.read_text().splitlines()) if record["event"] == "step"]


def final_model(folder: Path) -> dict:
    checkpoint = torch.load(folder / "checkpoints" / "latest.pt", weights_only=False)
    assert checkpoint["step"] == STEPS
    return checkpoint["model"]


def check_uninterrupted_run(folder: Path, stdout: str) -> None:
    summaries = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["steps"] == STEPS  # rank 0 alone reports
    steps = [record for record in map(json.loads, (folder / "log.jsonl").read_text().splitlines())
             if record["event"] == "step"]
    assert [record["step"] for record in steps] == list(range(1, STEPS + 1))  # one log, written by rank 0
    assert steps[0]["images_per_s"] > 0
    assert int(final_model(folder)["bank.pointer"]) == (STEPS * 16) % BANK  # each step enqueues both ranks' keys


def test_sigterm_stops_every_rank_at_the_same_step(tiny_imagefolder, tmp_path):
    folder = tmp_path / "run"
    agent = torchrun(tiny_imagefolder, folder)
    wait_for(lambda: len(logged_steps(folder)) >= 2, agent)
    agent.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker
    _, stderr = agent.communicate(timeout=120)
    assert agent.returncode != 0
    assert (folder / "checkpoints" / "latest.pt").exists(), stderr[-3000:]
    checkpoint = torch.load(folder / "checkpoints" / "latest.pt", weights_only=False)
    step = checkpoint["step"]
    assert 2 <= step < STEPS
    for rank in (0, 1):
        assert f"rank {rank}: stopped by SIGTERM at step {step}:" in stderr, stderr[-3000:]
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "stopped"] == [step]  # one log, rank 0's


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(tiny_imagefolder, tmp_path):
    """Slow (two torchrun jobs side by side, about 35 s on two cores, 86-176 s on the one core of a make test worker):
    the only check that torchrun's restart resumes step for step, and the suite's one uninterrupted torchrun run.
    Its timeouts are hang guards, 900 s so that a CPU 5x slower than that passes."""
    reference = torchrun(tiny_imagefolder, tmp_path / "reference")  # mostly start-up: it overlaps the other
    folder = tmp_path / "killed"
    agent = torchrun(tiny_imagefolder, folder, restarts=1)
    wait_for(lambda: (folder / "checkpoints" / "latest.pt").exists() and len(logged_steps(folder)) >= 8, agent)
    os.kill(workers_of(agent)[1], signal.SIGKILL)  # mid-run, after the first epoch's checkpoint
    _, stderr = agent.communicate(timeout=900)
    assert agent.returncode == 0, stderr[-3000:]
    stdout, stderr = reference.communicate(timeout=900)
    assert reference.returncode == 0, stderr[-3000:]
    check_uninterrupted_run(tmp_path / "reference", stdout)
    steps = logged_steps(folder)
    assert steps[-1] == STEPS and len(steps) > STEPS  # some steps ran twice: after the restart, from the checkpoint
    for name, value in final_model(tmp_path / "reference").items():
        assert torch.equal(final_model(folder)[name], value), name
