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
from tqdm import tqdm

from msf_fast.model import pooled_features

SEARCHES = ("auto", "torch", "faiss")


@torch.no_grad()
def extract_features(encoder: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
                     normalize: bool = True, progress: str = ""):
    """(features N x D, float32, unit norm unless `normalize=False`; labels N) over an (images, labels) loader;
    a progress bar titled `progress` when given."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    batches = tqdm(loader, desc=progress, unit="batch", leave=False, dynamic_ncols=True) if progress else loader
    for images, batch_labels in batches:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast:
            feats = pooled_features(encoder, images).float()
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
    """(similarities, indices), each queries x k, of the k largest inner products, best first."""
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


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                k: int = 20, num_classes: int | None = None, chunk_size: int = 1024,
                temperature: float | None = None, search: str = "torch") -> torch.Tensor:
    """Vote of the k most cosine-similar training samples (ties: the lower class index): one vote each, or with a
    `temperature` the common weighted vote (Wu et al. 2018, used by DINO/solo-learn) of exp(similarity / T)."""
    num_classes = num_classes or int(train_labels.max()) + 1
    similarities, indices = nearest_neighbours(train_features, query_features, k, search, chunk_size)
    similarities, indices = similarities.to(train_labels.device), indices.to(train_labels.device)
    weights = torch.ones_like(similarities) if temperature is None else (similarities / temperature).exp()
    votes = torch.zeros(similarities.shape[0], num_classes, device=weights.device, dtype=weights.dtype)
    votes.scatter_add_(1, train_labels[indices], weights)
    return votes.argmax(dim=1)


def weighted_knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                         k: int = 20, temperature: float = 0.07, **options) -> torch.Tensor:
    return knn_predict(train_features, train_labels, query_features, k=k, temperature=temperature, **options)


def knn_accuracies(train_features, train_labels, val_features, val_labels, ks=(20,), search: str = "auto") -> dict:
    """{"top1_k20_majority": ..., "top1_k20_weighted": ...} for each k."""
    report = {}
    for k in ks:
        for name, predict in (("majority", knn_predict), ("weighted", weighted_knn_predict)):
            predictions = predict(train_features, train_labels, val_features, k=k, search=search)
            report[f"top1_k{k}_{name}"] = round((predictions == val_labels).float().mean().item(), 4)
    return report


def knn_evaluation(encoder: nn.Module, train_loader, val_loader, device: torch.device, ks=(20,),
                   amp_dtype: torch.dtype | None = None, search: str = "auto") -> dict:
    """Features of both sets, then `knn_accuracies`, plus the image counts."""
    train_features, train_labels = extract_features(encoder, train_loader, device, amp_dtype)
    val_features, val_labels = extract_features(encoder, val_loader, device, amp_dtype)
    return {"train_images": len(train_labels), "val_images": len(val_labels),
            **knn_accuracies(train_features, train_labels, val_features, val_labels, ks, search)}
