"""The `linear` and `semi` commands of `python -m msf_fast.eval`: the paper's linear probe on all labels, or on
1% / 10% label subsets (per-class balanced and seeded, or a user's list file)."""
from __future__ import annotations

import argparse
import dataclasses

import torch
from tqdm import tqdm

from msf_fast.checkpoint import read_checkpoint
from msf_fast.eval.common import WithProgress, add_data_options, amp_dtype, output_folder
from msf_fast.eval.knn import extract_features
from msf_fast.eval.linear_probe import (ProbeSettings, augmented_batches, cached_batches, feature_standardizer,
                                        probe_with, train_probe)
from msf_fast.eval.report import markdown_table, write_section
from msf_fast.step import resolve_device


def add_probe_commands(sub) -> None:
    linear = sub.add_parser("linear", help="linear probe on frozen features (the paper's protocol)")
    semi = sub.add_parser("semi", help="the linear probe trained on 1%% / 10%% label subsets")
    for parser in (linear, semi):
        parser.add_argument("--ckpt", required=True)
        parser.add_argument("--train", required=True, help="labelled training images (folder, .beton or TFRecord)")
        parser.add_argument("--val", required=True, help="held-out images scored")
        parser.add_argument("--mode", choices=["cached", "augmented"], default="cached",
                            help="cached: features of centre crops, extracted once (fast); augmented: features of "
                                 "random-resized-crop + flip images every epoch (paper-faithful; ImageFolder or "
                                 ".beton)")
        add_probe_options(parser)
        add_data_options(parser)
    linear.set_defaults(run=run_linear, result_name="linear.json")
    semi.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1],
                      help="labelled fraction per class (each class keeps round(fraction x size), at least 1)")
    semi.add_argument("--subset-file", default="",
                      help="train only on the images listed (one per line: index, or file name for an "
                           "ImageFolder); replaces --fractions")
    semi.set_defaults(run=run_semi, result_name="semi.json")


def add_probe_options(parser: argparse.ArgumentParser) -> None:
    defaults = ProbeSettings()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--probe-batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--milestones", type=int, nargs="*", default=list(defaults.milestones),
                        help="epochs after which the lr drops x0.1")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="probe initialisation, order and subsets")


def probe_settings(args) -> ProbeSettings:
    settings = ProbeSettings(args.epochs, args.lr, args.momentum, args.weight_decay, args.probe_batch_size,
                             tuple(args.milestones), args.seed)
    if settings.epochs <= 0 or settings.batch_size <= 0 or settings.lr < 0:
        raise ValueError("--epochs and --probe-batch-size must be positive and --lr non-negative")
    return settings


