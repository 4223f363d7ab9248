"""The paper's linear evaluation: a linear classifier on frozen backbone features.

Protocol (the original eval_linear.py): features are L2-normalised, then standardised with the mean and
variance of the normalised centre-crop features of the training set; Linear(features, classes); SGD lr 0.01,
momentum 0.9, weight decay 1e-4, batch 256, 40 epochs, lr x 0.1 after epochs 15 and 30. The probe trains either
on features cached once from centre crops (fast) or on features of freshly augmented images every epoch
(random resized crop + flip: paper-faithful). Validation uses centre crops; top-1 and top-5 are reported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msf_fast.eval.arguments import ProbeSettings
from msf_fast.eval.knn import batch_features


class NormalizeThenStandardize(nn.Module):
    """x / ||x||, then (x - mean) / sqrt(var + 1e-5) with the training set's statistics of normalised features."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-5):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("inv_std", torch.rsqrt(var + eps))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (F.normalize(features, dim=1) - self.mean) * self.inv_std


def feature_standardizer(train_features: torch.Tensor) -> NormalizeThenStandardize:
    """The standardisation of these (centre-crop) training features, on their device."""
    var, mean = torch.var_mean(F.normalize(train_features.float(), dim=1), dim=0)
    return NormalizeThenStandardize(mean, var)


def probe_with(standardizer: NormalizeThenStandardize, num_classes: int) -> nn.Sequential:
    """A fresh linear layer behind a (shared, untrained) standardisation."""
    return nn.Sequential(standardizer, nn.Linear(standardizer.mean.shape[0], num_classes,
                                                 device=standardizer.mean.device))


def make_probe(train_features: torch.Tensor, num_classes: int) -> nn.Sequential:
    """The probe for these (centre-crop) training features: their standardisation, then a linear layer."""
    return probe_with(feature_standardizer(train_features), num_classes)


def topk_accuracies(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {f"top{k}": round(hits[:, :k].any(dim=1).float().mean().item(), 4) for k in ks}


@torch.no_grad()
def evaluate_probe(probe: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict:
    probe.eval()
    return topk_accuracies(probe(features), labels)


def cached_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    """Per epoch: the cached features in a new seeded order (epoch e uses seed + e), last batch partial."""
    def epoch_batches(epoch: int):
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(labels), generator=generator).to(features.device)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            yield features[chosen], labels[chosen]
    return epoch_batches


def augmented_batches(backbone: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None):
    """Per epoch: frozen-backbone features of the loader's augmented images (a new order per pass)."""
    def epoch_batches(epoch: int):
        backbone.eval()
        for images, labels in loader:
            yield batch_features(backbone, images, device, amp_dtype), labels.to(device)
    return epoch_batches


def train_probe(probe: nn.Module, epoch_batches, settings: ProbeSettings, val_features: torch.Tensor,
                val_labels: torch.Tensor, progress=None) -> dict:
    """SGD on the probe over `epoch_batches(epoch)`; validation after every epoch. Returns the final top-1/top-5
    and the per-epoch history (train loss, val top-1)."""
    if settings.epochs < 1:
        raise ValueError(f"the probe needs at least one epoch, got {settings.epochs}")
    torch.manual_seed(settings.seed)
    probe[-1].reset_parameters()  # the linear layer's initialisation follows the seed
    optimizer = torch.optim.SGD(probe.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.milestones), gamma=0.1)
    history = []
    for epoch in range(settings.epochs):
        probe.train()
        loss_sum, seen = torch.zeros((), device=val_features.device), 0
        for features, labels in epoch_batches(epoch):
            loss = F.cross_entropy(probe(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
        schedule.step()
        scores = evaluate_probe(probe, val_features, val_labels)
        history.append({"epoch": epoch + 1, "train_loss": round((loss_sum / max(seen, 1)).item(), 4),
                        "val_top1": scores["top1"]})
        if progress is not None:
            progress(history[-1])
    return {**scores, "history": history}  # the last epoch's validation
