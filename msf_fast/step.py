"""One MSF training step, read top to bottom: EMA, forward under autocast, backward, optimizer step."""
from __future__ import annotations

import torch

from msf_fast.devices import resolve_device  # noqa: F401 (its home was here)
from msf_fast.model import MSF, MSFOutput
from msf_fast.precision import Precision


def bank_dtype(name: str, device: torch.device, precision: Precision) -> torch.dtype:
    """auto: the AMP dtype on CUDA (half the bank's memory traffic; top-5 agrees with float32 on >= 99.6 % of
    entries, tests/test_bank_precision.py), float32 on the CPU."""
    if name == "auto":
        return precision.dtype if device.type == "cuda" and precision.dtype is not None else torch.float32
    return getattr(torch, name)


def make_sgd(parameters, lr: float, momentum: float, weight_decay: float, device: torch.device):
    """The step's optimizer: SGD, fused on CUDA; on the CPU torch's per-tensor loop (its default there: foreach gave
    the same weights and saved about 1 ms of a 400-ms ResNet-18 step, not worth another code path)."""
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=device.type == "cuda" or None)


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
