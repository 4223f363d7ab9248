"""Target-encoder update t <- m*t + (1-m)*q over all parameters, as a few fused multi-tensor ops.

Buffers (BN running statistics) are not averaged: the target's come from its own forward passes,
as in the original code. `GraphedEMA` replays the same ops as one captured CUDA graph; `make_ema`
picks it on CUDA and `ForeachEMA` elsewhere.
"""
from __future__ import annotations

from collections import defaultdict

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


class _DtypeGroup:
    """Parameters of one dtype and their static 0-d momentum and 1-momentum tensors.

    The scalars share the parameters' dtype: that is what the fused CUDA kernel for
    `_foreach_mul_(list, tensor)` requires, and for float32/float64 parameters it rounds m and 1-m
    exactly as the Python-float path of `ForeachEMA` does (float64 -> parameter dtype, once).
    """

    def __init__(self, target: list[torch.Tensor], online: list[torch.Tensor]):
        self.target, self.online = target, online
        self.momentum = torch.zeros((), dtype=target[0].dtype, device=target[0].device)
        self.one_minus_momentum = torch.zeros_like(self.momentum)

    def fill(self, momentum: float) -> None:
        self.momentum.fill_(momentum)
        self.one_minus_momentum.fill_(1.0 - momentum)  # computed in float64 on the host, like ForeachEMA

    def apply(self) -> None:
        torch._foreach_mul_(self.target, self.momentum)
        torch._foreach_add_(self.target, torch._foreach_mul(self.online, self.one_minus_momentum))


class GraphedEMA(ForeachEMA):
    """`ForeachEMA` whose update is captured once as a CUDA graph and replayed every step.

    The momentum lives in static device tensors filled before each replay, so a momentum schedule
    needs no re-capture. The first `update` runs eagerly on a side stream (the warm-up the CUDA
    graphs docs ask for, and a real update), then captures; capture itself launches nothing, so the
    first call changes the target exactly once. Like `ForeachEMA`, it holds the parameters'
    storage: move the model to its device before building this, and load checkpoints in place.
    Parameters not on CUDA are updated by the plain foreach path.
    """

    def __init__(self, online: nn.Module, target: nn.Module):
        super().__init__(online, target)
        devices = {p.device for p in self.target_params + self.online_params}
        self.device = next(iter(devices)) if len(devices) == 1 else None
        self.graphed = self.device is not None and self.device.type == "cuda"
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._groups: list[_DtypeGroup] = []
        if self.graphed:
            by_dtype = defaultdict(lambda: ([], []))
            for t, q in zip(self.target_params, self.online_params):
                by_dtype[t.dtype][0].append(t)
                by_dtype[t.dtype][1].append(q)
            self._groups = [_DtypeGroup(targets, onlines) for targets, onlines in by_dtype.values()]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        if not self.graphed:
            super().update(momentum)
            return
        with torch.cuda.device(self.device):
            for group in self._groups:
                group.fill(momentum)
            if self._graph is None:
                self._warm_up_and_capture()
            else:
                self._graph.replay()

    def _apply(self) -> None:
        for group in self._groups:
            group.apply()

    def _warm_up_and_capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._apply()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: loader threads (DALI, pinned-memory copies) may keep using CUDA during capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._apply()
        self._graph = graph
        self.captures += 1


def make_ema(online: nn.Module, target: nn.Module, device: torch.device | str | None = None) -> ForeachEMA:
    """`GraphedEMA` when the encoders live on CUDA, `ForeachEMA` otherwise.

    `device` defaults to the target's first parameter's device; build this after moving the model.
    """
    if device is None:
        device = next(target.parameters()).device
    if torch.device(device).type == "cuda":
        return GraphedEMA(online, target)
    return ForeachEMA(online, target)


@torch.no_grad()
def reference_ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """The original per-parameter loop; kept as the test oracle and the benchmark baseline."""
    for q, t in zip(online.parameters(), target.parameters()):
        t.data = t.data * momentum + q.data * (1.0 - momentum)
