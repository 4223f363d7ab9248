"""The MSF loss, bank and EMA against direct formulas and the original module."""
import copy

import pytest
import torch
import torch.nn.functional as F

from msf_fast.bank import MemoryBank
from msf_fast.checkpoint import original_to_msf_state
from msf_fast.ema import ForeachEMA, reference_ema_update
from msf_fast.model import MSF
from msf_fast.step import Precision, train_step
from msf_fast.reference import OriginalMeanShift

FP32 = Precision(None, "cpu")


def small_msf(**kwargs):
    torch.manual_seed(0)
    args = dict(arch="resnet18", bank_size=32, topk=5, proj_dim=None)
    args.update(kwargs)
    return MSF(**args)


def images(n, seed, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_loss_matches_dense_formula_after_enqueue():
    model = small_msf()
    online, target, labels = images(8, 1), images(8, 2), torch.arange(8) % 3
    with torch.no_grad():
        query = F.normalize(model.predictor(model.online(online)), dim=1)
        tgt = F.normalize(model.target(target), dim=1)
    bank_before = model.bank.embeddings.clone()
    out = model(online, target, labels)
    bank = bank_before.clone()
    bank[:8] = tgt  # enqueued before the search
    dist_t = 2 - 2 * tgt @ bank.T
    dist_q = 2 - 2 * query @ bank.T
    idx = dist_t.topk(5, dim=1, largest=False).indices
    expected = dist_q.gather(1, idx).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.neighbour_indices[:, 0], torch.arange(8)), "each target is its own nearest neighbour"
    torch.testing.assert_close(model.bank.embeddings, bank)


def test_topk_1_is_byol():
    model = small_msf(topk=1)
    online, target = images(8, 3), images(8, 4)
    with torch.no_grad():
        query = F.normalize(model.predictor(model.online(online)), dim=1)
        tgt = F.normalize(model.target(target), dim=1)
    out = model(online, target)
    byol = (2 - 2 * F.cosine_similarity(query, tgt)).mean()
    torch.testing.assert_close(out.loss, byol, rtol=1e-5, atol=1e-6)
    assert out.purity is None


def test_purity_counts_neighbours_with_the_query_label():
    model = small_msf(bank_size=16, topk=2)
    model.bank.labels.fill_(7)
    out = model(images(8, 5), images(8, 6), torch.full((8,), 7))
    assert out.purity.item() == pytest.approx(1.0)
    model.bank.labels.fill_(-1)
    out = model(images(8, 5), images(8, 6), torch.full((8,), 3))
    # only the query itself (enqueued with label 3) can match among its 2 neighbours
    assert 0.5 <= out.purity.item() <= 1.0


def test_training_steps_match_the_original_module():
    # float64: in float32 both trajectories are correct but rounding differences (einsum on the
    # gathered neighbours vs. a dense matmul) grow ~10x per step through small-batch BN.
    torch.manual_seed(0)
    original = OriginalMeanShift("resnet18", m=0.99, mem_bank_size=32, topk=5).double()
    ours = MSF(arch="resnet18", bank_size=32, topk=5, momentum=0.99).double()
    ours.load_state_dict(original_to_msf_state(original.state_dict()))
    opt_a = torch.optim.SGD([p for p in original.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                            weight_decay=1e-4)
    opt_b = torch.optim.SGD(ours.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ema = ForeachEMA(ours.online, ours.target)
    for step in range(6):  # 6 x 8 = 48 > 32: the FIFO wraps around
        online, target = images(8, 10 + step).double(), images(8, 20 + step).double()
        labels = torch.arange(8) % 4
        loss_a, purity_a = original(online, target, labels)
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        out = train_step(ours, ema, opt_b, None, FP32, online, target, labels, momentum=0.99)
        torch.testing.assert_close(out.loss, loss_a, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.purity, purity_a)
    torch.testing.assert_close(ours.bank.embeddings, original.queue, rtol=1e-10, atol=1e-10)
    assert int(ours.bank.pointer) == int(original.queue_ptr) == 16
    for (name, a), b in zip(original.encoder_t.state_dict().items(), ours.target.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=name)
    for a, b in zip(original.predict_q.parameters(), ours.predictor.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_no_gradient_reaches_the_target():
    model = small_msf()
    ema = ForeachEMA(model.online, model.target)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    before = copy.deepcopy(model.target.state_dict())
    train_step(model, ema, optimizer, None, FP32, images(8, 1), images(8, 2), None, momentum=1.0)
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    assert all(p.grad is not None for p in model.online.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    for name, value in model.target.named_parameters():  # momentum 1: EMA leaves the target as it was
        assert torch.equal(value, before[name]), name


def test_bank_fifo_wraps_around():
    bank = MemoryBank(size=8, dim=4)
    batches = [F.normalize(torch.randn(4, 4), dim=1) for _ in range(3)]
    for i, batch in enumerate(batches):
        bank.enqueue(batch, torch.full((4,), i))
    assert torch.equal(bank.embeddings[:4], batches[2]) and torch.equal(bank.embeddings[4:], batches[1])
    assert bank.labels.tolist() == [2, 2, 2, 2, 1, 1, 1, 1]
    assert int(bank.pointer) == 4
    with pytest.raises(ValueError, match="multiple of the batch"):
        bank.enqueue(torch.randn(3, 4))


def test_bank_pointer_survives_state_dict_round_trip():
    bank = MemoryBank(size=8, dim=4)
    bank.enqueue(torch.randn(4, 4))
    other = MemoryBank(size=8, dim=4)
    other.load_state_dict(bank.state_dict())
    other.enqueue(torch.ones(4, 4))
    assert torch.equal(other.embeddings[4:], torch.ones(4, 4))


@pytest.mark.parametrize("chunk", [1000, 777, 10_000, 3])
def test_chunked_search_equals_dense(chunk):
    generator = torch.Generator().manual_seed(0)
    bank = MemoryBank(size=10_000, dim=64, chunk_size=chunk)
    bank.embeddings.copy_(F.normalize(torch.randn(10_000, 64, generator=generator), dim=1))
    queries = F.normalize(torch.randn(32, 64, generator=generator), dim=1)
    found = bank.nearest(queries, 5)
    dense_sims, dense_idx = (queries @ bank.embeddings.T).topk(5, dim=1)
    found_sims = (queries[:, None, :] * bank.embeddings[found]).sum(-1)
    torch.testing.assert_close(found_sims, dense_sims, rtol=0, atol=1e-5)
    assert (found == dense_idx).float().mean() > 0.99  # identical up to exact ties


def test_search_rejects_k_beyond_bank():
    with pytest.raises(ValueError, match="top-k"):
        MemoryBank(size=8, dim=4).nearest(torch.randn(2, 4), 9)


def test_foreach_ema_equals_per_parameter_reference():
    torch.manual_seed(0)
    a = small_msf()
    with torch.no_grad():  # make online and target differ
        for p in a.online.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    b = copy.deepcopy(a)
    ema = ForeachEMA(a.online, a.target)
    for momentum in (0.99, 0.9, 0.996):
        ema.update(momentum)
        reference_ema_update(b.online, b.target, momentum)
    for (name, x), y in zip(a.target.named_parameters(), b.target.parameters()):
        assert torch.equal(x, y), name  # same arithmetic, same rounding
    assert not torch.equal(a.target.conv1.weight, a.online.conv1.weight)
