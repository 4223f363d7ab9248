"""Evaluation of a pretrained backbone: the paper's benchmarks and figures.

    python -m msf_fast.eval knn     --ckpt CKPT --train TRAIN --val VAL [--k 1 20]
    python -m msf_fast.eval linear  --ckpt CKPT --train TRAIN --val VAL [--mode cached|augmented] [--epochs 40]
    python -m msf_fast.eval semi    --ckpt CKPT --train TRAIN --val VAL [--fractions 0.01 0.1] [--subset-file F]
    python -m msf_fast.eval tsne | neighbours | clusters --ckpt CKPT [CKPT ...] --data IMAGES

CKPT is one of our training checkpoints, a torchvision backbone written by `msf_fast.export`, or a checkpoint of
the original MSF code. TRAIN/VAL/IMAGES are ImageFolders, .beton files or TFRecord stores, read with the
evaluation transform (shorter side to 256/224 of the resolution, centre crop). Features are the pooled backbone
outputs, extracted in bf16 autocast on CUDA. Every command writes JSON and PNGs into the output folder (--out,
default: the checkpoint's run folder) and its section of report.md there.

Every option is checked before any feature is extracted (counts against the data's images and classes, the
classes of two sets that meet, the output folder, the device, the checkpoint): a mistake is one line on stderr,
exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from dataset_prep.argument_parser import DefaultsHelpFormatter, OneLineParser
from dataset_prep.staging import sigterm_as_ctrl_c, stop_exit_code
from msf_fast.errors import UserError, disk_full, out_of_memory_line
from msf_fast.eval import PROG
from msf_fast.eval.arguments import (add_figure_commands, add_knn_command, add_probe_commands, option_conflict,
                                     path_problem)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and its subcommands' parsers by name."""
    parser = OneLineParser(prog=PROG, description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_knn_command(sub)
    add_probe_commands(sub)
    add_figure_commands(sub)
    for command in sub.choices.values():
        command.formatter_class = DefaultsHelpFormatter  # each option's help shows its default, as bench's do
    return parser, sub.choices


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand's parser, which knows the closest valid option
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    conflict = option_conflict(args)
    if conflict:
        commands[args.command].error(conflict)
    problem = path_problem(args)
    if problem:
        print(f"{PROG} {args.command}: error: {problem}", file=sys.stderr)
        return 2
    module, function = args.run.split(":")
    run = getattr(importlib.import_module(module), function)  # torch loads here
    try:
        with sigterm_as_ctrl_c():  # SIGTERM (a scheduler's) as Ctrl-C: one line, no half-written output left
            result = run(args)
    except (UserError, OSError, ValueError, RuntimeError) as error:
        if disk_full(error):
            from msf_fast.eval.common import output_folder
            checkpoint = args.ckpt[0] if isinstance(args.ckpt, list) else args.ckpt
            print(f"{PROG} {args.command}: error: cannot write into {output_folder(args, checkpoint)}: No space left "
                  "on device; nothing half-written", file=sys.stderr)
            return 1
        shortage = out_of_memory_line(error, args)
        if shortage:
            print(f"{PROG} {args.command}: error: {shortage}", file=sys.stderr)
            return 1
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # outputs appear whole or not at all
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return stop_exit_code(stop)
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from dataset_prep.command_start import start_command
    start_command(PROG)
    sys.exit(main())
