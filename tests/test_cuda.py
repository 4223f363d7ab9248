"""GPU paths (skipped without CUDA): AMP step, bank search on the device."""
import pytest
import torch
import torch.nn.functional as F

from msf_fast.bank import MemoryBank
from msf_fast.ema import ForeachEMA
from msf_fast.model import MSF
from msf_fast.step import resolve_precision, train_step

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_on_cuda(amp):
    device = torch.device("cuda")
    precision = resolve_precision(amp, device)
    model = MSF(arch="resnet18", bank_size=64, topk=5).to(device, memory_format=torch.channels_last)
    ema = ForeachEMA(model.online, model.target)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if precision.needs_scaler else None
    x = torch.randn(16, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    losses = [train_step(model, ema, optimizer, scaler, precision, x, x.flip(3), None, 0.99).loss.item()
              for _ in range(3)]
    assert all(0 <= loss <= 4 for loss in losses)
    assert all(p.grad is None for p in model.target.parameters())


def test_bank_search_on_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(0)
    bank = MemoryBank(50_000, 128, chunk_size=8192)
    bank.embeddings.copy_(F.normalize(torch.randn(50_000, 128, generator=generator), dim=1))
    queries = F.normalize(torch.randn(64, 128, generator=generator), dim=1)
    cpu = bank.nearest(queries, 5)
    gpu = bank.to("cuda").nearest(queries.cuda(), 5).cpu()
    assert (cpu == gpu).float().mean() > 0.99
