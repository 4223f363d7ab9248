"""Data parallelism with torchrun: process-group set-up from the environment, and the one collective MSF adds.

    torchrun --nproc_per_node=8 train_imagenet.py --config-file configs/rn50_200_epochs.yaml ...
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --nproc_per_node=8 ...

Every rank keeps a full, identical memory bank: the targets of all ranks are gathered in rank order and enqueued
everywhere, so each rank searches the same bank for its own targets. Gradients are averaged by DDP.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def init_from_environment(device: str = "auto") -> ProcessInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT); one process
    without torchrun. NCCL on CUDA (each rank on cuda:LOCAL_RANK), gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ProcessInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        store, rank, world_size = next(dist.rendezvous("env://"))
        # A restarted group (torchrun --max-restarts) may get the store of the failed attempt, whose keys still
        # hold the dead processes' addresses: one namespace per attempt.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if use_cuda else "gloo", store=dist.PrefixStore(f"attempt_{attempt}/", store),
                                rank=rank, world_size=world_size)
    return ProcessInfo(rank, world_size, local_rank)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order (the same result on every rank); the tensor
    itself in a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the MSF module: gradients of the online network and predictor are averaged. Buffers (bank, BN
    statistics) are made equal to rank 0's once at start, not every step: the bank stays in step through the
    gather of the targets, and BN statistics stay per rank, as in the original's DataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:  # torch >= 2.14
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    # Older torch: broadcast_buffers=False also skips the start-up sync of the buffers, so do that by hand.
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def shut_down() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
