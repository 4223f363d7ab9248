"""Benchmarks that print one JSON line per measurement (ratios come from one run).

    python -m msf_fast.bench bank   [--batch-size 256 --bank-size 1024000 --dim 512 --topk 5 --dtype float32]
    python -m msf_fast.bench ema    [--arch resnet50]
    python -m msf_fast.bench step   [--arch resnet50 --batch-size 256 --resolution 224 --steps 10 --reference]
    python -m msf_fast.bench cpu    [--arch resnet18 --batch-size 32 --resolution 64 --threads 0]
    python -m msf_fast.bench augment [--batch-size 256 --resolution 224 --recipe w/s]
    python -m msf_fast.bench train  (--synthetic | --data PATH [--backend auto]) [--arch resnet50 --steps 50 ...]
    python -m msf_fast.bench loader --data IMAGEFOLDER [--backend torch ffcv dali] [--compare] [--recipe w/s] ...
    python -m msf_fast.bench resize [--source 500x375 --size 224 --crops 100]
    python -m msf_fast.bench plan   --images-per-s 4500 --gpus 8 [--epochs 200 --loader-images-per-s Y ...]
    python -m msf_fast.bench order  [--beton STORE --batch-size 16 --world-size 2 --imagenet-layout]

`bank` times the memory-bank search + loss gather against the original's dense formulation, each variant in
its own process so that its peak extra memory (above the bank itself) is measured. `train` runs the real trainer
and says which side bounds it: the loader or the step. `plan` measures nothing: it turns a per-GPU step rate
into wall time for a whole run. Run `python -m msf_fast.bench COMMAND --help` for a command's options.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from dataset_prep.argument_parser import DefaultsHelpFormatter as HelpFormatter
from dataset_prep.argument_parser import OneLineParser
from msf_fast.errors import UsageError, UserError, out_of_memory_line

PROG = "python -m msf_fast.bench"  # every message of these commands starts with it, as their usage line does
# name: (function in msf_fast.bench.NAME, summary). A command's module (torch, numba, ...) is imported only when
# that command runs or its options are parsed: `bench plan`, --help and a wrong command name answer without torch.
COMMANDS = {
    "bank": ("bench_bank", "memory-bank search: chunked (ours) vs the original's dense distances"),
    "ema": ("bench_ema", "target EMA update: foreach (and CUDA graph) vs per-parameter loop"),
    "step": ("bench_step", "one whole training step on synthetic data (optionally vs the original's way)"),
    "cpu": ("bench_cpu", "the CPU's defaults measured: our step in fp32 and bf16, NCHW and channels-last, "
                         "and what amp auto picks here"),
    "augment": ("bench_augment",
                "the recipe's batched photometric ops (both views) on the device, as the FFCV path runs them"),
    "train": ("bench_train", "the real trainer for N steps: end-to-end, loader-alone and step-alone "
                             "images/s and the data-wait share, in one run; which side bounds it"),
    "loader": ("bench_loader", "two-view loader throughput: torchvision (the baseline) vs FFCV vs DALI"),
    "resize": ("bench_resize", "one view's crop + resize on one core: the loaders' antialiased resize vs "
                               "OpenCV, torch and Pillow, with each one's distance from torchvision"),
    "plan": ("print_plan", "wall time of a whole run from a per-GPU step rate (nothing is measured)"),
    "order": ("bench_order", "bytes read per epoch without the page cache: RANDOM vs the page-aware "
                             "order (data.in_memory=0)"),
}


def command_module(name: str):
    return importlib.import_module(f"msf_fast.bench.{name}")


def build_parser(commands=tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The parser, with the options of `commands` (the others are listed by name and summary only)."""
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        module = command_module(name) if name in commands else None
        command = sub.add_parser(name, help=summary, description=(module and module.__doc__) or summary,
                                 formatter_class=HelpFormatter)
        if module:
            module.add_arguments(command)
    parser.commands = sub.choices  # each command's parser: its errors name it
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)  # the top level has no valued options
    parser = build_parser(commands=[chosen] if chosen in COMMANDS else [])
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # told by the command's parser, which knows the closest of its options (as eval does)
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        getattr(command_module(args.command), COMMANDS[args.command][0])(args)
    except UserError as error:  # e.g. the default device auto on a GPU torch cannot use (msf_fast.devices)
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except UsageError as error:  # options that cannot go together, found by the command (other ValueErrors are bugs)
        parser.commands[args.command].error(str(error))
    except RuntimeError as error:  # torch.OutOfMemoryError is one; any other is a bug and keeps its traceback
        shortage = out_of_memory_line(error, args)
        if shortage is None:
            raise
        print(f"{PROG} {args.command}: error: {shortage}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    from dataset_prep.command_start import start_command
    start_command(PROG)
    sys.exit(main())
