"""Checkpoints: atomic writes, resume state, and import of checkpoints saved by the original MSF code."""
from __future__ import annotations

import argparse
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from msf_fast.model import MSF

FORMAT = "msf-fast"
VERSION = 1


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save to a temporary file beside `path`, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
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
                   config: dict | None) -> dict:
    """Everything a resumed run needs. `epoch` counts completed epochs, `step` completed steps."""
    return {
        "format": FORMAT, "version": VERSION,
        "model_args": model_args(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
        "rng": rng_state(),
        "config": config,
    }


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    # Original checkpoints pickle their argparse options beside the tensors.
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - reported as one line naming the file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {reason})") from None


def is_original(checkpoint: dict) -> bool:
    state = checkpoint.get("state_dict", {})
    return any(k.startswith("encoder_q.") for k in state)


def load_model(path: str | Path, map_location="cpu") -> MSF:
    """An `MSF` from one of our checkpoints or from an original MSF checkpoint."""
    return model_from_checkpoint(load_checkpoint(path, map_location), path)


def model_from_checkpoint(checkpoint: dict, path: str | Path) -> MSF:
    """`load_model` for a checkpoint already loaded from `path` (named in errors)."""
    if checkpoint.get("format") == FORMAT:
        model = MSF(**checkpoint["model_args"])
        model.load_state_dict(checkpoint["model"])
        return model
    if is_original(checkpoint):
        return original_model(checkpoint, path)
    raise ValueError(f"{path}: neither an msf-fast nor an original MSF checkpoint")


# ----------------------------------------------------------------------------- original MSF code
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


def load_original(path: str | Path, map_location="cpu", topk: int | None = None,
                  momentum: float | None = None) -> MSF:
    """An `MSF` holding exactly the weights, bank and pointer of a checkpoint from the original code.

    Architecture and head sizes come from the tensors; top-k and momentum from the saved options
    (`opt`) when present, else the paper's 5 and 0.99.
    """
    return original_model(load_checkpoint(path, map_location), path, topk, momentum)


def original_model(checkpoint: dict, path: str | Path, topk: int | None = None,
                   momentum: float | None = None) -> MSF:
    """`load_original` for a checkpoint already loaded from `path` (named in errors)."""
    if not is_original(checkpoint):
        raise ValueError(f"{path}: no 'state_dict' with encoder_q.* keys; not an original MSF checkpoint")
    state = strip_data_parallel(checkpoint["state_dict"])
    opt = checkpoint.get("opt")
    arch, small_input = infer_arch(state)
    hidden_dim, feat_dim = state["encoder_q.fc.0.weight"].shape
    proj_dim = state["encoder_q.fc.3.weight"].shape[0]
    bank_size = state["queue"].shape[0]
    model = MSF(arch=arch, small_input=small_input, hidden_dim=hidden_dim, proj_dim=proj_dim,
                bank_size=bank_size,
                topk=topk or getattr(opt, "topk", 5),
                momentum=momentum if momentum is not None else getattr(opt, "momentum", 0.99))
    try:
        model.load_state_dict(original_to_msf_state(state))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return model


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
