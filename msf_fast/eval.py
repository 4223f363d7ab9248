"""Evaluation of a pretrained backbone.

    python -m msf_fast.eval knn --ckpt CKPT --train TRAIN --val VAL [--k 1 20] [--resolution 224] [--out knn.json]

CKPT is one of our training checkpoints, a torchvision backbone written by `msf_fast.export`, or a checkpoint
of the original MSF code. TRAIN/VAL are ImageFolders, .beton files or TFRecord stores, read with the evaluation
transform (shorter side to 256/224 of the resolution, centre crop). Features are the pooled backbone outputs,
L2-normalised, extracted in AMP on CUDA; the search is exact and chunked. Reported per k: top-1 of the majority
vote and of the weighted vote (exp(similarity / 0.07), labelled as such).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

from msf_fast.checkpoint import infer_arch, load_checkpoint, load_model
from msf_fast.knn import extract_features, knn_predict, weighted_knn_predict
from msf_fast.model import resnet_backbone
from msf_fast.step import resolve_device


def load_backbone(path: str | Path) -> nn.Module:
    """The online ResNet of a checkpoint (ours or the original's), or an exported torchvision backbone."""
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and ("format" in checkpoint or "state_dict" in checkpoint):
        return load_model(path).online
    state = {key: value for key, value in checkpoint.items() if not key.startswith("fc.")}
    arch, small_input = infer_arch(state, prefix="")
    backbone = resnet_backbone(arch, small_input)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("fc.") for key in missing):
        raise ValueError(f"{path}: not a torchvision {arch} backbone (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    return backbone


def knn_report(backbone: nn.Module, train_loader, val_loader, device: torch.device, ks=(1, 20)) -> dict:
    amp = torch.bfloat16 if device.type == "cuda" else None
    train_features, train_labels = extract_features(backbone.to(device), train_loader, device, amp)
    val_features, val_labels = extract_features(backbone, val_loader, device, amp)
    report = {"train_images": len(train_labels), "val_images": len(val_labels)}
    for k in ks:
        for name, predict in (("majority", knn_predict), ("weighted", weighted_knn_predict)):
            predictions = predict(train_features, train_labels, val_features, k=k)
            report[f"top1_k{k}_{name}"] = round((predictions == val_labels).float().mean().item(), 4)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msf_fast.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    knn = sub.add_parser("knn", help="k-NN top-1 of frozen backbone features")
    knn.add_argument("--ckpt", required=True)
    knn.add_argument("--train", required=True, help="labelled images searched (folder, .beton or TFRecord store)")
    knn.add_argument("--val", required=True, help="held-out images classified")
    knn.add_argument("--k", type=int, nargs="+", default=[1, 20])
    knn.add_argument("--resolution", type=int, default=224)
    knn.add_argument("--batch-size", type=int, default=256)
    knn.add_argument("--workers", type=int, default=4)
    knn.add_argument("--device", default="auto")
    knn.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)

    from pipelines import build_eval_loader, two_view_recipe
    try:
        device = resolve_device(args.device)
        backbone = load_backbone(args.ckpt)
        recipe = two_view_recipe("w/s", args.resolution)
        loaders = [build_eval_loader(path, recipe, args.batch_size, args.workers) for path in (args.train, args.val)]
    except (OSError, ValueError, RuntimeError) as error:
        print(f"eval knn: error: {error}", file=sys.stderr)
        return 2
    report = {"checkpoint": str(args.ckpt), **knn_report(backbone, *loaders, device, args.k)}
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
