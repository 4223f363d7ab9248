"""The `knn` command of `python -m msf_fast.eval`: k-NN top-1 of a checkpoint's frozen features."""
from __future__ import annotations

from msf_fast.checkpoint import read_checkpoint
from msf_fast.errors import UserError
from msf_fast.eval.arguments import DEFAULT_K
from msf_fast.eval.common import (amp_dtype, check_output_folder, checked_device, checkpoint_position,
                                  choose_resolution, note, open_eval_data, output_folder, position_text, publish,
                                  same_images, warn)
from msf_fast.eval.knn import faiss_available, knn_evaluation
from msf_fast.eval.report import markdown_table


def run_knn(args) -> dict:
    from pipelines import two_view_recipe
    from pipelines.contract import check_same_classes
    # every check before the first feature is extracted
    check_output_folder(args, args.ckpt)
    device = checked_device(args)
    if args.search == "faiss" and not faiss_available():
        raise UserError("--search faiss: faiss is not installed (pip install -e '.[faiss]', or --search torch)")
    checkpoint = read_checkpoint(args.ckpt)  # a file that is none is found before the data are listed
    choose_resolution(args, [checkpoint])
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
    report = {"checkpoint": str(args.ckpt), **position, "resolution": args.resolution,
              **knn_evaluation(backbone.to(device), train, val, device, args.k, amp_dtype(device), args.search)}
    rows = [[k, report[f"top1_k{k}_majority"], report[f"top1_k{k}_weighted"]] for k in args.k]
    return publish(args, folder, report, "knn",
                   f"## k-NN ({args.ckpt}{position_text(position)})\n\nTop-1 on {report['val_images']} held-out "
                   f"images, {report['train_images']} labelled images searched; cosine similarity of L2-normalised "
                   "features. The weighted vote weighs each neighbour by exp(similarity / 0.07).\n\n"
                   + markdown_table(["k", "majority vote", "weighted vote"], rows))
