"""A $TMPDIR too long for the loader workers' sockets made every loader with worker processes wait forever (each
worker printing `OSError: AF_UNIX path too long` per batch): the commands now refuse it in one line before training."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torchvision

from pipelines.worker_sockets import FOLDER_LIMIT, TempFolderTooLong, check_worker_sockets
from train_imagenet import PROG as TRAIN
from msf_fast.eval import PROG as EVAL

ROOT = Path(__file__).resolve().parents[1]


def folder_of_length(length: int) -> Path:
    base = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
    folder = base / ("x" * (length - len(str(base)) - 1))
    folder.mkdir()
    assert len(str(folder)) == length
    return folder


def test_the_limit_is_linuxs():
    """A DataLoader worker delivers its batches under the longest folder allowed; one byte longer, it cannot make its
    socket (the child then waits forever: it is stopped once it says so)."""
    script = ("import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
              "print(len(list(DataLoader(TensorDataset(torch.zeros(8, 2)), batch_size=4, num_workers=1))))")
    env = {**os.environ, "TMPDIR": str(folder_of_length(FOLDER_LIMIT))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "2", done.stderr[-2000:]
    env["TMPDIR"] = str(folder_of_length(FOLDER_LIMIT + 1))
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert any("AF_UNIX path too long" in line for line in child.stderr)  # read until it says so
    finally:
        child.kill()
        child.wait()


def test_only_worker_processes_need_a_short_folder(monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/tmp/" + "y" * FOLDER_LIMIT)
    check_worker_sockets(0)
    with pytest.raises(TempFolderTooLong, match=f"at most {FOLDER_LIMIT} bytes"):
        check_worker_sockets(2)
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    check_worker_sockets(2)


def run(command: list[str], tmpdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir)},
                          capture_output=True, text=True, timeout=600)  # a hang guard


def test_training_evaluation_and_the_loader_benchmark_refuse_a_long_temp_folder_in_one_line(tiny_imagefolder, tmp_path):
    tmpdir = folder_of_length(FOLDER_LIMIT + 5)
    expected = (f"the temporary folder {tmpdir} ($TMPDIR) is {FOLDER_LIMIT + 5} bytes long: the loader's worker "
                f"processes pass batches through sockets made in it, and Linux allows them a folder of at most "
                f"{FOLDER_LIMIT} bytes (they would wait forever); set TMPDIR to a shorter folder, e.g. TMPDIR=/tmp")
    done = run(["train_imagenet.py", f"--data.train_path={tiny_imagefolder / 'train'}", "--data.backend=torch",
                "--data.workers=1", "--data.resolution=32", "--model.arch=resnet18", "--train.batch_size=8",
                "--msf.bank_size=32", "--train.epochs=1", "--train.device=cpu", f"--logging.folder={tmp_path / 'run'}"],
               tmpdir)
    assert (done.returncode, done.stderr.strip().splitlines()) == (2, [f"{TRAIN}: error: data.workers=1: {expected}"])
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    backbone = tmp_path / "backbone.pth"  # as python -m msf_fast.export writes one
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")},
               backbone)
    done = run(["-m", "msf_fast.eval", "knn", "--ckpt", str(backbone), "--train", str(tiny_imagefolder / "train"),
                "--val", str(tiny_imagefolder / "val"), "--resolution", "32", "--workers", "1", "--device", "cpu",
                "--out", str(tmp_path / "knn")], tmpdir)
    assert (done.returncode, done.stderr.strip().splitlines()) == (2, [f"{EVAL} knn: error: {expected}"])
    assert not (tmp_path / "knn").exists()
    done = run(["-m", "msf_fast.bench", "loader", "--data", str(tiny_imagefolder / "train"), "--backend", "torch",
                "--workers", "1"], tmpdir)
    assert (done.returncode, done.stderr.strip().splitlines()) == (
        2, [f"python -m msf_fast.bench loader: error: --workers 1: {expected}"])
