"""The autocast precision chosen by what the hardware computes natively.

On CUDA, autocast runs in bf16 (fp16 with a GradScaler where the GPU lacks bf16). On the CPU, bf16 is fast only where the CPU has bf16 instructions (AMX-BF16: Intel Sapphire Rapids and
later; AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake). Elsewhere (AVX2-only CPUs: Zen 2/3, most laptops,
older nodes) torch runs bf16 autocast through conversion paths: ResNet-18 training, 32 px, batch 32, one thread,
measured 5.3x slower than fp32 on an AMD Zen 3, and 4-9x slower with the dispatch capped at AVX2 on a Zen 4
(`python -m msf_fast.bench cpu`, which also shows that channels-last costs fp32 nothing at 32 px and gains 1.17x at
64-128 px, so the layout stays channels-last everywhere).

The capability comes from torch's own queries (cpuinfo's flags, ATen's dispatch level, oneDNN's bf16 check), so
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` makes a bf16 machine choose as an AVX2-only one does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

# The measured cost quoted when bf16 is asked for on a CPU that lacks it (see the module docstring).
EMULATED_BF16_COST = "ResNet-18 training ran 5.3x slower in bf16 than in fp32 on an AVX2-only AMD Zen 3"


@dataclass(frozen=True)
class CpuBf16:
    native: bool
    reason: str  # what was found, in words


def _query(name: str) -> bool:
    query = getattr(torch.cpu, name, None)
    return bool(query()) if query is not None else False


def _onednn_bf16() -> bool:
    """oneDNN's own check, which honours ONEDNN_MAX_CPU_ISA (cpuinfo's flags above do not)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16_support() -> CpuBf16:
    """Whether this CPU computes bf16 natively, as torch will use it (a capped dispatch counts as no)."""
    features = [name for name, query in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
                if _query(query)]
    if not features:
        return CpuBf16(False, "the CPU has neither AMX-BF16 nor AVX512-BF16")
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        return CpuBf16(False, f"the CPU has {' and '.join(features)}, but torch's dispatch is capped at {capability} "
                              "(ATEN_CPU_CAPABILITY)")
    if not _onednn_bf16():
        return CpuBf16(False, f"the CPU has {' and '.join(features)}, but oneDNN's bf16 kernels are off "
                              "(ONEDNN_MAX_CPU_ISA)")
    return CpuBf16(True, f"the CPU has {' and '.join(features)}")


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32), why it was chosen, and whether a GradScaler is needed (fp16 only)."""
    dtype: torch.dtype | None
    device_type: str
    reason: str = ""
    warning: str | None = None  # set when the choice is known to run slowly here

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        return f"precision: {self.name} on {self.device_type} ({self.reason})"

    def record(self) -> dict:
        return {"amp": self.name, "amp_reason": self.reason}


def resolve_precision(amp: str, device: torch.device, support: CpuBf16 | None = None) -> Precision:
    """`amp` (auto, bf16, fp16, off) on `device`. auto: bf16 on CUDA where supported, else fp16; on the CPU bf16
    only where it is native, else fp32. `support` replaces the CPU query (tests)."""
    kind = device.type
    if amp == "off":
        return Precision(None, kind, "asked for: amp off")
    if kind == "cuda":
        if amp == "auto":
            bf16 = torch.cuda.is_bf16_supported()
            return (Precision(torch.bfloat16, kind, "auto: the GPU supports bf16") if bf16 else
                    Precision(torch.float16, kind, "auto: the GPU lacks bf16, fp16 with a GradScaler"))
        return Precision(DTYPES[amp], kind, f"asked for: amp {amp}")
    if kind != "cpu":
        return Precision(None if amp == "auto" else DTYPES[amp], kind, f"amp {amp} on {kind}")
    support = support or cpu_bf16_support()
    if amp == "auto":
        if support.native:
            return Precision(torch.bfloat16, kind, f"auto: {support.reason}, so bf16 is native")
        return Precision(None, kind, f"auto: {support.reason}, so bf16 would be emulated")
    if amp == "bf16":
        warning = None if support.native else (
            f"warning: amp bf16 on a CPU without native bf16 ({support.reason}) runs through slow paths: "
            f"{EMULATED_BF16_COST}; amp auto picks fp32 here")
        return Precision(torch.bfloat16, kind, f"asked for: amp bf16; {support.reason}", warning)
    fp16_native = _query("_is_amx_fp16_supported")
    return Precision(torch.float16, kind, "asked for: amp fp16", None if fp16_native else
                     "warning: amp fp16 on a CPU without AMX-FP16 runs through slow paths, slower than fp32; "
                     "amp auto picks the fastest precision here")


def cpu_amp_choice() -> str:
    """What amp auto gives on this CPU, in words (for --help)."""
    return "bf16" if cpu_bf16_support().native else "fp32"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
