"""What one streaming pass over the data keeps for the figures: the chosen images (the same for every
checkpoint), their features under each backbone and their thumbnails, and each query's nearest neighbours.
Only what is drawn is kept, so memory stays bounded at ImageNet scale."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msf_fast.eval.common import amp_dtype
from msf_fast.eval.knn import batch_features


class ClassSampler:
    """The first `per_class` images (file order) of `classes` classes drawn at random, or of every class when
    `classes` is None. Each label gets a key seeded by (seed, label) and the lowest keys win, so the draw does not
    depend on the order classes appear in, and a winning class is already kept from its first image on."""

    def __init__(self, classes: int | None, per_class: int, seed: int):
        self.classes, self.per_class, self.seed = classes, per_class, seed
        self.members: dict[int, list[int]] = {}
        self.seen: set[int] = set()
        self._keys: dict[int, float] = {}

    def offer(self, indices: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """(batch positions to keep, earlier indices no longer kept)."""
        kept, dropped = [], []
        for position, (index, label) in enumerate(zip(indices, labels)):
            if label not in self.members and not self._admit(label, dropped):
                continue
            if len(self.members[label]) < self.per_class:
                self.members[label].append(index)
                kept.append(position)
        return kept, dropped

    def finished(self, next_index: int) -> bool:
        return False

    def _admit(self, label: int, dropped: list[int]) -> bool:
        # A class refused or evicted once has a key above every later threshold: it never qualifies again.
        if label in self.seen:
            return False
        self.seen.add(label)
        if self.classes is None or len(self.members) < self.classes:
            self.members[label] = []
            return True
        worst = max(self.members, key=self._key)
        if self._key(label) > self._key(worst):
            return False
        dropped.extend(self.members.pop(worst))
        self.members[label] = []
        return True

    def _key(self, label: int) -> float:
        if label not in self._keys:
            self._keys[label] = float(np.random.default_rng([self.seed, label]).random())
        return self._keys[label]


class RandomSampler:
    """`count` images drawn uniformly without replacement: seeded random keys in stream order, lowest keys win."""

    def __init__(self, count: int, seed: int):
        self.count = count
        self.rng = np.random.default_rng(seed)
        self.heap: list[tuple[float, int]] = []  # (-key, index): the largest kept key on top

    def offer(self, indices: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        kept, dropped = [], []
        for position, (index, key) in enumerate(zip(indices, self.rng.random(len(indices)))):
            if len(self.heap) < self.count:
                heapq.heappush(self.heap, (-key, index))
            elif key < -self.heap[0][0]:
                dropped.append(heapq.heapreplace(self.heap, (-key, index))[1])
            else:
                continue
            kept.append(position)
        return kept, dropped

    def finished(self, next_index: int) -> bool:
        return False


class IndexSampler:
    """Exactly the images at these positions of the file order."""

    def __init__(self, indices):
        self.wanted = set(indices)
        self.last = max(self.wanted, default=-1)

    def offer(self, indices: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        return [position for position, index in enumerate(indices) if index in self.wanted], []

    def finished(self, next_index: int) -> bool:
        return next_index > self.last


@dataclass
class Selection:
    indices: list[int]  # positions in the data's file order
    labels: torch.Tensor  # (n,) int64
    features: list[torch.Tensor]  # one (n, D) per checkpoint: unit norm, float32, CPU
    thumbnails: torch.Tensor | None  # (n, t, t, 3) uint8
    images_read: int


@torch.no_grad()
def select_images(loader, sampler, backbones: list[nn.Module], device: torch.device,
                  thumbnail: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Selection:
    """Stream (images, labels) batches; keep the sampler's images with their features under every backbone and,
    with `thumbnail`, their thumbnails."""
    kept: dict[int, tuple[int, list[torch.Tensor], torch.Tensor | None]] = {}
    read = 0
    for images, labels in loader:
        if sampler.finished(read):
            break
        indices = list(range(read, read + len(labels)))
        read += len(labels)
        positions, dropped = sampler.offer(indices, labels.tolist())
        if positions:
            chosen = images[positions]
            features = [f.cpu() for f in features_of(backbones, chosen, device)]
            thumbs = thumbnail(chosen) if thumbnail else None
            for row, position in enumerate(positions):
                kept[indices[position]] = (int(labels[position]), [f[row] for f in features],
                                           thumbs[row] if thumbs is not None else None)
        for index in dropped:
            kept.pop(index, None)
    order = sorted(kept)
    return Selection(
        indices=order,
        labels=torch.tensor([kept[i][0] for i in order], dtype=torch.int64),
        features=[torch.stack([kept[i][1][b] for i in order]) if order else torch.empty(0)
                  for b in range(len(backbones))],
        thumbnails=torch.stack([kept[i][2] for i in order]) if thumbnail and order else None,
        images_read=read)


@torch.no_grad()
def features_of(backbones: list[nn.Module], images: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Unit-norm pooled features (float32, on `device`) of a batch under each backbone."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return [F.normalize(batch_features(backbone, images, device, amp_dtype(device)), dim=1) for backbone in backbones]


def make_thumbnails(images: torch.Tensor, mean, std, size: int) -> torch.Tensor:
    """(N, size, size, 3) uint8 on the CPU from normalised NCHW images: un-normalised, resized with antialiasing."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    pixels = (images.float() * std + mean).clamp(0, 1)
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()



