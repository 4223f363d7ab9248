"""The eval commands' options, their types and defaults. Torch-free: `--help` and a mistyped option answer at
once, before the seconds that torch and torchvision take to load (`cli.main` imports a command's module only to
run it)."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from dataset_prep.argument_parser import device_name, fraction, non_negative_int, positive_int
from pipelines import MAX_DATALOADER_WORKERS, default_workers

DEFAULT_K = (1, 20)
DEFAULT_RESOLUTION = 224  # a checkpoint that does not record the resolution it trained at
SEARCHES = ("auto", "torch", "faiss")
DEFAULT_FRACTIONS = (0.01, 0.1)
DEFAULT_CLUSTERS, DEFAULT_ROWS, DEFAULT_CLASSES, DEFAULT_QUERIES, DEFAULT_NEIGHBOURS = 100, 8, 10, 6, 8
ALL = "all"
CHECKPOINT_HELP = "a training checkpoint, a backbone written by msf_fast.export, or the original MSF code's checkpoint"


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 40
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 256
    milestones: tuple[int, ...] = (15, 30)
    seed: int = 0


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def class_count(text: str) -> int | str:
    """A positive number of classes, or "all"."""
    if text == ALL:
        return ALL
    try:
        return positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of classes or 'all', got {text!r}") from None


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=positive_int, default=None,
                        help="centre-crop size; the shorter side is first resized to resolution x 256/224 (default: "
                             "the one the checkpoint trained at, as the training's k-NN monitor, where it records it; "
                             f"else {DEFAULT_RESOLUTION})")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per feature-extraction batch")
    parser.add_argument("--workers", type=non_negative_int, default=None,
                        help=f"loader workers (default: one per core available, here {default_workers('ffcv')}, at "
                             f"most {MAX_DATALOADER_WORKERS} DataLoader processes for an ImageFolder)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--out", default="",
                        help="folder for the JSON, figures and report.md (default: the first checkpoint's run folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def runs(parser: argparse.ArgumentParser, function: str, result_name: str) -> None:
    """The command runs `function` ("module:name", imported when it runs) and writes FOLDER/result_name."""
    parser.set_defaults(run=function, result_name=result_name)


def add_knn_command(sub) -> None:
    knn = sub.add_parser("knn", help="k-NN top-1 of frozen backbone features")
    knn.add_argument("--ckpt", required=True, help=CHECKPOINT_HELP)
    knn.add_argument("--train", required=True, help="labelled images searched (folder, .beton or TFRecord store)")
    knn.add_argument("--val", required=True, help="held-out images classified")
    knn.add_argument("--k", type=positive_int, nargs="+", default=None,
                     help=f"neighbours voting, each at least 1 and at most the --train images (default "
                          f"{' '.join(map(str, DEFAULT_K))}, without those not below the --train images)")
    knn.add_argument("--search", choices=SEARCHES, default="auto",
                     help="exact search in torch (chunked) or faiss (IndexFlatIP; auto: faiss where installed)")
    add_data_options(knn)
    runs(knn, "msf_fast.eval.knn_command:run_knn", "knn.json")


def add_probe_commands(sub) -> None:
    linear = sub.add_parser("linear", help="linear probe on frozen features (the paper's protocol)")
    semi = sub.add_parser("semi", help="the linear probe trained on 1%% / 10%% label subsets")
    for parser in (linear, semi):
        parser.add_argument("--ckpt", required=True, help=CHECKPOINT_HELP)
        parser.add_argument("--train", required=True, help="labelled training images (folder, .beton or TFRecord)")
        parser.add_argument("--val", required=True, help="held-out images scored (the same classes as --train)")
        parser.add_argument("--mode", choices=["cached", "augmented"], default="cached",
                            help="cached: features of centre crops, extracted once (fast); augmented: features of "
                                 "random-resized-crop + flip images every epoch (paper-faithful)")
        add_probe_options(parser)
        add_data_options(parser)
    runs(linear, "msf_fast.eval.probe_commands:run_linear", "linear.json")
    semi.add_argument("--fractions", type=fraction, nargs="+", default=None,
                      help="labelled fraction per class, each in (0, 1] (each class keeps round(fraction x size), at "
                           f"least 1; default {' '.join(map(str, DEFAULT_FRACTIONS))})")
    semi.add_argument("--subset-file", default="",
                      help="train only on the images listed (one per line: index, or file name for an "
                           "ImageFolder); instead of --fractions")
    runs(semi, "msf_fast.eval.probe_commands:run_semi", "semi.json")


def add_probe_options(parser: argparse.ArgumentParser) -> None:
    defaults = ProbeSettings()
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="probe training epochs")
    parser.add_argument("--lr", type=non_negative_float, default=defaults.lr, help="probe SGD learning rate")
    parser.add_argument("--momentum", type=non_negative_float, default=defaults.momentum, help="probe SGD momentum")
    parser.add_argument("--weight-decay", type=non_negative_float, default=defaults.weight_decay,
                        help="probe SGD weight decay")
    parser.add_argument("--probe-batch-size", type=positive_int, default=defaults.batch_size,
                        help="probe training batch")
    parser.add_argument("--milestones", type=positive_int, nargs="*", default=None,
                        help="epochs after which the lr drops x0.1, each below --epochs; none: a constant lr "
                             f"(default: {' '.join(map(str, defaults.milestones))}, those below --epochs)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="probe initialisation, order and subsets")


def option_conflict(args: argparse.Namespace) -> str | None:
    """What in a parsed command line cannot work, told before torch loads; None when nothing."""
    if getattr(args, "subset_file", "") and getattr(args, "fractions", None):
        return "--subset-file and --fractions exclude each other: the list file names the labelled images"
    late = sorted(m for m in getattr(args, "milestones", None) or () if m >= args.epochs)
    if late:
        return (f"--milestones {' '.join(map(str, late))}: not below --epochs {args.epochs}, so the lr would never "
                "drop there (a milestone is the epoch after which it drops)")
    return None


DATA_OPTIONS = {"--train": "train", "--val": "val", "--data": "data", "--queries-from": "queries_from"}


def path_problem(args: argparse.Namespace) -> str | None:
    """A checkpoint that is plainly no torch file (missing, a folder, a .beton, ...), a data path that is no dataset
    or a --subset-file that is no text file, told before torch loads (in the words the command's own checks use
    after it); None when nothing."""
    from msf_fast.checkpoint_files import not_a_checkpoint_file
    from msf_fast.config import data_problem
    for checkpoint in args.ckpt if isinstance(args.ckpt, list) else [args.ckpt]:
        problem = not_a_checkpoint_file(Path(checkpoint))
        if problem:
            return f"{Path(checkpoint)}: {problem}"
    for option, name in DATA_OPTIONS.items():
        path = getattr(args, name, None)
        problem = path and data_problem(str(path))
        if problem:
            return f"{option} {path}: {problem}"
    subset_file = getattr(args, "subset_file", "")
    problem = subset_file and list_file_problem(Path(subset_file))
    return f"--subset-file {subset_file}: {problem}" if problem else None


def list_file_problem(path: Path) -> str | None:
    """Why `path` cannot be a list of image names or indices (a text file), or None."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "a folder, not a list file (one image name or index per line)"
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return "not a text file (a list file holds one image name or index per line)"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None


