"""A half-precision memory bank finds (almost) the same neighbours and the same loss as a float32 one.

Embeddings are clustered like a trained encoder's: 20,000 bank rows are noisy copies of 200 unit
centres (cosine to their centre ~0.7), queries are noisy copies of bank rows.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msf_fast.bank import MemoryBank, similarities
from msf_fast.model import MSF

BANK_SIZE, DIM, CENTRES, BATCH, TOPK = 20_000, 128, 200, 500, 5
MIN_TOP5_OVERLAP = 0.99
# Measured on this data: top-5 overlap 99.6% (bfloat16) and 99.8% (float16), against 97.0% and 99.6% when
# the scores are rounded to the half dtype too; |loss(half) - loss(float32)| 8e-6 and 3e-6 (loss 0.517).
LOSS_TOLERANCE = {torch.bfloat16: 1e-4, torch.float16: 3e-5}


def clustered(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(bank rows, queries): unit vectors around CENTRES random centres."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(CENTRES, DIM, generator=generator), dim=1)
    members = centres[torch.randint(0, CENTRES, (BANK_SIZE,), generator=generator)]
    rows = F.normalize(members + torch.randn(BANK_SIZE, DIM, generator=generator) / DIM ** 0.5, dim=1)
    picked = rows[torch.randperm(BANK_SIZE, generator=generator)[:BATCH]]
    queries = F.normalize(picked + 0.3 * torch.randn(BATCH, DIM, generator=generator) / DIM ** 0.5, dim=1)
    return rows, queries


def bank_of(rows: torch.Tensor, dtype: torch.dtype = torch.float32, chunk_size: int = 4096) -> MemoryBank:
    bank = MemoryBank(BANK_SIZE, DIM, chunk_size=chunk_size, dtype=dtype)
    bank.embeddings.copy_(rows.to(dtype))
    return bank


def top_k_overlap(found: torch.Tensor, expected: torch.Tensor) -> float:
    """Fraction of the expected neighbour entries that were found (as sets per query)."""
    hits = (found[:, :, None] == expected[:, None, :]).any(dim=2).sum().item()
    return hits / expected.numel()


@pytest.fixture(scope="module")
def embeddings():
    return clustered()


@pytest.fixture(scope="module")
def float32_neighbours(embeddings):
    rows, queries = embeddings
    return bank_of(rows).nearest(queries, TOPK)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_bank_keeps_the_float32_top5(dtype, embeddings, float32_neighbours):
    rows, queries = embeddings
    found = bank_of(rows, dtype).nearest(queries, TOPK)
    assert top_k_overlap(found, float32_neighbours) >= MIN_TOP5_OVERLAP


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_bank_gives_the_float32_loss(dtype, embeddings):
    """The model's own loss head (encoders replaced by identities) on a float32 and a half bank."""
    rows, queries = embeddings
    targets = F.normalize(queries + 0.1 * torch.randn(queries.shape, generator=torch.Generator().manual_seed(1))
                          / DIM ** 0.5, dim=1)
    model = MSF(arch="resnet18", bank_size=BANK_SIZE, topk=TOPK, proj_dim=DIM)
    model.online, model.predictor, model.target = nn.Identity(), nn.Identity(), nn.Identity()
    losses = {}
    for bank_dtype in (torch.float32, dtype):
        model.bank = bank_of(rows, bank_dtype)
        losses[bank_dtype] = model(queries, targets).loss.item()
    assert 0.1 < losses[torch.float32] < 2
    assert abs(losses[dtype] - losses[torch.float32]) <= LOSS_TOLERANCE[dtype]


def test_float32_neighbours_do_not_depend_on_the_chunk_size(embeddings, float32_neighbours):
    rows, queries = embeddings
    for chunk_size in (BANK_SIZE, 1000, 3333):  # one chunk, even chunks, a ragged last chunk
        assert torch.equal(bank_of(rows, chunk_size=chunk_size).nearest(queries, TOPK), float32_neighbours)


def test_search_ignores_autocast(embeddings, float32_neighbours):
    """Under bf16 autocast (as in a training step) a float32 bank still scores in float32."""
    rows, queries = embeddings
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = bank_of(rows).nearest(queries, TOPK)
    assert torch.equal(found, float32_neighbours)


def test_queries_are_cast_to_the_bank_dtype(embeddings):
    rows, queries = embeddings
    bank = bank_of(rows, torch.bfloat16)
    assert torch.equal(bank.nearest(queries, TOPK), bank.nearest(queries.to(torch.bfloat16), TOPK))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_scores_are_exact_float32_sums(dtype, embeddings):
    rows, queries = embeddings
    q, r = queries[:8].to(dtype), rows[:64].to(dtype)
    scores = similarities(q, r)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, q.double() @ r.double().T, rtol=0, atol=1e-6, check_dtype=False)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_search_matches_the_cpu_search(dtype, embeddings):
    rows, queries = embeddings
    cpu_bank = bank_of(rows, dtype)
    cuda_bank = bank_of(rows, dtype).to("cuda")
    q, r = queries[:64].to(dtype), rows[:4096].to(dtype)
    cuda_scores = similarities(q.cuda(), r.cuda())
    assert cuda_scores.dtype == torch.float32
    torch.testing.assert_close(cuda_scores.cpu(), similarities(q, r), rtol=0, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        found = cuda_bank.nearest(queries.cuda(), TOPK).cpu()
    assert top_k_overlap(found, cpu_bank.nearest(queries, TOPK)) >= 0.999
