"""MSF: an online encoder + predictor regressed onto the mean of the target's k nearest neighbours.

Koohpayegani, Tejankar, Pirsiavash, "Mean Shift for Self-Supervised Learning", ICCV 2021.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from msf_fast.architectures import RESNETS
from msf_fast.bank import MemoryBank
from msf_fast.distributed import all_gather_rows
from msf_fast.single_pixel_conv import use_single_pixel_convs


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BN -> ReLU -> Linear, as in the paper (no BN on the output)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def resnet_backbone(arch: str, small_input: bool = False) -> nn.Module:
    """A randomly initialised torchvision ResNet.

    `small_input` swaps the 7x7/2 stem for a 3x3/1 convolution (keeping the max-pool),
    which suits 32-64 px images: the last feature map is then 4x smaller instead of 32x.
    Its convolutions compute a single-pixel output (the last stage at 32 px) as a matrix product: the same result,
    2.3x faster on a CPU (msf_fast/single_pixel_conv.py).
    """
    if arch not in RESNETS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(RESNETS)}")
    net = torchvision.models.__dict__[arch](weights=None)
    if small_input:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return use_single_pixel_convs(net)


def pooled_features(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled backbone features of a torchvision ResNet (its `fc` is skipped)."""
    x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(images))))
    x = encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x))))
    return torch.flatten(encoder.avgpool(x), 1)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class MSFOutput:
    loss: torch.Tensor
    purity: torch.Tensor | None = None
    neighbour_indices: torch.Tensor | None = None


class MSF(nn.Module):
    """Online = backbone + projection MLP (as the ResNet's `fc`), then the predictor MLP;
    target = an EMA copy of backbone + projection; a FIFO bank of target embeddings."""

    def __init__(self, arch: str = "resnet50", bank_size: int = 128_000, topk: int = 5,
                 momentum: float = 0.99, hidden_dim: int | None = None, proj_dim: int | None = None,
                 small_input: bool = False, bank_chunk_size: int = 65536,
                 bank_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not 0 < topk <= bank_size:
            raise ValueError(f"msf.topk must be in [1, bank size {bank_size}], got {topk}")
        self.arch = arch
        self.topk = topk
        self.momentum = momentum

        self.online = resnet_backbone(arch, small_input)
        feat_dim = self.online.fc.in_features
        self.feat_dim = feat_dim
        self.hidden_dim = hidden_dim or 2 * feat_dim
        self.proj_dim = proj_dim or feat_dim // 4
        self.online.fc = mlp(feat_dim, self.hidden_dim, self.proj_dim)
        self.predictor = mlp(self.proj_dim, self.hidden_dim, self.proj_dim)

        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad = False

        self.bank = MemoryBank(bank_size, self.proj_dim, chunk_size=bank_chunk_size, dtype=bank_dtype)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, online_view: torch.Tensor, target_view: torch.Tensor,
                labels: torch.Tensor | None = None) -> MSFOutput:
        # 1. embed both views (unit vectors, computed in fp32 even under autocast)
        query = F.normalize(at_least_fp32(self.predictor(self.online(online_view))), dim=1)
        with torch.no_grad():
            target = F.normalize(at_least_fp32(self.target(target_view)), dim=1)
            # 2. enqueue first, so every target finds itself as its nearest neighbour (the targets of all ranks,
            #    in rank order, under data parallelism: every rank's bank stays the same)
            self.bank.enqueue(all_gather_rows(target), None if labels is None else all_gather_rows(labels))
            # 3. the k bank entries nearest to the target
            neighbour_indices = self.bank.nearest(target, self.topk)
            neighbours = self.bank.gather(neighbour_indices).to(query.dtype)
        # 4. mean squared distance of the query to those k neighbours
        distances = 2 - 2 * torch.einsum("bd,bkd->bk", query, neighbours)
        loss = distances.mean(dim=1).mean()

        purity = None
        if labels is not None:
            purity = (self.bank.labels[neighbour_indices] == labels[:, None]).float().mean()
        return MSFOutput(loss=loss, purity=purity, neighbour_indices=neighbour_indices)
