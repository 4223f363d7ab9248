"""The k-NN monitor of a training run: k-NN top-1 of the online backbone on held-out images, during training.

Held-out images (data.val_path) are classified by their k nearest neighbours among labelled images
(eval.knn_memory_path, default the training data), each optionally a seeded balanced subset
(eval.knn_val_per_class, eval.knn_memory_per_class), with the evaluation transform. Both sets are listed once,
when the monitor is built; rank 0 alone evaluates.
"""
from __future__ import annotations

import torch
from torch import nn

from msf_fast.config import KNN_K_DEFAULT as DEFAULT_K
from msf_fast.eval.knn import knn_evaluation
from pipelines import build_eval_loader
from pipelines.contract import check_same_classes
from pipelines.recipe import TwoViewRecipe


class KnnMonitor:
    def __init__(self, memory_path: str, val_path: str, recipe: TwoViewRecipe, *, k: int, batch_size: int,
                 workers: int, memory_per_class: int = 0, val_per_class: int = 0, seed: int = 0,
                 every: int = 0, final: bool = True):
        self.k, self.every, self.final = k, every, final
        self.memory = build_eval_loader(memory_path, recipe, batch_size=batch_size, workers=workers,
                                        per_class=memory_per_class, seed=seed)
        self.held_out = build_eval_loader(val_path, recipe, batch_size=batch_size, workers=workers,
                                          per_class=val_per_class, seed=seed)
        check_same_classes(self.memory, f"the searched images {memory_path}", self.held_out,
                           f"the held-out images {val_path}")
        searched = self.memory.num_samples
        if k > searched and k == DEFAULT_K:  # a default nobody typed shrinks to the data, as eval knn's does
            print(f"note: eval.knn_k={searched}: the searched images {memory_path} are only {searched} (fewer than "
                  f"the default {DEFAULT_K})", flush=True)
            self.k = searched
        elif k > searched:
            raise ValueError(f"eval.knn_k={k}: the searched images {memory_path} are only {searched}")

    @classmethod
    def from_config(cls, cfg, recipe: TwoViewRecipe) -> "KnnMonitor | None":
        """The monitor the config asks for, or None (no val_path, or neither periodic nor final k-NN)."""
        if not cfg.data.val_path or not (cfg.eval.knn_every or cfg.eval.knn_final):
            return None
        return cls(cfg.eval.knn_memory_path or cfg.data.train_path, cfg.data.val_path, recipe, k=cfg.eval.knn_k,
                   batch_size=2 * cfg.train.batch_size, workers=cfg.data.workers,
                   memory_per_class=cfg.eval.knn_memory_per_class, val_per_class=cfg.eval.knn_val_per_class,
                   seed=cfg.train.seed, every=cfg.eval.knn_every, final=cfg.eval.knn_final)

    def due(self, epoch: int, last: bool) -> bool:
        return bool(self.every and epoch % self.every == 0) or (last and self.final)

    def evaluate(self, encoder: nn.Module, device: torch.device, amp_dtype: torch.dtype | None) -> dict:
        """{"knn_top1": majority vote, "knn_weighted_top1": weighted vote}, at k."""
        report = knn_evaluation(encoder, self.memory, self.held_out, device, (self.k,), amp_dtype)
        return {"knn_top1": report[f"top1_k{self.k}_majority"], "knn_weighted_top1": report[f"top1_k{self.k}_weighted"]}
