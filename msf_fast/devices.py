"""Which device a command runs on, and why not the GPU when an NVIDIA GPU is there that torch cannot use.

`resolve_device("auto")` is CUDA when torch can use it, else the CPU; but on a machine that has NVIDIA GPUs
(device files /dev/nvidia0..., or nvidia-smi answering) while `torch.cuda.is_available()` is False, most often a
driver older than the CUDA of the torch wheel, a silent CPU run would take days where the GPU takes hours: it
stops with UnusableGPU instead, one line naming the GPU, the driver, torch's CUDA and the fix. `cpu` is never
checked. GPUs hidden on purpose (CUDA_VISIBLE_DEVICES empty, -1 or NoDevFiles, as schedulers set for jobs
without GPUs) leave `auto` on the CPU.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import torch

from msf_fast.errors import UserError

DEVICE_FILES = "/dev/nvidia[0-9]*"  # one per GPU the kernel driver sees
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
NVIDIA_SMI_TIMEOUT_S = 10  # a wedged driver can hang nvidia-smi
# The oldest Linux driver of each CUDA major under minor-version compatibility (NVIDIA's CUDA Compatibility
# guide): a torch built for CUDA 12.x runs on a driver >= 525, one built for 13.x needs >= 580.
MINIMUM_DRIVER = {"12": 525, "13": 580}
INSTALL = 'install the torch build for the driver\'s CUDA (make setup CUDA=cu126; README "Older NVIDIA drivers")'
ON_THE_CPU = "run on the CPU deliberately: train.device=cpu (--device cpu for the eval and bench commands)"


class UnusableGPU(UserError):
    """NVIDIA GPUs are present but torch cannot use CUDA; the message names them, torch's CUDA and the fix."""


@dataclass(frozen=True)
class NvidiaGPUs:
    """What the machine shows of its NVIDIA GPUs without CUDA's help."""
    names: tuple[str, ...] = ()  # from nvidia-smi; empty where it did not answer
    driver: str | None = None  # e.g. 535.104.05
    driver_cuda: str | None = None  # the newest CUDA the driver runs (nvidia-smi's header), e.g. 12.2
    device_files: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.names:
            counts = {name: self.names.count(name) for name in self.names}
            found = ", ".join(name if count == 1 else f"{count}x {name}" for name, count in counts.items())
        else:
            found = "NVIDIA devices " + ", ".join(self.device_files)
        details = [f"driver {self.driver}" if self.driver else "driver version unknown"]
        if self.driver_cuda:
            details.append(f"CUDA <= {self.driver_cuda}")
        return f"{found} ({', '.join(details)})"


def run_nvidia_smi(*arguments: str) -> str | None:
    """nvidia-smi's output, or None where it is absent, fails or hangs."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        done = subprocess.run([executable, *arguments], capture_output=True, text=True,
                              timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def query_gpus() -> tuple[list[str], str | None]:
    """(GPU names, driver version) as nvidia-smi reports them; ([], None) where it does not answer."""
    output = run_nvidia_smi("--query-gpu=name,driver_version", "--format=csv,noheader")
    names, driver = [], None
    for line in (output or "").splitlines():
        name, _, version = line.rpartition(",")
        if name.strip():
            names.append(name.strip())
            driver = driver or version.strip() or None
    return names, driver


def driver_cuda_version() -> str | None:
    """The newest CUDA the installed driver runs: the "CUDA Version: X.Y" of nvidia-smi's header."""
    found = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", run_nvidia_smi() or "")
    return found.group(1) if found else None


def proc_driver_version() -> str | None:
    """The kernel module's version from /proc/driver/nvidia/version ("... Kernel Module  535.104.05  ...")."""
    try:
        with open(DRIVER_VERSION_FILE) as file:
            text = file.read()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+([0-9]+\.[0-9]+(?:\.[0-9]+)?)", text)
    return found.group(1) if found else None


def nvidia_gpus() -> NvidiaGPUs | None:
    """The NVIDIA GPUs this machine has (device files or nvidia-smi), or None where it shows none."""
    files = tuple(sorted(glob.glob(DEVICE_FILES)))
    names, driver = query_gpus()
    if not files and not names:
        return None
    return NvidiaGPUs(tuple(names), driver or proc_driver_version(), driver_cuda_version() if names else None,
                      files)


def gpus_hidden() -> bool:
    """CUDA_VISIBLE_DEVICES set to no device at all: the GPUs are hidden on purpose (a CPU job on a GPU node)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return False
    first = visible.split(",")[0].strip()
    return not (first.isdigit() or first.startswith(("GPU-", "MIG-")))


def torch_cuda() -> str:
    """What torch was built for: "torch 2.14.1+cu130 is built for CUDA 13.0, which needs driver >= 580"."""
    build = f"torch {torch.__version__}"
    if torch.version.cuda is None:
        kind = "a ROCm" if getattr(torch.version, "hip", None) else "a CPU-only"
        return f"{build} is {kind} build (no CUDA)"
    text = f"{build} is built for CUDA {torch.version.cuda}"
    minimum = MINIMUM_DRIVER.get(torch.version.cuda.split(".")[0])
    return text + (f", which needs driver >= {minimum}" if minimum else "")


def driver_major(version: str | None) -> int | None:
    found = re.match(r"([0-9]+)", version or "")
    return int(found.group(1)) if found else None


def unusable_gpu_message(gpus: NvidiaGPUs) -> str:
    """One line: what was found, why torch cannot use it (as far as it can be told) and the fix."""
    major, oldest = driver_major(gpus.driver), min(MINIMUM_DRIVER.values())
    minimum = MINIMUM_DRIVER.get((torch.version.cuda or "").split(".")[0])
    if major is not None and major < oldest:
        fix = f"update the driver (torch's CUDA builds need >= {oldest}), or {ON_THE_CPU}"
    elif major is not None and minimum is not None and major >= minimum:
        fix = (f"the driver is new enough: python -c 'import torch; torch.cuda.init()' shows CUDA's own error (a "
               f"reboot due after a driver update? a container without the driver's libraries?), or {ON_THE_CPU}")
    else:
        fix = f"{INSTALL}, or {ON_THE_CPU}"
    return f"{gpus.describe()} found, but torch cannot use CUDA: {torch_cuda()}; {fix}"


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when torch can use it, else the CPU, unless NVIDIA GPUs are present that torch cannot use
    (UnusableGPU). cuda[:N] without a usable CUDA: UnusableGPU where NVIDIA GPUs are present, a RuntimeError
    otherwise. Anything else, cpu included, as torch.device reads it (a RuntimeError for an unknown name)."""
    if name != "auto" and name != "cuda" and not name.startswith("cuda:"):
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    hidden = gpus_hidden()
    gpus = None if hidden else nvidia_gpus()
    if gpus is not None:
        raise UnusableGPU(f"device {name}: {unusable_gpu_message(gpus)}")
    if name == "auto":
        return torch.device("cpu")
    why = f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides the GPUs)" if hidden else ""
    raise RuntimeError(f"device {name}: no CUDA device is available{why}")


def device_option(name: str) -> torch.device:
    """A command's `--device NAME`, resolved as `resolve_device` does; a device that is not there is a UserError
    naming the option (one line, exit 2), before any work."""
    try:
        return resolve_device(name)
    except UserError:
        raise
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not reason.startswith(f"device {name}: "):  # torch's list of every device type it knows
            reason = "expected auto, cpu, cuda or cuda:N"
        raise UserError(f"--device {name}: {reason.removeprefix(f'device {name}: ')}") from None
