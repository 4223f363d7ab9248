"""Export the online backbone as a plain torchvision ResNet state dict.

    python -m msf_fast.export CHECKPOINT OUT.pth

CHECKPOINT is an msf-fast checkpoint or one saved by the original MSF code. The output loads
with `torchvision.models.<arch>().load_state_dict(torch.load(OUT))`, minus the classifier:
`fc.*` is omitted (it was the projection head): load with `strict=False`, or pass
`--num-classes N` to write a zero-initialised N-way `fc` that a strict load (and fine-tuning) accepts.
A model with the small-input stem (3x3 conv1) needs the same conv1 replaced before loading.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from msf_fast.checkpoint import atomic_save, model_args, read_checkpoint


def backbone_state_dict(model, num_classes: int = 0) -> dict:
    state = {k: v.detach().cpu().clone() for k, v in model.online.state_dict().items() if not k.startswith("fc.")}
    if num_classes:
        state["fc.weight"] = torch.zeros(num_classes, model.feat_dim)
        state["fc.bias"] = torch.zeros(num_classes)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the online backbone as a torchvision ResNet state dict.")
    parser.add_argument("checkpoint", help="msf-fast or original MSF checkpoint")
    parser.add_argument("out", help="output .pth")
    parser.add_argument("--num-classes", type=int, default=0,
                        help="also write a zero-initialised fc with this many classes (strict-loadable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"export: {out} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 1
    try:
        model = read_checkpoint(args.checkpoint).model()
    except (OSError, ValueError) as error:
        print(f"export: {error}", file=sys.stderr)
        return 1
    atomic_save(backbone_state_dict(model, args.num_classes), out)
    info = model_args(model)
    print(f"wrote {out}: torchvision {info['arch']} backbone"
          + (" (small-input 3x3 stem)" if info["small_input"] else "") + (f", zero fc for {args.num_classes} classes" if args.num_classes else ", fc omitted"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
