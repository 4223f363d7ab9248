"""What every evaluation command shares: loading a backbone from any checkpoint format, its name for tables,
the options for data and device, and the run folder results are written to."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from msf_fast.checkpoint import FORMAT, infer_arch, load_checkpoint, model_from_checkpoint
from msf_fast.model import resnet_backbone


def load_backbone(path: str | Path) -> nn.Module:
    """The online ResNet of a checkpoint (ours or the original's), or an exported torchvision backbone."""
    return backbone_from_checkpoint(load_checkpoint(path), path)


def load_labelled_backbone(path: str | Path) -> tuple[nn.Module, str]:
    """`load_backbone` and `checkpoint_label` from one read of the file."""
    checkpoint = load_checkpoint(path)
    return backbone_from_checkpoint(checkpoint, path), label_of(checkpoint, path)


def checkpoint_label(path: str | Path) -> str:
    """"epoch 12" for our checkpoints and the original's (they record the epoch), else the file name."""
    return label_of(load_checkpoint(path), path)


def backbone_from_checkpoint(checkpoint, path: str | Path) -> nn.Module:
    if isinstance(checkpoint, dict) and ("format" in checkpoint or "state_dict" in checkpoint):
        return model_from_checkpoint(checkpoint, path).online
    state = {key: value for key, value in checkpoint.items() if not key.startswith("fc.")}
    arch, small_input = infer_arch(state, prefix="")
    backbone = resnet_backbone(arch, small_input)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("fc.") for key in missing):
        raise ValueError(f"{path}: not a torchvision {arch} backbone (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    return backbone


def label_of(checkpoint, path: str | Path) -> str:
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    if isinstance(epoch, int) and (checkpoint.get("format") == FORMAT or "state_dict" in checkpoint):
        return f"epoch {epoch}"
    return Path(path).stem


def run_folder(checkpoint: str | Path) -> Path:
    """Where a checkpoint's results go by default: the run folder for runs/X/checkpoints/*.pt, else its folder."""
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def add_data_options(parser: argparse.ArgumentParser, resolution: int = 224) -> None:
    parser.add_argument("--resolution", type=int, default=resolution,
                        help="centre-crop size; the shorter side is first resized to resolution x 256/224")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4, help="loader workers")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--out", default="",
                        help="folder for the JSON, figures and report.md (default: the first checkpoint's run folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class WithProgress:
    """A loader whose every pass shows a progress bar (on stderr, cleared when the pass ends)."""

    def __init__(self, loader, title: str, enabled: bool = True):
        self.loader, self.title, self.enabled = loader, title, enabled

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        yield from tqdm(self.loader, desc=self.title, unit="batch", leave=False, dynamic_ncols=True,
                        disable=not self.enabled)


def output_folder(args: argparse.Namespace, checkpoint: str | Path) -> Path:
    folder = Path(args.out) if args.out else run_folder(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Feature extraction runs in bf16 autocast on CUDA; on the CPU in float32 (bf16 is slower there)."""
    return torch.bfloat16 if device.type == "cuda" else None
