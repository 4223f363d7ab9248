"""Data parallelism on the CPU with gloo: identical banks and weights on every rank, and the 2-process run equal
to a 1-process run of the same global batch where the math says it must.

Batch normalisation makes each rank's step depend on its own batch statistics (as in the original's
DataParallel, which also normalised per device), so a 2-process run equals a 1-process run exactly only when
each rank's batch has the statistics of the global batch: here both ranks get the same images, and the single
process gets them twice. (BN running variances still differ there: n/(n-1) of a doubled batch; they are not
compared.) Float64 makes the comparison tight.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from msf_fast.ema import ForeachEMA
from msf_fast.model import MSF
from msf_fast.step import Precision, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, STEPS, BANK = 4, 4, 24


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    images = torch.randn(2, BATCH, 3, 16, 16, generator=generator, dtype=torch.float64)
    return images[0], images[1], torch.randint(0, 3, (BATCH,), generator=generator)


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = MSF("resnet18", bank_size=BANK, topk=3, small_input=True, hidden_dim=32, proj_dim=16).double()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, ForeachEMA(model.online, model.target), optimizer


def state(model: MSF) -> dict:
    return {"bank": model.bank.embeddings.clone(), "labels": model.bank.labels.clone(),
            "online": [p.detach().clone() for p in model.online.parameters()],
            "predictor": [p.detach().clone() for p in model.predictor.parameters()],
            "target": [p.detach().clone() for p in model.target.parameters()]}


def run_rank(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from msf_fast.distributed import data_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model, ema, optimizer = build()
        parallel = data_parallel(model, torch.device("cpu"))
        losses = []
        for step in range(STEPS):
            online, target, labels = batch(step)  # the same images on both ranks (see the module docstring)
            result = train_step(parallel, ema, optimizer, None, Precision(None, "cpu"), online, target,
                                labels + 10 * rank, 0.9)
            losses.append(result.loss.item())
        torch.save({"state": state(model), "losses": losses}, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_identical_banks_and_match_one_process(tmp_path):
    outs = [str(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    mp.start_processes(_entry, args=(2, free_port(), outs), nprocs=2, start_method="spawn")
    ranks = [torch.load(out) for out in outs]
    for key in ("bank", "labels"):
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key])
    for key in ("online", "predictor", "target"):
        assert all(torch.equal(a, b) for a, b in zip(ranks[0]["state"][key], ranks[1]["state"][key]))
    labels = ranks[0]["state"]["labels"]
    # FIFO in rank order: each step enqueued rank 0's labels, then rank 1's (offset by 10)
    assert ((labels >= 10).view(-1, BATCH).float().mean(1) == torch.tensor([0.0, 1.0] * (BANK // (2 * BATCH)))).all()

    model, ema, optimizer = build()
    losses = []
    for step in range(STEPS):
        online, target, labels = batch(step)
        out = train_step(model, ema, optimizer, None, Precision(None, "cpu"), torch.cat([online, online]),
                         torch.cat([target, target]), torch.cat([labels, labels + 10]), 0.9)
        losses.append(out.loss.item())
    single = state(model)
    # The runs differ only by summation order (float64 rounding, 1e-16), which BN over 4-image batches amplifies
    # ~30x per step: 1e-12 after two steps, 1e-8 after four. A wrong gather order, gradient scale or bank
    # update would differ by 1e-2 or more.
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(losses), rtol=0, atol=1e-9)
    torch.testing.assert_close(ranks[0]["state"]["bank"], single["bank"], rtol=0, atol=1e-7)
    assert torch.equal(ranks[0]["state"]["labels"], single["labels"])
    for key in ("online", "predictor", "target"):
        for a, b in zip(ranks[0]["state"][key], single[key]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def _entry(rank: int, world_size: int, port: int, outs: list[str]) -> None:
    run_rank(rank, world_size, port, outs[rank])
