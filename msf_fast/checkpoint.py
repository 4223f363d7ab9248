"""Checkpoints: written atomically; read through one entry point, whatever wrote them.

    read_checkpoint(path) -> Checkpoint: .model() (an MSF), .backbone() (the online ResNet), .label

A file is one of three kinds: our training checkpoint ("msf-fast"), a checkpoint of the original MSF code
(UMBCvision/MSF: `state_dict` with `encoder_q.*`, `encoder_t.*`, `predict_q.*`, `queue`, `labels`, `queue_ptr`,
with or without the `.module.` infix of DataParallel) or a torchvision ResNet state dict (`msf_fast.export`).
"""
from __future__ import annotations

import argparse
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dataset_prep.staging import StagedPath
from msf_fast.checkpoint_files import NotACheckpoint, refuse_non_checkpoint
from msf_fast.model import MSF, resnet_backbone

FORMAT = "msf-fast"
VERSION = 1
OURS, ORIGINAL, BACKBONE = "msf-fast", "original", "backbone"


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save under a temporary name beside `path`, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with StagedPath(str(path)) as staged, open(staged.temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def model_args(model: MSF) -> dict:
    return dict(arch=model.arch, small_input=model.online.conv1.kernel_size == (3, 3),
                hidden_dim=model.hidden_dim, proj_dim=model.proj_dim, bank_size=model.bank.size,
                topk=model.topk, momentum=model.momentum)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's key array as a tensor, so that checkpoints load with torch.load(weights_only=True)
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model: MSF, optimizer, scaler, epoch: int, step: int, steps_per_epoch: int,
                   config: dict | None, data: dict | None = None) -> dict:
    """Everything a resumed run needs. `epoch` counts completed epochs, `step` completed steps; `data` identifies
    the training data (format, class names, sample count)."""
    return {
        "format": FORMAT, "version": VERSION,
        "model_args": model_args(model),
        "data": data,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
        "rng": rng_state(),
        "config": config,
    }


@dataclass
class Checkpoint:
    """A checkpoint file read once; `kind` is OURS, ORIGINAL or BACKBONE."""
    path: Path
    content: dict
    kind: str

    def model(self, topk: int | None = None, momentum: float | None = None) -> MSF:
        """The whole MSF (online, target, predictor, bank). For an original checkpoint, top-k and momentum come
        from its saved options (`opt`) unless given, else the paper's 5 and 0.99."""
        if self.kind == OURS:
            model = MSF(**self.content["model_args"])
            model.load_state_dict(self.content["model"])
            return model
        if self.kind == ORIGINAL:
            return self._original_model(topk, momentum)
        raise ValueError(f"{self.path}: a backbone without the MSF heads and bank, not a training checkpoint")

    def backbone(self) -> nn.Module:
        """The online ResNet (its `fc` is the projection head, or absent for an exported backbone)."""
        if self.kind != BACKBONE:
            return self.model().online
        state = {key: value for key, value in self.content.items() if not key.startswith("fc.")}
        try:
            arch, small_input = infer_arch(state, prefix="")
        except ValueError as error:
            raise NotACheckpoint(f"{self.path}: a state dict of tensors but not a torchvision ResNet ({error})") \
                from None
        backbone = resnet_backbone(arch, small_input)
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if unexpected or any(not key.startswith("fc.") for key in missing):
            raise ValueError(f"{self.path}: not a torchvision {arch} backbone (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})")
        return backbone

    @property
    def training_resolution(self) -> int | None:
        """The crop size the run trained at (its data.resolution: the final one with progressive resizing), where
        the checkpoint records it (ours do; the original's trained at 224, exported backbones say nothing)."""
        data = (self.content.get("config") or {}).get("data") if self.kind == OURS else None
        resolution = data.get("resolution") if isinstance(data, dict) else None
        return resolution if isinstance(resolution, int) and resolution > 0 else None

    @property
    def label(self) -> str:
        """"epoch 12" for ours and the original's (they record the epoch), "epoch 12, step 7,431" for ours saved
        mid-epoch (two such panels both read "epoch 12"), else the file name."""
        epoch = self.content.get("epoch")
        if self.kind == BACKBONE or not isinstance(epoch, int):
            return self.path.stem
        step, per_epoch = self.content.get("step"), self.content.get("steps_per_epoch")
        mid_epoch = isinstance(step, int) and isinstance(per_epoch, int) and per_epoch > 0 and step % per_epoch
        return f"epoch {epoch}, step {step:,}" if mid_epoch else f"epoch {epoch}"

    def _original_model(self, topk: int | None, momentum: float | None) -> MSF:
        state = strip_data_parallel(self.content["state_dict"])
        opt = self.content.get("opt")
        arch, small_input = infer_arch(state)
        hidden_dim, _ = state["encoder_q.fc.0.weight"].shape
        model = MSF(arch=arch, small_input=small_input, hidden_dim=hidden_dim,
                    proj_dim=state["encoder_q.fc.3.weight"].shape[0], bank_size=state["queue"].shape[0],
                    topk=topk or getattr(opt, "topk", 5),
                    momentum=momentum if momentum is not None else getattr(opt, "momentum", 0.99))
        try:
            model.load_state_dict(original_to_msf_state(state))
        except ValueError as error:
            raise ValueError(f"{self.path}: {error}") from None
        return model


