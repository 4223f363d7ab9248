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
import json
import sys

from dataset_prep.argument_parser import OneLineParser, positive_int
from msf_fast.checkpoint import read_checkpoint
from msf_fast.errors import UserError, disk_full
from msf_fast.eval.common import (add_data_options, amp_dtype, check_output_folder, checked_device, open_eval_data,
                                  checkpoint_position, note, output_folder, position_text, publish, same_images,
                                  warn)
from msf_fast.eval.knn import SEARCHES, faiss_available, knn_evaluation
from msf_fast.eval.report import markdown_table

DEFAULT_K = (1, 20)


def run_knn(args) -> dict:
    from pipelines import two_view_recipe
    from pipelines.contract import check_same_classes
    # every check before the first feature is extracted
    check_output_folder(args, args.ckpt)
    device = checked_device(args)
    if args.search == "faiss" and not faiss_available():
        raise UserError("--search faiss: faiss is not installed (pip install -e '.[faiss]', or --search torch)")
    checkpoint = read_checkpoint(args.ckpt)  # a file that is none is found before the data are listed
    recipe = two_view_recipe("w/s", args.resolution)
    train = open_eval_data(args, "--train", args.train, recipe, "knn: train features")
    val = open_eval_data(args, "--val", args.val, recipe, "knn: val features")
    check_same_classes(train, f"--train {args.train}", val, f"--val {args.val}")
    overlap = same_images("--train", args.train, "--val", args.val)
    if overlap:
        raise UserError(f"{overlap}: each held-out image would find itself among the searched ones (top-1 1.0 at "
                        "k = 1); give --val held-out images")
    searched = train.num_samples
    if args.k is None:  # the defaults fit the data: a k as large as the memory set gives every query one class
        args.k = [k for k in DEFAULT_K if k < searched] or [1]
        if len(args.k) < len(DEFAULT_K):
            note(args, f"--k {' '.join(map(str, args.k))}: the memory set --train {args.train} has only {searched} "
                       f"images, too few for the default k = {max(DEFAULT_K)}")
    if max(args.k) > searched:
        raise UserError(f"--k {max(args.k)}: the memory set --train {args.train} has only {searched} "
                        f"images; give --k values of at most {searched}")
    if max(args.k) == searched:
        warn(args, f"--k {searched}: every image of the memory set --train {args.train} votes, so the majority vote "
                   "gives every held-out image the same class")
    backbone = checkpoint.backbone()
    folder = output_folder(args, args.ckpt)
    position = checkpoint_position(checkpoint)
    report = {"checkpoint": str(args.ckpt), **position,
              **knn_evaluation(backbone.to(device), train, val, device, args.k, amp_dtype(device), args.search)}
    rows = [[k, report[f"top1_k{k}_majority"], report[f"top1_k{k}_weighted"]] for k in args.k]
    return publish(args, folder, report, "knn",
                   f"## k-NN ({args.ckpt}{position_text(position)})\n\nTop-1 on {report['val_images']} held-out "
                   f"images, {report['train_images']} labelled images searched; cosine similarity of L2-normalised "
                   "features. The weighted vote weighs each neighbour by exp(similarity / 0.07).\n\n"
                   + markdown_table(["k", "majority vote", "weighted vote"], rows))


def add_knn_command(sub) -> None:
    knn = sub.add_parser("knn", help="k-NN top-1 of frozen backbone features")
    knn.add_argument("--ckpt", required=True)
    knn.add_argument("--train", required=True, help="labelled images searched (folder, .beton or TFRecord store)")
    knn.add_argument("--val", required=True, help="held-out images classified")
    knn.add_argument("--k", type=positive_int, nargs="+", default=None,
                     help=f"neighbours voting, each at least 1 and at most the --train images (default "
                          f"{' '.join(map(str, DEFAULT_K))}, without those not below the --train images)")
    knn.add_argument("--search", choices=SEARCHES, default="auto",
                     help="exact search in torch (chunked) or faiss (IndexFlatIP; auto: faiss where installed)")
    add_data_options(knn)
    knn.set_defaults(run=run_knn, result_name="knn.json")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and its subcommands' parsers by name."""
    from msf_fast.eval.figures.commands import add_figure_commands
    from msf_fast.eval.probe_commands import add_probe_commands

    parser = OneLineParser(prog="python -m msf_fast.eval", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_knn_command(sub)
    add_probe_commands(sub)
    add_figure_commands(sub)
    return parser, sub.choices


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand's parser, which knows the closest valid option
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        result = args.run(args)
    except (UserError, OSError, ValueError, RuntimeError) as error:
        if disk_full(error):
            checkpoint = args.ckpt[0] if isinstance(args.ckpt, list) else args.ckpt
            print(f"eval {args.command}: error: cannot write into {output_folder(args, checkpoint)}: No space left "
                  "on device; nothing half-written", file=sys.stderr)
            return 1
        print(f"eval {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs appear whole or not at all
        print(f"eval {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
