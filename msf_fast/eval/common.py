"""What every evaluation command shares: the options for data and device, checks of those options before any
work, progress bars, the run folder results are written to, and the autocast dtype of feature extraction."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from dataset_prep.progress import bar_disabled, bar_options
from dataset_prep.staging import StagedPath, nearest_existing
from dataset_prep.stores import within, written_from
from dataset_prep.wording import plural
from msf_fast.errors import UserError
from msf_fast.eval import PROG
from msf_fast.eval.report import write_section


def run_folder(checkpoint: str | Path) -> Path:
    """Where a checkpoint's results go by default: the run folder for runs/X/checkpoints/*.pt, else its folder."""
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


class WithProgress:
    """A loader whose every pass shows a progress bar (on stderr, cleared when the pass ends)."""

    def __init__(self, loader, title: str, enabled: bool = True):
        self.loader, self.title, self.enabled = loader, title, enabled

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def classes(self) -> list[str]:
        return self.loader.classes

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples

    def __iter__(self):
        yield from tqdm(self.loader, desc=self.title, unit="batch", leave=False, dynamic_ncols=True,
                        disable=bar_disabled(self.enabled), **bar_options())


def output_folder(args: argparse.Namespace, checkpoint: str | Path) -> Path:
    folder = Path(args.out) if args.out else run_folder(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish(args: argparse.Namespace, folder: Path, result: dict, section: str, markdown: str) -> dict:
    """Write the command's JSON result (FOLDER/args.result_name), then its report section: a failure (a full disk)
    leaves both as they were, or the new result beside the old section, never a report naming an unsaved result."""
    with StagedPath(str(folder / args.result_name)) as staged:
        Path(staged.temporary).write_text(json.dumps(result, indent=1) + "\n")
    write_section(folder, section, markdown)
    return result


def check_output_folder(args: argparse.Namespace, checkpoint: str | Path) -> Path:
    """The output folder (`--out`, else the checkpoint's run folder), checked before any work: it is a folder, or
    can be made as one, is writable and lies outside the data read. UserError naming the option otherwise. Nothing
    is created."""
    folder = Path(args.out) if args.out else run_folder(checkpoint)
    option = f"--out {args.out}" if args.out else f"--out (default: the checkpoint's folder {folder})"
    existing = Path(nearest_existing(str(folder)))
    if existing != folder.absolute() and not existing.is_dir():
        raise UserError(f"{option}: cannot make the folder, {existing} is a file")
    if existing == folder.absolute() and not folder.is_dir():
        raise UserError(f"{option}: a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option}: {existing} is not writable" + ("" if args.out else "; give --out FOLDER"))
    from msf_fast.config import creation_refused
    refused = creation_refused(str(existing))
    if refused:
        raise UserError(f"{option}: cannot be created or written ({refused})")
    for data_option in ("train", "val", "data", "queries_from"):
        data = getattr(args, data_option, None)
        if data and within(str(folder), data):  # its report and figures would be listed among the images
            raise UserError(f"{option} is inside --{data_option.replace('_', '-')} {data}: the next listing of the "
                            "data would read its report and figures as images; choose a folder outside the data")
        source = written_from(data) if data else None
        if source and within(str(folder), source):
            raise UserError(f"{option} is inside {source}, the folder --{data_option.replace('_', '-')} {data} was "
                            "written from: its next listing would read the report and figures as a class of "
                            "images; choose a folder outside the data")
    for name in ("report", "report.md"):  # an earlier run's outputs we replace
        inside = folder / name
        if inside.exists() and not os.access(inside, os.W_OK):
            raise UserError(f"{option}: {inside} is not writable")
    return folder


def open_eval_data(args: argparse.Namespace, option: str, path: str, recipe, title: str):
    """The evaluation loader of `path` (given as `option`), with a progress bar: a path that is no dataset is a
    UserError naming the option, the kinds accepted and what was found."""
    from msf_fast.config import data_problem
    from pipelines import build_eval_loader
    problem = data_problem(str(path))
    if problem:
        raise UserError(f"{option} {path}: {problem}")
    loader = build_eval_loader(str(path), recipe, batch_size=args.batch_size, workers=workers(args, path))
    return WithProgress(loader, title, not args.no_progress)


def same_images(first_option: str, first: str, second_option: str, second: str) -> str | None:
    """"--train A and --val B hold the same data" (or the same images: a store and the folder it was written from,
    two stores of one folder), or None when they do not."""
    from dataset_prep.stores import same_images as how_same
    how = how_same(str(first), str(second))
    return f"{first_option} {first} and {second_option} {second} hold {how}" if how else None


def warn(args: argparse.Namespace, message: str) -> None:
    print(f"{PROG} {args.command}: warning: {message}", file=sys.stderr, flush=True)


def note(args: argparse.Namespace, message: str) -> None:
    print(f"{PROG} {args.command}: note: {message}", file=sys.stderr, flush=True)


def choose_resolution(args: argparse.Namespace, checkpoints: list) -> None:
    """--resolution, or the one the checkpoints trained at (the training's k-NN monitor used it: a 32-px demo
    checkpoint evaluated at 224 saw images 7x the size it learned on), else DEFAULT_RESOLUTION; a note says which,
    unless it is 224 from an original checkpoint (trained at 224)."""
    from msf_fast.checkpoint import BACKBONE
    from msf_fast.eval.arguments import DEFAULT_RESOLUTION
    if args.resolution is not None:
        return
    recorded = {checkpoint.path.name: checkpoint.training_resolution for checkpoint in checkpoints
                if checkpoint.training_resolution is not None}
    unknown = [checkpoint.path.name for checkpoint in checkpoints
               if checkpoint.training_resolution is None and checkpoint.kind == BACKBONE]
    trained = sorted(set(recorded.values()))
    args.resolution = trained[0] if len(trained) == 1 else DEFAULT_RESOLUTION
    if len(trained) > 1:
        why = (f"the checkpoints trained at {' and '.join(map(str, trained))} px (" +
               ", ".join(f"{name} {size}" for name, size in recorded.items()) + ")")
    elif trained:
        why = f"the resolution {' and '.join(recorded)} trained at"
    elif unknown:
        why = f"{' and '.join(unknown)} {'records' if len(unknown) == 1 else 'record'} no training resolution"
    else:
        return
    if unknown and trained:
        why += f"; {' and '.join(unknown)} {'records' if len(unknown) == 1 else 'record'} none"
    note(args, f"--resolution {args.resolution}: {why}; give --resolution to choose another")


def workers(args: argparse.Namespace, path: str) -> int:
    """--workers, or what fits the machine for the backend that reads `path`."""
    from pipelines import data_format, default_workers
    return args.workers if args.workers is not None else default_workers(data_format(str(path)))


def checkpoint_position(checkpoint) -> dict:
    """{"step", "epoch" (completed epochs), "steps_per_epoch"}: where in training the evaluated weights were saved, as
    far as the checkpoint records it ({} for an exported backbone). A live run's latest.pt moves on; the result
    names the state it evaluated."""
    from msf_fast.checkpoint import BACKBONE
    if checkpoint.kind == BACKBONE:
        return {}
    return {key: checkpoint.content[key] for key in ("step", "epoch", "steps_per_epoch")
            if isinstance(checkpoint.content.get(key), int)}


def position_text(position: dict) -> str:
    """" (step 120, epoch 10)" for a report's heading, "" when unknown."""
    parts = [f"{key} {position[key]}" for key in ("step", "epoch") if key in position]
    return f" ({', '.join(parts)})" if parts else ""


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Feature extraction runs in bf16 autocast on CUDA; on the CPU in float32 everywhere (emulated bf16 is slow,
    and the evaluation's numbers then do not depend on the CPU). The trainer's k-NN monitor uses the training
    precision instead, so its random-init k-NN differs slightly between bf16 and fp32 runs (0.326 and 0.310 on
    the demo)."""
    return torch.bfloat16 if device.type == "cuda" else None


def checked_device(args: argparse.Namespace) -> torch.device:
    """`--device` resolved (auto: CUDA when present), or a UserError naming it, before any work."""
    from msf_fast.devices import device_option
    device = device_option(args.device)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"--device {args.device}: no CUDA device is available")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {args.device}: only {plural(count, 'CUDA device')} (cuda:0..cuda:{count - 1})")
    return device
