"""The CUDA-graph EMA: the same update as ForeachEMA, bit for bit, with a changing momentum."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from msf_fast.ema import ForeachEMA, GraphedEMA, _DtypeGroup, make_ema

MOMENTA = [0.99, 0.996, 0.9, 0.5, 0.9999, 0.99]


def online_and_target(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    online = torchvision.models.resnet18(weights=None, num_classes=16).to(dtype)
    target = copy.deepcopy(online)
    with torch.no_grad():  # start apart, so every update moves the target
        for p in target.parameters():
            p.add_(torch.randn_like(p))
    return online, target


def perturb_online(pairs: list[tuple[nn.Module, nn.Module]], step: int) -> None:
    """The same pseudo-optimizer step on every online copy, so the update reads new values each time."""
    generator = torch.Generator().manual_seed(1000 + step)
    noise = [torch.randn(p.shape, generator=generator, dtype=p.dtype) * 1e-2
             for p in pairs[0][0].parameters()]
    with torch.no_grad():
        for online, _ in pairs:
            for p, n in zip(online.parameters(), noise):
                p.add_(n.to(p.device))


def assert_targets_equal(a: nn.Module, b: nn.Module) -> None:
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.cpu(), pb.cpu())


def test_factory_picks_foreach_off_cuda():
    online, target = online_and_target()
    assert type(make_ema(online, target)) is ForeachEMA
    assert type(make_ema(online, target, "cpu")) is ForeachEMA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_momentum_rounds_like_python_float_momentum(dtype):
    """The ops the graph replays (momentum held in 0-d tensors) equal ForeachEMA's, run eagerly on the CPU."""
    eager_online, eager_target = online_and_target(dtype=dtype)
    tensor_online, tensor_target = copy.deepcopy(eager_online), copy.deepcopy(eager_target)
    eager = ForeachEMA(eager_online, eager_target)
    group = _DtypeGroup([p.detach() for p in tensor_target.parameters()],
                        [p.detach() for p in tensor_online.parameters()])
    before = [p.clone() for p in eager_target.parameters()]
    for step, momentum in enumerate(MOMENTA):
        perturb_online([(eager_online, eager_target), (tensor_online, tensor_target)], step)
        eager.update(momentum)
        group.fill(momentum)
        group.apply()
        assert_targets_equal(eager_target, tensor_target)
    assert not all(torch.equal(b, p) for b, p in zip(before, eager_target.parameters()))


def test_graphed_ema_off_cuda_is_the_foreach_update():
    eager_online, eager_target = online_and_target()
    graphed_online, graphed_target = copy.deepcopy(eager_online), copy.deepcopy(eager_target)
    eager = ForeachEMA(eager_online, eager_target)
    graphed = GraphedEMA(graphed_online, graphed_target)
    assert not graphed.graphed
    for step, momentum in enumerate(MOMENTA):
        perturb_online([(eager_online, eager_target), (graphed_online, graphed_target)], step)
        eager.update(momentum)
        graphed.update(momentum)
        assert_targets_equal(eager_target, graphed_target)
    assert graphed.captures == 0


def test_mismatched_encoders_are_refused():
    with pytest.raises(ValueError, match="different parameter shapes"):
        GraphedEMA(nn.Linear(4, 4), nn.Linear(4, 3))


@pytest.mark.cuda
def test_graph_replay_matches_eager_foreach_bit_for_bit_on_cuda():
    device = torch.device("cuda")
    eager_online, eager_target = online_and_target()
    eager_online.to(device, memory_format=torch.channels_last)
    eager_target.to(device, memory_format=torch.channels_last)
    graphed_online, graphed_target = copy.deepcopy(eager_online), copy.deepcopy(eager_target)
    eager = ForeachEMA(eager_online, eager_target)
    graphed = make_ema(graphed_online, graphed_target, device)
    assert isinstance(graphed, GraphedEMA) and graphed.graphed
    before = [p.clone() for p in graphed_target.parameters()]
    for step, momentum in enumerate(MOMENTA):
        perturb_online([(eager_online, eager_target), (graphed_online, graphed_target)], step)
        eager.update(momentum)
        graphed.update(momentum)
        torch.cuda.synchronize()
        assert_targets_equal(eager_target, graphed_target)
    assert graphed.captures == 1
    assert not all(torch.equal(b, p) for b, p in zip(before, graphed_target.parameters()))


@pytest.mark.cuda
def test_graph_replay_follows_the_current_stream():
    """Work queued before `update` on a side stream is seen by the replay, which runs on that stream."""
    device = torch.device("cuda")
    online, target = (m.to(device) for m in online_and_target())
    expected_online, expected_target = copy.deepcopy(online), copy.deepcopy(target)
    ema, expected = GraphedEMA(online, target), ForeachEMA(expected_online, expected_target)
    ema.update(0.99)
    expected.update(0.99)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.no_grad():
            for p in online.parameters():
                p.mul_(2)
        ema.update(0.9)
    torch.cuda.synchronize()
    with torch.no_grad():
        for p in expected_online.parameters():
            p.mul_(2)
    expected.update(0.9)
    assert_targets_equal(target, expected_target)
    assert ema.captures == 1
