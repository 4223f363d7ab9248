"""The `linear` and `semi` commands of `python -m msf_fast.eval`: the paper's linear probe on all labels, or on
1% / 10% label subsets (per-class balanced and seeded, or a user's list file)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset_prep.progress import bar_disabled, bar_options
from msf_fast.checkpoint import read_checkpoint
from msf_fast.errors import UserError
from msf_fast.eval.arguments import DEFAULT_FRACTIONS, ProbeSettings, probe_milestones
from msf_fast.eval.common import (amp_dtype, check_output_folder, checked_device, checkpoint_position,
                                  choose_resolution, open_eval_data, output_folder, position_text, publish,
                                  same_images, warn, workers)
from msf_fast.eval.knn import extract_features
from msf_fast.eval.linear_probe import (augmented_batches, cached_batches, feature_standardizer,
                                        probe_with, train_probe)
from msf_fast.eval.report import markdown_table


def probe_settings(args) -> ProbeSettings:
    return ProbeSettings(args.epochs, args.lr, args.momentum, args.weight_decay, args.probe_batch_size,
                         probe_milestones(args), args.seed)


class ProbeRun:
    """One checkpoint's frozen features, shared by every probe trained on them (all labels, each subset).

    Built in two steps: the constructor checks every option, the output folder, the checkpoint file and both data
    sets (their classes must match) without reading an image; `extract()` then builds the backbone and extracts the
    features."""

    def __init__(self, args):
        from pipelines import two_view_recipe
        from pipelines.contract import check_same_classes
        self.args = args
        self.settings = probe_settings(args)
        self.folder = check_output_folder(args, args.ckpt)
        self.device = checked_device(args)
        self.amp = amp_dtype(self.device)
        self.checkpoint = read_checkpoint(args.ckpt)  # a file that is none is found before the data are listed
        choose_resolution(args, [self.checkpoint])
        self.recipe = two_view_recipe("w/s", args.resolution)
        self.train_loader = open_eval_data(args, "--train", args.train, self.recipe, "train features")
        self.val_loader = open_eval_data(args, "--val", args.val, self.recipe, "val features")
        check_same_classes(self.train_loader, f"--train {args.train}", self.val_loader, f"--val {args.val}")
        overlap = same_images("--train", args.train, "--val", args.val)
        if overlap:
            warn(args, f"{overlap}: the probe is scored on images it was trained on, which measures its fit, not "
                       "how it generalises; give --val held-out images")
        self.classes = list(self.train_loader.classes)
        self.num_classes = len(self.classes)

    def extract(self) -> "ProbeRun":
        self.backbone = self.checkpoint.backbone().to(self.device)
        self.train_features, self.train_labels = self._features(self.train_loader)
        # the sample index of each feature row: an ImageFolder's file that failed to decode left no row
        left_out = getattr(self.train_loader.loader, "left_out", {})
        self.rows = np.array([i for i in range(self.train_loader.num_samples) if i not in left_out], dtype=np.int64)
        self.val_features, self.val_labels = self._features(self.val_loader)
        self.standardizer = feature_standardizer(self.train_features)  # the whole training set's, for every probe
        return self

    def _features(self, loader):
        return extract_features(self.backbone, loader, self.device, self.amp, normalize=False)

    def train(self, indices=None, title: str = "linear probe") -> dict:
        """A probe standardised with the whole training set's features, trained on the samples `indices` (default
        all)."""
        from pipelines import build_probe_loader
        args = self.args
        chosen = (slice(None) if indices is None
                  else torch.as_tensor(np.searchsorted(self.rows, indices), device=self.train_labels.device))
        if args.mode == "cached":
            batches = cached_batches(self.train_features[chosen], self.train_labels[chosen],
                                     self.settings.batch_size, self.settings.seed)
        else:
            loader = build_probe_loader(args.train, self.recipe, batch_size=self.settings.batch_size,
                                        workers=workers(args, args.train), seed=self.settings.seed,
                                        indices=indices)
            batches = augmented_batches(self.backbone, loader, self.device, self.amp)
        probe = probe_with(self.standardizer, self.num_classes)
        bar = tqdm(total=self.settings.epochs, desc=title, unit="epoch", disable=bar_disabled(not args.no_progress),
                   dynamic_ncols=True, **bar_options())

        def progress(record):
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_top1=f"{record['val_top1']:.3f}", refresh=False)
            bar.update(1)  # draws the new figures (where the bar's interval has passed)
        try:
            result = train_probe(probe, batches, self.settings, self.val_features, self.val_labels, progress)
        except BaseException:  # Ctrl-C: no half-drawn bar above "interrupted"
            bar.leave = False
            raise
        finally:
            bar.close()
        labelled = len(self.train_labels) if indices is None else len(indices)
        return {"top1": result["top1"], "top5": result["top5"], "labelled_images": labelled,
                "history": result["history"]}

    def header(self) -> dict:
        return {"checkpoint": str(self.args.ckpt), **checkpoint_position(self.checkpoint),
                "resolution": self.args.resolution, "mode": self.args.mode,
                "train_images": len(self.train_labels), "val_images": len(self.val_labels), "classes": self.num_classes,
                "settings": dataclasses.asdict(self.settings)}


def run_linear(args) -> dict:
    run = ProbeRun(args).extract()
    result = {**run.header(), **run.train()}
    return publish(args, output_folder(args, args.ckpt), result, "linear",
                   f"## Linear probe ({args.ckpt}{position_text(checkpoint_position(run.checkpoint))})\n\n"
                   f"{protocol_text(run)}\n\n"
                   + markdown_table(["labelled images", "top-1", "top-5"],
                                    [[result["labelled_images"], result["top1"], result["top5"]]]))


def run_semi(args) -> dict:
    from pipelines.subsets import balanced_subset, sample_names, write_subset_file
    run = ProbeRun(args)
    listed = listed_subset(args, run) if args.subset_file else None  # read before any feature is extracted
    run.extract()
    folder = output_folder(args, args.ckpt)
    if listed is not None:
        listed = listed[np.isin(listed, run.rows)]  # a listed file that failed to decode was named in a note
        subsets = {args.subset_file: listed}
    else:
        labels = run.train_labels.cpu().numpy()
        subsets = {f"{fraction:g}": run.rows[balanced_subset(labels, seed=args.seed, fraction=fraction)]
                   for fraction in args.fractions or DEFAULT_FRACTIONS}
    names = None if args.subset_file else sample_names(args.train)  # the folder listed once for every subset
    results, rows = {}, []
    for name, indices in subsets.items():
        written = None
        if not args.subset_file:
            written = write_subset_file(folder / f"subset_{name}_seed{args.seed}.txt", indices, names)
        results[name] = {**run.train(indices, f"probe on {name}"), "subset_file": str(written or name)}
        rows.append([name, results[name]["labelled_images"], results[name]["top1"], results[name]["top5"]])
    if args.subset_file:
        chosen = (f"The labelled images are the {len(listed)} distinct images listed in {args.subset_file} (of "
                  f"{len(run.train_labels)}, covering all {run.num_classes} classes).")
        source = {"subset_source": f"--subset-file {args.subset_file}"}
    else:
        chosen = ("Subsets keep round(fraction x class size) images of every class (at least one), drawn with seed "
                  f"{args.seed}; their lists are saved beside this report.")
        source = {"subset_source": f"seeded fractions (seed {args.seed})"}
    return publish(args, folder, {**run.header(), **source, "subsets": results}, "semi",
                   f"## Semi-supervised: linear probe on label subsets ({args.ckpt}"
                   f"{position_text(checkpoint_position(run.checkpoint))})\n\n"
                   f"{protocol_text(run)} {chosen}\n\n"
                   + markdown_table(["subset", "labelled images", "top-1", "top-5"], rows))


def listed_subset(args, run: ProbeRun):
    """The indices a --subset-file names, checked against --train before any work: every entry is an image of
    it, and every class has at least one labelled image (else the probe could never predict it)."""
    import numpy as np

    from pipelines.subsets import dataset_labels, read_subset_file
    from msf_fast.eval.arguments import list_file_problem
    problem = list_file_problem(Path(args.subset_file))  # checked before torch loaded too: it may have changed
    if problem:
        raise UserError(f"--subset-file {args.subset_file}: {problem}")
    indices = read_subset_file(args.subset_file, args.train, run.train_loader.num_samples)
    present = set(np.unique(dataset_labels(args.train)[indices]).tolist())
    missing = [name for label, name in enumerate(run.classes) if label not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"--subset-file {args.subset_file}: no image of {len(missing)} of the {run.num_classes} "
                        f"classes ({shown}); the probe could never predict them: list at least one image per class")
    return indices


def protocol_text(run: ProbeRun) -> str:
    s = run.settings
    source = ("features of centre crops, cached once" if run.args.mode == "cached"
              else "features of random-resized-crop + flip images, new every epoch")
    return (f"Frozen backbone; L2-normalised then standardised features; Linear({run.train_features.shape[1]}, "
            f"{run.num_classes}); SGD lr {s.lr}, momentum {s.momentum}, weight decay {s.weight_decay}, batch "
            f"{s.batch_size}, {s.epochs} epochs, "
            f"{'lr x0.1 after epochs ' + ', '.join(map(str, s.milestones)) if s.milestones else 'a constant lr'}; "
            f"trained on {source}; {len(run.val_labels)} held-out centre crops scored.")