class ProbeRun:
    """One checkpoint's frozen features, shared by every probe trained on them (all labels, each subset)."""

    def __init__(self, args):
        from pipelines import two_view_recipe
        self.args = args
        self.device = resolve_device(args.device)
        self.amp = amp_dtype(self.device)
        self.settings = probe_settings(args)
        self.backbone = read_checkpoint(args.ckpt).backbone().to(self.device)
        self.recipe = two_view_recipe("w/s", args.resolution)
        self.train_features, self.train_labels = self._features(args.train, "train features")
        self.val_features, self.val_labels = self._features(args.val, "val features")
        self.num_classes = int(self.train_labels.max()) + 1
        if int(self.val_labels.max()) >= self.num_classes:
            raise ValueError(f"{args.val} has labels up to {int(self.val_labels.max())}, {args.train} only up to "
                             f"{self.num_classes - 1}: not the same classes")
        self.standardizer = feature_standardizer(self.train_features)  # the whole training set's, for every probe

    def _features(self, path: str, title: str):
        from pipelines import build_eval_loader
        loader = build_eval_loader(path, self.recipe, batch_size=self.args.batch_size, workers=self.args.workers)
        return extract_features(self.backbone, WithProgress(loader, title, not self.args.no_progress), self.device,
                                self.amp, normalize=False)

    def train(self, indices=None, title: str = "linear probe") -> dict:
        """A probe standardised with the whole training set's features, trained on `indices` (default all)."""
        from pipelines import build_probe_loader
        args = self.args
        chosen = slice(None) if indices is None else torch.as_tensor(indices, device=self.train_labels.device)
        if args.mode == "cached":
            batches = cached_batches(self.train_features[chosen], self.train_labels[chosen],
                                     self.settings.batch_size, self.settings.seed)
        else:
            loader = build_probe_loader(args.train, self.recipe, batch_size=self.settings.batch_size,
                                        workers=args.workers, seed=self.settings.seed, indices=indices)
            batches = augmented_batches(self.backbone, loader, self.device, self.amp)
        probe = probe_with(self.standardizer, self.num_classes)
        bar = tqdm(total=self.settings.epochs, desc=title, unit="epoch", disable=args.no_progress,
                   dynamic_ncols=True)

        def progress(record):
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_top1=f"{record['val_top1']:.3f}")
        result = train_probe(probe, batches, self.settings, self.val_features, self.val_labels, progress)
        bar.close()
        labelled = len(self.train_labels) if indices is None else len(indices)
        return {"top1": result["top1"], "top5": result["top5"], "labelled_images": labelled,
                "history": result["history"]}

    def header(self) -> dict:
        return {"checkpoint": str(self.args.ckpt), "mode": self.args.mode, "train_images": len(self.train_labels),
                "val_images": len(self.val_labels), "classes": self.num_classes,
                "settings": dataclasses.asdict(self.settings)}


def run_linear(args) -> dict:
    run = ProbeRun(args)
    result = {**run.header(), **run.train()}
    write_section(output_folder(args, args.ckpt), "linear",
                  f"## Linear probe ({args.ckpt})\n\n{protocol_text(run)}\n\n"
                  + markdown_table(["labelled images", "top-1", "top-5"],
                                   [[result["labelled_images"], result["top1"], result["top5"]]]))
    return result


def run_semi(args) -> dict:
    from pipelines.subsets import balanced_subset, read_subset_file, sample_names, write_subset_file
    run = ProbeRun(args)
    labels = run.train_labels.cpu().numpy()
    folder = output_folder(args, args.ckpt)
    if args.subset_file:
        subsets = {args.subset_file: read_subset_file(args.subset_file, args.train, len(labels))}
    else:
        subsets = {f"{fraction:g}": balanced_subset(labels, seed=args.seed, fraction=fraction)
                   for fraction in args.fractions}
    names = None if args.subset_file else sample_names(args.train)  # the folder listed once for every subset
    results, rows = {}, []
    for name, indices in subsets.items():
        listed = None
        if not args.subset_file:
            listed = write_subset_file(folder / f"subset_{name}_seed{args.seed}.txt", indices, names)
        results[name] = {**run.train(indices, f"probe on {name}"), "subset_file": str(listed or name)}
        rows.append([name, results[name]["labelled_images"], results[name]["top1"], results[name]["top5"]])
    write_section(folder, "semi", f"## Semi-supervised: linear probe on label subsets ({args.ckpt})\n\n"
                  f"{protocol_text(run)} Subsets keep round(fraction x class size) images of every class (at least "
                  f"one), drawn with seed {args.seed}; their lists are saved beside this report.\n\n"
                  + markdown_table(["subset", "labelled images", "top-1", "top-5"], rows))
    return {**run.header(), "subsets": results}


def protocol_text(run: ProbeRun) -> str:
    s = run.settings
    source = ("features of centre crops, cached once" if run.args.mode == "cached"
              else "features of random-resized-crop + flip images, new every epoch")
    return (f"Frozen backbone; L2-normalised then standardised features; Linear({run.train_features.shape[1]}, "
            f"{run.num_classes}); SGD lr {s.lr}, momentum {s.momentum}, weight decay {s.weight_decay}, batch "
            f"{s.batch_size}, {s.epochs} epochs, lr x0.1 after epochs {', '.join(map(str, s.milestones)) or '-'}; "
            f"trained on {source}; {len(run.val_labels)} held-out centre crops scored.")
