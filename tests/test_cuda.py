"""GPU paths (skipped without CUDA): AMP step, bank search on the device."""
import pytest
import torch
import torch.nn.functional as F

from msf_fast.bank import MemoryBank
from msf_fast.ema import ForeachEMA
from msf_fast.model import MSF
from msf_fast.precision import resolve_precision
from msf_fast.step import train_step

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


def test_eval_features_and_probe_on_cuda():
    """bf16-autocast features on the GPU agree with float32 CPU features; the probe and k-NN run on the device."""
    from msf_fast.eval.knn import extract_features, knn_accuracies
    from msf_fast.eval.linear_probe import ProbeSettings, cached_batches, make_probe, train_probe

    torch.manual_seed(0)
    backbone = MSF(arch="resnet18", bank_size=64, topk=5, small_input=True).online
    images = torch.randn(64, 3, 32, 32)
    labels = torch.arange(64) % 4
    loader = [(images[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]
    cpu, _ = extract_features(backbone, loader, torch.device("cpu"))
    gpu, gpu_labels = extract_features(backbone.cuda(), loader, torch.device("cuda"), torch.bfloat16)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert F.cosine_similarity(cpu, gpu.cpu(), dim=1).min() > 0.99
    report = knn_accuracies(gpu, gpu_labels, gpu, gpu_labels, ks=(1,), search="auto")  # torch search on CUDA
    assert report["top1_k1_majority"] == 1.0
    settings = ProbeSettings(epochs=2, batch_size=16)
    result = train_probe(make_probe(gpu, 4), cached_batches(gpu, gpu_labels, 16, 0), settings, gpu, gpu_labels)
    assert 0 <= result["top1"] <= 1
