"""One MSF training step, read top to bottom: EMA, forward under autocast, backward, optimizer step."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from msf_fast.model import MSF, MSFOutput


@dataclass
class Precision:
    """Autocast dtype (None = fp32) and whether a GradScaler is needed (fp16 only)."""
    dtype: torch.dtype | None
    device_type: str

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    if amp == "off":
        return Precision(None, device.type)
    if amp == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            amp = "fp16"
        else:
            amp = "bf16"
    return Precision({"bf16": torch.bfloat16, "fp16": torch.float16}[amp], device.type)


def train_step(model: MSF, ema, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
               precision: Precision, online_view: torch.Tensor, target_view: torch.Tensor,
               labels: torch.Tensor | None, momentum: float) -> MSFOutput:
    # The original updates the target at the start of each forward, before encoding the target view.
    ema.update(momentum)
    with precision.autocast():
        out = model(online_view, target_view, labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        out.loss.backward()
        optimizer.step()
    return out
