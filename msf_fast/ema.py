"""Target-encoder update t <- m*t + (1-m)*q over all parameters, as a few fused multi-tensor ops.

Buffers (BN running statistics) are not averaged: the target's come from its own forward passes,
as in the original code. `ForeachEMA.update` is the seam for a CUDA-graph-captured variant.
"""
from __future__ import annotations

import torch
from torch import nn


class ForeachEMA:
    def __init__(self, online: nn.Module, target: nn.Module):
        self.online_params = [p.detach() for p in online.parameters()]
        self.target_params = [p.detach() for p in target.parameters()]
        if [p.shape for p in self.online_params] != [p.shape for p in self.target_params]:
            raise ValueError("online and target encoders have different parameter shapes")

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        # The original's arithmetic, rounding for rounding: t*m + q*(1-m).
        torch._foreach_mul_(self.target_params, momentum)
        torch._foreach_add_(self.target_params, torch._foreach_mul(self.online_params, 1.0 - momentum))


@torch.no_grad()
def reference_ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """The original per-parameter loop; kept as the test oracle and the benchmark baseline."""
    for q, t in zip(online.parameters(), target.parameters()):
        t.data = t.data * momentum + q.data * (1.0 - momentum)
