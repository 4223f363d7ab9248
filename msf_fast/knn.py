"""k-nearest-neighbour classification on frozen, L2-normalised backbone features."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from msf_fast.model import pooled_features


@torch.no_grad()
def extract_features(encoder: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None):
    """(features N x D, unit norm, float32; labels N) over an (images, labels) loader."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    for images, batch_labels in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast:
            feats = pooled_features(encoder, images)
        features.append(F.normalize(feats.float(), dim=1))
        labels.append(batch_labels.to(device))
    encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                k: int = 20, num_classes: int | None = None, chunk_size: int = 1024,
                temperature: float | None = None) -> torch.Tensor:
    """Vote of the k most cosine-similar training samples (ties: the lower class index): one vote each, or with a
    `temperature` the common weighted vote (Wu et al. 2018, used by DINO/solo-learn) of exp(similarity / T)."""
    k = min(k, train_features.shape[0])
    num_classes = num_classes or int(train_labels.max()) + 1
    predictions = []
    for start in range(0, query_features.shape[0], chunk_size):
        top = (query_features[start:start + chunk_size] @ train_features.T).topk(k, dim=1)
        weights = torch.ones_like(top.values) if temperature is None else (top.values / temperature).exp()
        votes = torch.zeros(top.values.shape[0], num_classes, device=top.values.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top.indices], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def weighted_knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                         k: int = 20, temperature: float = 0.07, **options) -> torch.Tensor:
    return knn_predict(train_features, train_labels, query_features, k=k, temperature=temperature, **options)


def knn_accuracy(encoder: nn.Module, train_loader, val_loader, device: torch.device, k: int = 20,
                 amp_dtype: torch.dtype | None = None) -> float:
    train_features, train_labels = extract_features(encoder, train_loader, device, amp_dtype)
    val_features, val_labels = extract_features(encoder, val_loader, device, amp_dtype)
    predictions = knn_predict(train_features, train_labels, val_features, k=k)
    return (predictions == val_labels).float().mean().item()

