"""Precision by what the CPU computes natively: the capability query (mocked, and capped through the
environment as a user without the hardware would), the choice, the warning, and what a run prints and logs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msf_fast import precision as prec
from msf_fast.precision import CpuBf16, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
NATIVE, EMULATED = CpuBf16(True, "the CPU has AMX"), CpuBf16(False, "the CPU has neither AMX-BF16 nor AVX512-BF16")


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU's answers to torch's queries: flags(amx=..., avx512_bf16=..., capability=..., onednn_bf16=...)."""
    def flags(amx=False, avx512_bf16=False, capability="AVX512", onednn_bf16=True):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(prec, "_onednn_bf16", lambda: onednn_bf16)
    return flags


@pytest.mark.parametrize("flags, native, found", [
    (dict(amx=True), True, "AMX"),
    (dict(avx512_bf16=True), True, "AVX512-BF16"),
    (dict(), False, "neither AMX-BF16 nor AVX512-BF16"),  # Zen 3, most laptops
    (dict(avx512_bf16=True, capability="AVX2"), False, "capped at AVX2"),
    (dict(amx=True, onednn_bf16=False), False, "ONEDNN_MAX_CPU_ISA"),
])
def test_the_capability_query(cpu_flags, flags, native, found):
    cpu_flags(**flags)
    support = prec.cpu_bf16_support()
    assert support.native is native and found in support.reason


def test_auto_uses_bf16_only_where_native(cpu_flags):
    cpu_flags(avx512_bf16=True)
    chosen = resolve_precision("auto", CPU)
    assert chosen.dtype == torch.bfloat16 and chosen.warning is None
    assert "AVX512-BF16" in chosen.reason
    cpu_flags()
    chosen = resolve_precision("auto", CPU)
    assert chosen.dtype is None and chosen.name == "fp32" and chosen.warning is None
    assert "emulated" in chosen.reason


def test_explicit_bf16_without_native_support_runs_with_a_warning_of_its_cost():
    chosen = resolve_precision("bf16", CPU, support=EMULATED)
    assert chosen.dtype == torch.bfloat16
    assert chosen.warning.startswith("warning:") and "\n" not in chosen.warning
    assert "5.3x slower" in chosen.warning and "auto picks fp32" in chosen.warning
    assert resolve_precision("bf16", CPU, support=NATIVE).warning is None


def test_cuda_and_off_do_not_ask_the_cpu(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: pytest.fail("the CPU was queried"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    cuda = resolve_precision("auto", torch.device("cuda"))
    assert cuda.dtype == torch.float16 and cuda.needs_scaler
    assert resolve_precision("off", CPU).dtype is None


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_a_capped_dispatch_chooses_as_an_avx2_cpu():
    """The environment variables that simulate a CPU without native bf16 make auto pick fp32 on any machine."""
    code = ("import torch; from msf_fast.precision import resolve_precision as r; "
            "print(r('auto', torch.device('cpu')).name)")
    capped = run_python(code, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert capped.returncode == 0, capped.stderr
    assert capped.stdout.strip() == "fp32"


def test_a_run_prints_and_logs_its_precision(tmp_path, tiny_imagefolder):
    args = [sys.executable, "train_imagenet.py", f"--data.train_path={tiny_imagefolder / 'train'}", "--model.arch=resnet18",
            "--model.small_input=1", "--data.resolution=32", "--train.batch_size=8", "--msf.bank_size=64",
            "--train.max_steps=1", "--train.device=cpu", "--train.amp=bf16", "--eval.knn_final=0",
            "--logging.progress=0", f"--logging.folder={tmp_path / 'run'}", "--data.workers=0"]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "precision: bf16 on cpu (asked for: amp bf16" in done.stdout and "; channels-last, " in done.stdout
    [warning] = [line for line in done.stderr.splitlines() if line.startswith("warning: amp bf16")]
    assert "capped at AVX2" in warning
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    [setup] = [r for r in records if r["event"] == "setup"]
    assert setup["amp"] == "bf16" and "asked for" in setup["amp_reason"] and setup["channels_last"] is True
    assert setup["device"] == "cpu" and setup["torch_threads"] >= 1


@pytest.mark.parametrize("cores, workers, threads", [(2, 2, 1), (2, 1, 1), (32, 32, 16), (32, 8, 24), (1, 1, 1)])
def test_torch_threads_leave_busy_loader_workers_their_cores(cores, workers, threads, monkeypatch):
    import pipelines
    monkeypatch.setattr(pipelines, "process_cores", lambda: cores)
    assert pipelines.default_torch_threads(workers) == threads