def probe_milestones(args: argparse.Namespace) -> tuple[int, ...]:
    """The lr milestones a probe uses: those given, or the paper's (15, 30) that fall below --epochs."""
    if args.milestones is None:
        return tuple(m for m in ProbeSettings.milestones if m < args.epochs)
    return tuple(sorted(set(args.milestones)))


def add_figure_commands(subparsers) -> None:
    tsne = subparsers.add_parser("tsne", help="2-D embedding of a few classes' features, one panel per checkpoint")
    add_figure_options(tsne, "images embedded (folder, .beton or TFRecord store), e.g. ImageNet val")
    tsne.add_argument("--classes", type=class_count, default=None,
                      help=f"random classes shown (at most the data's classes), or 'all' (default {DEFAULT_CLASSES}, or "
                           "all when the data has fewer, as stated on stderr)")
    tsne.add_argument("--per-class", type=positive_int, default=50, help="first images of each class shown")
    tsne.add_argument("--method", choices=("tsne", "umap"), default="tsne", help="umap needs umap-learn")
    runs(tsne, "msf_fast.eval.figures.commands:run_tsne", "tsne.json")

    neighbours = subparsers.add_parser("neighbours", help="nearest neighbours of random queries per checkpoint")
    add_figure_options(neighbours, "gallery searched (folder, .beton or TFRecord store), e.g. ImageNet train")
    neighbours.add_argument("--queries-from", default=None,
                            help="labelled images the queries are drawn from (default: --data, and then a query "
                                 "is never its own neighbour); labels must index the same classes as --data")
    neighbours.add_argument("--queries", type=positive_int, default=None,
                            help=f"random query images (default {DEFAULT_QUERIES}, or every image when fewer)")
    neighbours.add_argument("--k", type=positive_int, default=None,
                            help=f"neighbours shown per query (default {DEFAULT_NEIGHBOURS}, or every gallery image "
                                 "when fewer)")
    runs(neighbours, "msf_fast.eval.figures.commands:run_neighbours", "neighbours.json")

    clusters = subparsers.add_parser("clusters", help="k-means clusters of the features, a block per checkpoint")
    add_figure_options(clusters, "images clustered (folder, .beton or TFRecord store), e.g. ImageNet val")
    clusters.add_argument("--clusters", type=positive_int, default=None,
                          help=f"k-means clusters, fewer than the images clustered (default {DEFAULT_CLUSTERS}, or, when "
                               "that is more, as many as the classes clustered and at most half the images, as "
                               "stated on stderr)")
    clusters.add_argument("--per-class", type=positive_int, default=50,
                          help="first images of each class clustered (bounds memory)")
    clusters.add_argument("--rows", type=positive_int, default=None,
                          help=f"random clusters shown, at most --clusters (default {DEFAULT_ROWS}, or every cluster "
                               "when there are fewer)")
    clusters.add_argument("--per-row", type=positive_int, default=8, help="random members shown per cluster")
    runs(clusters, "msf_fast.eval.figures.commands:run_clusters", "clusters.json")


def add_figure_options(parser: argparse.ArgumentParser, data_help: str) -> None:
    parser.add_argument("--ckpt", nargs="+", required=True, help="checkpoints, one panel each, in this order")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--thumb", type=positive_int, default=64, help="thumbnail side in pixels")
    add_data_options(parser)
