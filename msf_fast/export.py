"""Export the online backbone as a plain torchvision ResNet state dict.

    python -m msf_fast.export CHECKPOINT OUT.pth [--num-classes N] [--overwrite]

CHECKPOINT is an msf-fast checkpoint or one saved by the original MSF code. The output loads
with `torchvision.models.<arch>().load_state_dict(torch.load(OUT))`, minus the classifier:
`fc.*` is omitted (it was the projection head): load with `strict=False`, or pass
`--num-classes N` to write a zero-initialised N-way `fc` that a strict load (and fine-tuning) accepts.
A model with the small-input stem (3x3 conv1) needs the same conv1 replaced before loading.

Like the dataset writers: exit code 2 with one error line for a mistake (a file that is no checkpoint, an
existing output without --overwrite, a missing output folder, which is not created, a file where a folder of
its path should be), checked before any work.
"""
from __future__ import annotations

import sys

PROG = "python -m msf_fast.export"  # every message starts with it, as the usage line does

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command(PROG)

import argparse
import os
from pathlib import Path

from dataset_prep.argument_parser import OneLineParser, non_negative_int
from dataset_prep.staging import OutputError, check_destination, sigterm_as_ctrl_c, stop_exit_code
from msf_fast.checkpoint_files import refuse_non_checkpoint
from msf_fast.errors import UserError, disk_full



def backbone_state_dict(model, num_classes: int = 0) -> dict:
    import torch
    state = {k: v.detach().cpu().clone() for k, v in model.online.state_dict().items() if not k.startswith("fc.")}
    if num_classes:
        state["fc.weight"] = torch.zeros(num_classes, model.feat_dim)
        state["fc.bias"] = torch.zeros(num_classes)
    return state


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG,
                           description="Export the online backbone as a torchvision ResNet state dict.")
    parser.add_argument("checkpoint", help="msf-fast or original MSF checkpoint")
    parser.add_argument("out", help="output .pth (its folder must exist)")
    parser.add_argument("--num-classes", type=non_negative_int, default=0,
                        help="also write a zero-initialised fc with this many classes (strict-loadable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def export(args) -> str:
    if os.path.isdir(args.out):
        raise OutputError(f"output {args.out!r} is a folder; give a file name, e.g. "
                          f"{os.path.join(args.out, 'backbone.pth')}")
    check_destination(args.out, args.overwrite)
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise OutputError(f"output {args.out!r} is the checkpoint itself; give another file name")
    refuse_non_checkpoint(args.checkpoint)
    from msf_fast.checkpoint import BACKBONE, atomic_save, model_args, read_checkpoint  # torch: after the checks
    checkpoint = read_checkpoint(args.checkpoint)
    if checkpoint.kind == BACKBONE:
        raise UserError(f"{args.checkpoint}: already a torchvision backbone (as this command writes), not a training "
                        "checkpoint; python -m msf_fast.eval and torchvision read it as it is")
    model = checkpoint.model()
    atomic_save(backbone_state_dict(model, args.num_classes), args.out)
    info = model_args(model)
    return (f"wrote {args.out}: torchvision {info['arch']} backbone"
            + (" (small-input 3x3 stem)" if info["small_input"] else "")
            + (f", zero fc for {args.num_classes} classes" if args.num_classes else ", fc omitted"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_ctrl_c():  # SIGTERM (a scheduler's) as Ctrl-C: one line, no half-written output left
            print(f"{PROG}: {export(args)}")
    except KeyboardInterrupt as stop:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return stop_exit_code(stop)
    except (UserError, OSError, ValueError, RuntimeError) as error:
        if disk_full(error):
            print(f"{PROG}: error: cannot write {args.out}: No space left on device; nothing written",
                  file=sys.stderr)
            return 1
        if isinstance(error, RuntimeError):
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