@dataclass
class Neighbours:
    """The k gallery images most similar to each of Q queries, best first."""
    similarities: torch.Tensor  # (Q, k) float32; -inf where no image was found
    indices: torch.Tensor  # (Q, k) positions in the gallery's file order
    labels: torch.Tensor  # (Q, k)
    thumbnails: torch.Tensor  # (Q, k, t, t, 3) uint8

    @classmethod
    def empty(cls, queries: int, k: int, thumb: int) -> "Neighbours":
        return cls(torch.full((queries, k), -math.inf), torch.full((queries, k), -1, dtype=torch.int64),
                   torch.full((queries, k), -1, dtype=torch.int64),
                   torch.zeros(queries, k, thumb, thumb, 3, dtype=torch.uint8))

    def entering(self, similarities: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the batch images that may enter some query's top k (ties included)."""
        return (similarities >= self.similarities[:, -1:]).any(dim=0)

    def merge(self, similarities: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor,
              thumbnails: torch.Tensor) -> "Neighbours":
        """The best k of these and a batch's (Q, B) similarities."""
        k = self.indices.shape[1]
        top = torch.cat([self.similarities, similarities], dim=1).topk(k, dim=1)
        from_batch = top.indices >= k
        in_self = top.indices.clamp(max=k - 1)
        in_batch = (top.indices - k).clamp(min=0)
        rows = torch.arange(len(top.indices))[:, None]

        def pick(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            mask = from_batch.view(*from_batch.shape, *[1] * (old.dim() - 2))
            return torch.where(mask, new[in_batch], old[rows, in_self])

        return Neighbours(top.values, pick(self.indices, indices), pick(self.labels, labels),
                          pick(self.thumbnails, thumbnails))


@torch.no_grad()
def streamed_neighbours(loader, backbones: list[nn.Module], queries: Selection, k: int, device: torch.device,
                       thumbnail: Callable[[torch.Tensor], torch.Tensor],
                       exclude_queries: bool) -> tuple[list[Neighbours], int]:
    """Per backbone, each query's k most cosine-similar gallery images (one streaming pass over the gallery),
    and the gallery's size. With `exclude_queries` the queries are gallery images and never their own neighbour."""
    thumb = queries.thumbnails.shape[1]
    best = [Neighbours.empty(len(queries.indices), k, thumb) for _ in backbones]
    query_features = [f.to(device) for f in queries.features]
    query_indices = torch.tensor(queries.indices)
    read = 0
    for images, labels in loader:
        indices = torch.arange(read, read + len(labels))
        read += len(labels)
        similarities = [(queries_b @ features.T).cpu() for queries_b, features
                        in zip(query_features, features_of(backbones, images, device))]
        if exclude_queries:
            for batch_similarities in similarities:
                batch_similarities[query_indices[:, None] == indices[None, :]] = -math.inf
        # Thumbnails only of the images that may enter a top k: past the first batches, few do.
        entering = torch.stack([best_b.entering(s) for best_b, s in zip(best, similarities)]).any(dim=0)
        thumbs = torch.zeros(len(labels), thumb, thumb, 3, dtype=torch.uint8)
        if entering.any():
            thumbs[entering] = thumbnail(images[entering])
        labels = labels.to(torch.int64).cpu()
        best = [best_b.merge(s, indices, labels, thumbs) for best_b, s in zip(best, similarities)]
    return best, read

