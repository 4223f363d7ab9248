"""What every evaluation command shares: the options for data and device, progress bars, the run folder results
are written to, and the autocast dtype of feature extraction."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm


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

    @property
    def classes(self) -> list[str]:
        return self.loader.classes

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
