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
"""
from __future__ import annotations

import argparse
import json
import sys

from msf_fast.checkpoint import read_checkpoint
from msf_fast.eval.common import WithProgress, add_data_options, amp_dtype, output_folder
from msf_fast.eval.knn import SEARCHES, knn_evaluation
from msf_fast.eval.report import markdown_table, write_section
from msf_fast.step import resolve_device


def run_knn(args) -> dict:
    from pipelines import build_eval_loader, two_view_recipe
    device = resolve_device(args.device)
    backbone = read_checkpoint(args.ckpt).backbone()
    recipe = two_view_recipe("w/s", args.resolution)
    loaders = [WithProgress(build_eval_loader(path, recipe, batch_size=args.batch_size, workers=args.workers),
                            f"knn: {name} features",
                            not args.no_progress) for name, path in (("train", args.train), ("val", args.val))]
    folder = output_folder(args, args.ckpt)
    report = {"checkpoint": str(args.ckpt),
              **knn_evaluation(backbone.to(device), *loaders, device, args.k, amp_dtype(device), args.search)}
    rows = [[k, report[f"top1_k{k}_majority"], report[f"top1_k{k}_weighted"]] for k in args.k]
    write_section(folder, "knn", f"## k-NN ({args.ckpt})\n\nTop-1 on {report['val_images']} held-out images, "
                  f"{report['train_images']} labelled images searched; cosine similarity of L2-normalised "
                  "features. The weighted vote weighs each neighbour by exp(similarity / 0.07).\n\n"
                  + markdown_table(["k", "majority vote", "weighted vote"], rows))
    return report


def add_knn_command(sub) -> None:
    knn = sub.add_parser("knn", help="k-NN top-1 of frozen backbone features")
    knn.add_argument("--ckpt", required=True)
    knn.add_argument("--train", required=True, help="labelled images searched (folder, .beton or TFRecord store)")
    knn.add_argument("--val", required=True, help="held-out images classified")
    knn.add_argument("--k", type=int, nargs="+", default=[1, 20])
    knn.add_argument("--search", choices=SEARCHES, default="auto",
                     help="exact search in torch (chunked) or faiss (IndexFlatIP; auto: faiss where installed)")
    add_data_options(knn)
    knn.set_defaults(run=run_knn, result_name="knn.json")


def main(argv: list[str] | None = None) -> int:
    from msf_fast.eval.figures.commands import add_figure_commands
    from msf_fast.eval.probe_commands import add_probe_commands

    parser = argparse.ArgumentParser(prog="python -m msf_fast.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_knn_command(sub)
    add_probe_commands(sub)
    add_figure_commands(sub)
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"eval {args.command}: error: {error}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result))
        checkpoint = args.ckpt[0] if isinstance(args.ckpt, list) else args.ckpt
        path = output_folder(args, checkpoint) / args.result_name
        path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
