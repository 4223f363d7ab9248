"""A convolution with a single-pixel output, computed as a matrix product, equals nn.Conv2d's in value and gradient,
and every other convolution is nn.Conv2d's own."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msf_fast.model import resnet_backbone
from msf_fast.single_pixel_conv import SinglePixelConv2d, use_single_pixel_convs


def counting_conv2d(monkeypatch):
    calls = []
    original = F.conv2d

    def conv2d(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)
    monkeypatch.setattr(F, "conv2d", conv2d)
    return calls


@pytest.mark.parametrize("kernel, stride, padding, size, bias, single", [
    (3, 1, 1, 1, False, True),   # ResNet's 3x3 convolutions on the last stage at 32 px: the centre tap
    (3, 2, 1, 2, False, True),   # its first, strided one, from a 2x2 map: the lower-right 2x2 taps
    (1, 2, 0, 2, False, True),   # its downsampling shortcut: the top-left input pixel
    (3, 1, 0, 3, True, True),    # no padding, every tap, with a bias
    ((3, 5), (1, 2), (1, 2), (1, 2), True, True),  # rectangular everything
    (7, 2, 3, 2, False, True),   # ResNet's stem on a 2x2 image
    (3, 1, 1, 2, False, False),  # a 2x2 output: nn.Conv2d's path
    (3, 2, 1, 4, True, False),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients_equal_nn_conv2d(monkeypatch, kernel, stride, padding, size, bias, single, channels_last):
    torch.manual_seed(0)
    reference = nn.Conv2d(6, 5, kernel, stride, padding, bias=bias)
    ours = use_single_pixel_convs(copy.deepcopy(reference))
    assert type(ours) is SinglePixelConv2d
    size = (size, size) if isinstance(size, int) else size
    x = torch.randn(4, 6, *size)
    if channels_last:  # the weights too, as the trainer lays them out: the taps are then taken in another order
        x = x.to(memory_format=torch.channels_last)
        reference, ours = (conv.to(memory_format=torch.channels_last) for conv in (reference, ours))
    x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    calls = counting_conv2d(monkeypatch)
    y_ours = ours(x_ours)
    assert len(calls) == (0 if single else 1)
    y_reference = reference(x_reference)
    assert y_ours.shape == y_reference.shape
    torch.testing.assert_close(y_ours, y_reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(y_reference)
    incoming = []
    ours.weight.register_hook(lambda grad: incoming.append(grad.stride()))
    (y_ours * upstream).sum().backward()
    (y_reference * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_reference.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    # the gradient comes in the weight's layout (strides of size-1 dimensions aside): autograd need not copy it
    assert [s for s, n in zip(incoming[0], ours.weight.shape) if n > 1] == [
        s for s, n in zip(ours.weight.stride(), ours.weight.shape) if n > 1]
    if bias:
        torch.testing.assert_close(ours.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)


def test_grouped_and_dilated_convolutions_stay_nn_conv2d(monkeypatch):
    calls = counting_conv2d(monkeypatch)
    for conv in (nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 3, padding=2, dilation=2)):
        use_single_pixel_convs(conv)(torch.randn(2, 4, 1, 1))
    assert len(calls) == 2


def test_the_backbone_takes_the_rule_on_its_last_stage_only_and_keeps_torchvisions_state(monkeypatch):
    import torchvision
    backbone = resnet_backbone("resnet18")
    assert all(type(m) is SinglePixelConv2d for m in backbone.modules() if isinstance(m, nn.Conv2d))
    assert backbone.state_dict().keys() == torchvision.models.resnet18().state_dict().keys()
    calls = counting_conv2d(monkeypatch)
    with torch.no_grad():
        backbone(torch.randn(2, 3, 32, 32))
    # stem, layer1 (4), layer2 (4 + shortcut), layer3 (4 + shortcut) convolve; layer4's 5 are products at 32 px
    assert len(calls) == 1 + 4 + 5 + 5
    calls.clear()
    with torch.no_grad():
        backbone(torch.randn(2, 3, 64, 64))
    assert len(calls) == 20


def test_an_exported_backbone_computes_the_same_features_in_plain_torchvision():
    """What a user loads into torchvision (python -m msf_fast.export) sees the demo's images as our backbone does."""
    import torchvision
    torch.manual_seed(0)
    ours = resnet_backbone("resnet18").to(memory_format=torch.channels_last)
    plain = torchvision.models.resnet18()
    plain.load_state_dict(ours.state_dict())
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ours.train(), plain.train()  # batch statistics, as in training
        torch.testing.assert_close(ours(images.to(memory_format=torch.channels_last)), plain(images),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_on_cuda_in_bf16_the_product_is_the_convolution():
    """Where training runs: a CUDA device under bf16 autocast, channels-last (runs only where CUDA exists)."""
    torch.manual_seed(0)
    reference = nn.Conv2d(256, 512, 3, 2, 1, bias=False).cuda().to(memory_format=torch.channels_last)
    ours = use_single_pixel_convs(copy.deepcopy(reference))
    x = torch.randn(16, 256, 2, 2, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_ours, y_reference = ours(x), reference(x)
    assert y_ours.dtype == y_reference.dtype == torch.bfloat16
    torch.testing.assert_close(y_ours.float(), y_reference.float(), rtol=2e-2, atol=2e-2)
