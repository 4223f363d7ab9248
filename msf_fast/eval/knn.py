"""k-nearest-neighbour classification on frozen, L2-normalised backbone features.

The search is exact: chunked matrix products in torch, or faiss's exact inner-product index (IndexFlatIP)
where faiss is installed and the features are on the CPU (`search="auto"`); both give the same neighbours.
"""
from __future__ import annotations

import contextlib
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from msf_fast.eval.arguments import SEARCHES
from msf_fast.model import pooled_features

WEIGHTED_VOTE_TEMPERATURE = 0.07


@torch.no_grad()
def batch_features(encoder: nn.Module, images: torch.Tensor, device: torch.device,
                   amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pooled float32 features of one batch (moved to `device` in channels-last memory, autocast to `amp_dtype`)."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        return pooled_features(encoder, images).float()


@torch.no_grad()
def extract_features(encoder: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
                     normalize: bool = True):
    """(features N x D, float32, unit norm unless `normalize=False`; labels N) over an (images, labels) loader."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    for images, batch_labels in loader:
        feats = batch_features(encoder, images, device, amp_dtype)
        features.append(F.normalize(feats, dim=1) if normalize else feats)
        labels.append(batch_labels.to(device))
    encoder.train(was_training)
    if not features:
        raise ValueError("the loader yielded no image")
    return torch.cat(features), torch.cat(labels)


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


@torch.no_grad()
def nearest_neighbours(gallery: torch.Tensor, queries: torch.Tensor, k: int, search: str = "auto",
                       chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each queries x k, of the k largest inner products, best first; k is capped at the
    gallery's size (the evaluation commands refuse a larger k before extracting anything)."""
    if k < 1:
        raise ValueError(f"k-NN with k={k}: k must be at least 1")
    k = min(k, gallery.shape[0])
    if search == "auto":
        search = "faiss" if faiss_available() and gallery.device.type == "cpu" else "torch"
    if search == "faiss":
        import faiss
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery.float().contiguous().numpy())
        similarities, indices = index.search(queries.float().contiguous().numpy(), k)
        return torch.from_numpy(similarities), torch.from_numpy(indices).long()
    if search != "torch":
        raise ValueError(f"unknown k-NN search {search!r}; expected one of {', '.join(SEARCHES)}")
    values, indices = [], []
    for start in range(0, queries.shape[0], chunk_size):
        top = (queries[start:start + chunk_size] @ gallery.T).topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def vote(similarities: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
         temperature: float | None = None) -> torch.Tensor:
    """The class each query's neighbours (queries x k, best first) vote for (ties: the lower class index): one
    vote each, or with a `temperature` the common weighted vote (Wu et al. 2018, used by DINO/solo-learn) of
    exp(similarity / T)."""
    weights = torch.ones_like(similarities) if temperature is None else (similarities / temperature).exp()
    votes = torch.zeros(similarities.shape[0], num_classes, device=weights.device, dtype=weights.dtype)
    votes.scatter_add_(1, neighbour_labels, weights)
    return votes.argmax(dim=1)


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                k: int = 20, num_classes: int | None = None, chunk_size: int = 1024,
                temperature: float | None = None, search: str = "torch") -> torch.Tensor:
    """`vote` of the k most cosine-similar training samples of each query."""
    num_classes = num_classes or int(train_labels.max()) + 1
    similarities, indices = nearest_neighbours(train_features, query_features, k, search, chunk_size)
    indices = indices.to(train_labels.device)
    return vote(similarities.to(train_labels.device), train_labels[indices], num_classes, temperature)


def weighted_knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                         k: int = 20, temperature: float = WEIGHTED_VOTE_TEMPERATURE, **options) -> torch.Tensor:
    return knn_predict(train_features, train_labels, query_features, k=k, temperature=temperature, **options)


@torch.no_grad()
def knn_accuracies(train_features, train_labels, val_features, val_labels, ks=(20,), search: str = "auto") -> dict:
    """{"top1_k20_majority": ..., "top1_k20_weighted": ...} for each k, from one search for the largest k."""
    num_classes = int(train_labels.max()) + 1
    similarities, indices = nearest_neighbours(train_features, val_features, max(ks), search)
    similarities = similarities.to(train_labels.device)
    neighbour_labels = train_labels[indices.to(train_labels.device)]
    report = {}
    for k in ks:
        for name, temperature in (("majority", None), ("weighted", WEIGHTED_VOTE_TEMPERATURE)):
            predictions = vote(similarities[:, :k], neighbour_labels[:, :k], num_classes, temperature)
            report[f"top1_k{k}_{name}"] = round((predictions == val_labels).float().mean().item(), 4)
    return report


def knn_evaluation(encoder: nn.Module, train_loader, val_loader, device: torch.device, ks=(20,),
                   amp_dtype: torch.dtype | None = None, search: str = "auto") -> dict:
    """Features of both sets, then `knn_accuracies`, plus the image counts."""
    train_features, train_labels = extract_features(encoder, train_loader, device, amp_dtype)
    val_features, val_labels = extract_features(encoder, val_loader, device, amp_dtype)
    return {"train_images": len(train_labels), "val_images": len(val_labels),
            **knn_accuracies(train_features, train_labels, val_features, val_labels, ks, search)}