def read_checkpoint(path: str | Path, map_location="cpu") -> Checkpoint:
    """Load a checkpoint of any of the three kinds; NotACheckpoint (one line naming the file and what it seems to
    be: a .beton, a text file, a truncated torch file, a folder, ...) for anything else."""
    path = Path(path)
    refuse_non_checkpoint(path)
    # Original checkpoints pickle their argparse options beside the tensors.
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - reported as one line naming the file
        raise NotACheckpoint(f"{path}: {unreadable_torch_file(path, error)}") from None
    if not isinstance(content, dict):
        raise NotACheckpoint(f"{path}: a torch file holding a {type(content).__name__}, not a checkpoint (a dict)")
    if content.get("format") == FORMAT:
        return Checkpoint(path, content, OURS)
    if any(key.startswith("encoder_q.") for key in content.get("state_dict", {})):
        return Checkpoint(path, content, ORIGINAL)
    if "conv1.weight" in content and all(isinstance(value, torch.Tensor) for value in content.values()):
        return Checkpoint(path, content, BACKBONE)  # every torchvision ResNet has conv1 (any dict of tensors did)
    keys = ", ".join(map(str, list(content)[:4])) + (", ..." if len(content) > 4 else "")
    raise NotACheckpoint(f"{path}: a torch file holding a dict ({keys or 'empty'}), neither an msf-fast nor an "
                         "original MSF checkpoint nor a torchvision backbone")


def unreadable_torch_file(path: Path, error: Exception) -> str:
    """Why torch.load failed on what looks like a torch file, in a few words (no advice to load unsafely)."""
    message = str(error)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if unsafe:
        return (f"a torch file holding Python objects ({unsafe.group(1)}) besides tensors: not a checkpoint of "
                "msf-fast, of the original MSF code or of msf_fast.export, and not loaded (that would run its code)")
    size = path.stat().st_size
    if "central directory" in message or "zip archive" in message or "EOF" in message or "Ran out of input" in \
            message or isinstance(error, EOFError):
        return f"a truncated or damaged torch file ({size:,} bytes): copy or save it again"
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"not a readable torch checkpoint ({type(error).__name__}: {first[:200]})"


# ----------------------------------------------------------------------------- the original MSF code
_ORIGINAL_PREFIXES = {"encoder_q.": "online.", "encoder_t.": "target.", "predict_q.": "predictor."}
_ORIGINAL_BUFFERS = {"queue": "bank.embeddings", "labels": "bank.labels", "queue_ptr": "bank.pointer"}
# (block counts, bottleneck) -> arch; wide/ResNeXt variants are told apart by layer1's 3x3 conv.
_DEPTHS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
           ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
           ((3, 8, 36, 3), True): "resnet152"}
_VARIANTS = {("resnet50", (128, 4)): "resnext50_32x4d", ("resnet50", (128, 128)): "wide_resnet50_2",
             ("resnet101", (256, 8)): "resnext101_32x8d", ("resnet101", (128, 128)): "wide_resnet101_2"}


def strip_data_parallel(state: dict) -> dict:
    """`encoder_q.module.conv1.weight` -> `encoder_q.conv1.weight` (the original wrapped each net in DataParallel)."""
    return {re.sub(r"^(encoder_q|encoder_t|predict_q)\.module\.", r"\1.", k): v for k, v in state.items()}


def infer_arch(state: dict, prefix: str = "encoder_q.") -> tuple[str, bool]:
    """(torchvision arch name, small_input) from the tensors of a ResNet state dict."""
    blocks = []
    for layer in range(1, 5):
        indices = {int(m.group(1)) for k in state
                   if (m := re.match(rf"{re.escape(prefix)}layer{layer}\.(\d+)\.", k))}
        blocks.append(len(indices))
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    arch = _DEPTHS.get((tuple(blocks), bottleneck))
    if arch is None:
        raise ValueError(f"cannot infer a torchvision ResNet from blocks {blocks} (bottleneck={bottleneck})")
    conv2 = state[f"{prefix}layer1.0.conv2.weight"].shape
    arch = _VARIANTS.get((arch, (conv2[0], conv2[1])), arch)
    small_input = state[f"{prefix}conv1.weight"].shape[-1] == 3
    return arch, small_input


def original_to_msf_state(state: dict) -> dict:
    """An original MSF state dict (without the DataParallel infix) renamed to `MSF`'s keys."""
    renamed = {}
    for key, value in state.items():
        if key in _ORIGINAL_BUFFERS:
            renamed[_ORIGINAL_BUFFERS[key]] = value.reshape(()) if key == "queue_ptr" else value
            continue
        for old, new in _ORIGINAL_PREFIXES.items():
            if key.startswith(old):
                renamed[new + key[len(old):]] = value
                break
        else:
            raise ValueError(f"unexpected key {key!r} in an original MSF checkpoint")
    return renamed
