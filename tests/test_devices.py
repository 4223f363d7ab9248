"""A GPU that torch cannot use (a driver older than the wheel's CUDA, a CPU build of torch) is no silent CPU run:
`auto` stops with one line naming the GPU, the driver, torch's CUDA and the fix (msf_fast/devices.py), in the
trainer, the benchmarks and the GPU check. Faked on the CPU: an nvidia-smi script first on PATH, the /dev glob
pointed at a temporary folder and, in process, torch.cuda.is_available patched to False; in a subprocess a
CUDA_VISIBLE_DEVICES naming no real GPU makes torch see none even on a GPU machine."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from msf_fast import devices
from msf_fast.devices import UnusableGPU, resolve_device
from msf_fast.errors import UserError
from train_imagenet import PROG as TRAIN

ROOT = Path(__file__).resolve().parents[1]
GPU, DRIVER, DRIVER_CUDA = "NVIDIA H100 80GB HBM3", "535.104.05", "12.2"
NO_REAL_GPU = "GPU-00000000-0000-0000-0000-000000000000"  # a UUID no GPU has: torch sees no device


def fake_nvidia_smi(folder: Path, exit_code: int = 0) -> Path:
    """An nvidia-smi in `folder` answering as a 535 driver does (or failing), recording each call."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
echo "$@" >> "{folder / 'calls'}"
if [ {exit_code} -ne 0 ]; then echo "NVIDIA-SMI has failed: no driver answers."; exit {exit_code}; fi
case "$1" in
  --query-gpu=*) echo "{GPU}, {DRIVER}"; echo "{GPU}, {DRIVER}" ;;
  *) echo "| NVIDIA-SMI {DRIVER}   Driver Version: {DRIVER}   CUDA Version: {DRIVER_CUDA}     |" ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine whose NVIDIA GPUs torch cannot use; nothing found until a test adds nvidia-smi or device files."""
    dev = tmp_path / "dev"
    dev.mkdir()
    monkeypatch.setattr(devices, "DEVICE_FILES", str(dev / "nvidia[0-9]*"))
    monkeypatch.setattr(devices, "DRIVER_VERSION_FILE", str(tmp_path / "proc-driver-nvidia-version"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    return Namespace(dev=dev, bin=tmp_path / "bin", tmp=tmp_path)


def with_nvidia_smi(machine, monkeypatch, exit_code: int = 0) -> Path:
    folder = fake_nvidia_smi(machine.bin, exit_code)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_auto_stops_on_a_gpu_torch_cannot_use(machine, monkeypatch):
    with_nvidia_smi(machine, monkeypatch)
    with pytest.raises(UnusableGPU) as raised:
        resolve_device("auto")
    message = str(raised.value)
    assert isinstance(raised.value, UserError) and "\n" not in message
    assert message.startswith(f"device auto: 2x {GPU} (driver {DRIVER}, CUDA <= {DRIVER_CUDA}) found, but torch "
                              "cannot use CUDA: ")
    assert f"torch {torch.__version__} is built for CUDA {torch.version.cuda}" in message or \
        f"torch {torch.__version__} is a CPU-only build" in message
    assert "make setup CUDA=cu126" in message and "train.device=cpu" in message and "--device cpu" in message


def test_the_message_names_a_cpu_build_and_the_driver_cuda_needs(machine, monkeypatch):
    with_nvidia_smi(machine, monkeypatch)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(UnusableGPU, match=re.escape(f"torch {torch.__version__} is a CPU-only build (no CUDA); "
                                                    "install the torch build")):
        resolve_device("auto")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(UnusableGPU, match=r"is built for CUDA 13\.0, which needs driver >= 580; install"):
        resolve_device("cuda")


@pytest.mark.parametrize("driver, fix", [
    ("470.256.02", "update the driver (torch's CUDA builds need >= 525), or run on the CPU deliberately"),
    ("580.95.05", "the driver is new enough: python -c 'import torch; torch.cuda.init()' shows CUDA's own error"),
])
def test_the_fix_follows_the_driver(machine, monkeypatch, driver, fix):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    (machine.dev / "nvidia0").touch()
    Path(devices.DRIVER_VERSION_FILE).write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Sat\n")
    with pytest.raises(UnusableGPU, match=re.escape(f"(driver {driver}) found, but torch cannot use CUDA: torch "
                                                    f"{torch.__version__} is built for CUDA 13.0, which needs "
                                                    f"driver >= 580; {fix}")):
        resolve_device("auto")


def test_cpu_is_never_checked(machine, monkeypatch):
    folder = with_nvidia_smi(machine, monkeypatch)
    (machine.dev / "nvidia0").touch()
    assert resolve_device("cpu") == torch.device("cpu")
    assert not (folder / "calls").exists()


def test_without_nvidia_devices_auto_is_the_cpu(machine, monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"^device cuda: no CUDA device is available$"):
        resolve_device("cuda")
    with_nvidia_smi(machine, monkeypatch, exit_code=9)  # installed, but no driver answers
    assert resolve_device("auto") == torch.device("cpu")


def test_device_files_alone_are_enough_and_the_driver_comes_from_proc(machine):
    (machine.dev / "nvidia0").touch()
    (machine.dev / "nvidiactl").touch()  # not a GPU
    with pytest.raises(UnusableGPU, match=rf"^device cuda:0: NVIDIA devices {machine.dev / 'nvidia0'} \(driver "
                                          r"version unknown\) found"):
        resolve_device("cuda:0")
    Path(devices.DRIVER_VERSION_FILE).write_text(
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build  (dvs-builder@U16)\n")
    with pytest.raises(UnusableGPU, match=rf"nvidia0 \(driver {DRIVER}\) found"):
        resolve_device("auto")


@pytest.mark.parametrize("visible", ["", "-1", "NoDevFiles"])
def test_gpus_hidden_on_purpose_leave_auto_on_the_cpu(machine, monkeypatch, visible):
    with_nvidia_smi(machine, monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"no CUDA device is available \(CUDA_VISIBLE_DEVICES=.* hides the GPUs\)"):
        resolve_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(UnusableGPU):
        resolve_device("auto")


def test_eval_resolves_its_device_the_same_way(machine, monkeypatch):
    from msf_fast.eval.common import checked_device

    with_nvidia_smi(machine, monkeypatch)
    with pytest.raises(UnusableGPU, match="train.device=cpu"):
        checked_device(Namespace(device="auto"))
    assert checked_device(Namespace(device="cpu")) == torch.device("cpu")


# ---- the commands, as a user runs them -------------------------------------------------------------------------

def unusable_gpu_env(tmp_path: Path) -> dict:
    folder = fake_nvidia_smi(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}",
           "CUDA_VISIBLE_DEVICES": NO_REAL_GPU}
    env.pop("PYTHONPATH", None)
    return env


def one_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    assert done.returncode == code, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_training_with_device_auto_stops_with_one_line(tmp_path):
    (tmp_path / "train" / "a_class").mkdir(parents=True)
    (tmp_path / "train" / "a_class" / "0.jpg").touch()
    done = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), f"--data.train_path={tmp_path / 'train'}",
                           "--train.device=auto", f"--logging.folder={tmp_path / 'run'}"],
                          cwd=ROOT, env=unusable_gpu_env(tmp_path), capture_output=True, text=True, timeout=120)
    line = one_line(done)
    assert line.startswith(f"{TRAIN}: error: device auto: 2x {GPU} (driver {DRIVER}, CUDA <= {DRIVER_CUDA}) found, "
                           f"but torch cannot use CUDA: torch {torch.__version__} ")
    assert "make setup CUDA=cu126" in line and "train.device=cpu" in line
    assert not (tmp_path / "run").exists()


def test_a_benchmark_on_its_default_device_stops_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "msf_fast.bench", "step", "--arch", "resnet18", "--batch-size", "8",
                           "--resolution", "32", "--bank-size", "64", "--steps", "1", "--repeats", "1"],
                          cwd=ROOT, env=unusable_gpu_env(tmp_path), capture_output=True, text=True, timeout=120)
    line = one_line(done)
    assert line.startswith(f"python -m msf_fast.bench step: error: device auto: 2x {GPU} (driver {DRIVER}")
    assert "--device cpu" in line and not done.stdout


def test_gpu_check_shows_the_versions_first_and_why_cuda_is_unusable(tmp_path):
    env = unusable_gpu_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cuda", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    versions, why = done.stderr.strip().splitlines()
    assert versions.startswith(f"== versions: driver {DRIVER} (CUDA <= {DRIVER_CUDA}); torch {torch.__version__} (")
    assert why.startswith(f"gpu_check: no CUDA device here that torch can use: 2x {GPU} (driver {DRIVER}, ")
    assert "make setup CUDA=cu126" in why
    [env_line] = [json.loads(line) for line in (tmp_path / "out" / "env.jsonl").read_text().splitlines()]
    assert env_line["driver"] == DRIVER and env_line["driver_cuda"] == DRIVER_CUDA
    assert env_line["nvidia_gpus"] == [GPU, GPU] and env_line["cuda"] == torch.version.cuda
    assert env_line["cuda_available"] is False and "dali" in env_line and env_line["why_no_cuda"] in why
