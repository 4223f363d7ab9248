"""The embedded demo: synthetic images -> MSF on CPU -> k-NN of the trained vs. the random-init backbone.

    python -m msf_fast.demo [--data data/demo] [--section.param=value ...]

Generates the demo dataset once (ImageFolder of JPEGs, see dataset_prep/demo_data.py), trains with
configs/demo.yaml, evaluates k-NN top-1 (k=20, cosine, held-out images) at epoch 0 (the random
initialisation of the same network) and during training, and writes runs/demo/{log.jsonl,
training.png, summary.json}. Then it evaluates like a paper (python -m msf_fast.eval): the linear probe of the
random-init and the trained backbone, and the figures over the kept epoch snapshots (t-SNE, nearest neighbours,
clusters), all linked from runs/demo/report.md. Any trainer parameter can be overridden, e.g. --train.epochs=2
(python train_imagenet.py --help lists them); --no-report skips the evaluation after training.

A new demo replaces the last one in its folder (--logging.folder, default runs/demo); --train.resume=auto
continues an interrupted demo instead, and on a finished one prints its summary again.
"""
from __future__ import annotations

import sys

PROG = "python -m msf_fast.demo"  # every message of the demo starts with it, as its usage line does

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command(PROG)

import argparse
import contextlib
import io
import json
import signal
import time
from pathlib import Path

from dataset_prep.argument_parser import OneLineParser, non_negative_int, positive_int
from dataset_prep.wording import plural

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


DATA_OPTIONS = {"train_per_class": "--train-per-class", "val_per_class": "--val-per-class", "seed": "--data-seed"}


class DemoDataInUse(Exception):
    """A resumed demo asked for other images than those its run trained on."""


def ensure_demo_data(root: Path, train_per_class: int, val_per_class: int, seed: int,
                     resuming: bool = False) -> dict:
    """The demo dataset in `root`, generated unless it is there with these settings; made again when they differ,
    except for a resumed run (DemoDataInUse: replacing them would leave the run nothing to resume on)."""
    from dataset_prep.demo_data import MARKER, check_replaceable, generate_demo_dataset
    summary_path = root / MARKER
    wanted = {"train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed}
    ours = summary_path.exists()
    if ours:
        summary = json.loads(summary_path.read_text())
        if all(summary.get(k) == v for k, v in wanted.items()):
            return summary
        changed = {DATA_OPTIONS[key]: (summary.get(key), value) for key, value in wanted.items()
                   if summary.get(key) != value}
        if resuming:
            kept = " ".join(f"{option} {before}" for option, (before, _) in changed.items())
            raise DemoDataInUse(f"--train.resume continues the run on the demo dataset in {root}, made with {kept}: "
                                f"give {kept}, or start a new demo without --train.resume (its images are made "
                                "again)")
    check_replaceable(root)  # a user's dataset given as --data is refused before anything is deleted
    if ours:  # runs on the images replaced cannot be resumed ("other data"): say why the dataset is made again
        said = ", ".join(f"{option} {before} -> {after}" for option, (before, after) in changed.items())
        print(f"replacing the demo dataset in {root} ({said}) ...", flush=True)
        # the stores of the images replaced (another folder's .beton files are not the demo's to delete)
        summary_path.unlink()
        for stale in root.glob("*.beton*"):
            stale.unlink()
    else:
        print(f"generating the demo dataset in {root} ...", flush=True)
    summary = generate_demo_dataset(root, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed)
    summary.update(wanted)
    summary_path.write_text(json.dumps(summary, indent=2))  # written last: marks the dataset complete
    return summary


def demo_store(data: Path, overrides: list[str], store_resolution: int = 0) -> list[str]:
    """Train from an FFCV store of the demo images when FFCV is installed (written once, raw pixels: the images
    are tiny), else from the ImageFolder with the torchvision loader. Returns the data overrides."""
    folder_args = [f"--data.train_path={data / 'train'}", f"--data.val_path={data / 'val'}",
                   "--data.backend=torch"]
    if "--data.backend=torch" in overrides:
        return folder_args
    from dataset_prep.ffcv_import import FFCVUnavailable, import_ffcv
    try:
        import_ffcv()
    except FFCVUnavailable as error:
        print(f"note: the demo uses the torchvision loader: {error}", flush=True)
        return folder_args
    beton = data / (f"train-{store_resolution}px.beton" if store_resolution else "train.beton")
    if not beton.exists():
        from dataset_prep import write_beton
        if write_beton.main([str(data / "train"), str(beton), "--write-mode", "raw", "--no-progress",
                             "--max-resolution", str(store_resolution)]) != 0:
            raise SystemExit(f"could not write {beton}")
    # the k-NN monitor keeps reading the folders: an FFCV eval loader would add numba compilation for little gain
    return [f"--data.train_path={beton}", f"--eval.knn_memory_path={data / 'train'}",
            f"--data.val_path={data / 'val'}"]


GIVEN_DATA = ("data.train_path", "data.val_path", "eval.knn_memory_path")  # the demo's own folders otherwise


def given_data_problem(cfg, overrides: list[str]) -> str | None:
    """Why a data path given as an option is no dataset, told before the demo's images and store are made (they
    were, and then the path was refused)."""
    from msf_fast.config import data_problem
    for name in GIVEN_DATA:
        section, parameter = name.split(".")
        path = getattr(getattr(cfg, section), parameter)
        given = any(option.split("=", 1)[0] == f"--{name}" for option in overrides)
        problem = given and path and data_problem(str(path))
        if problem:
            return f"{name}={path}: {problem}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "data" / "demo"), help="where the demo dataset lives")
    parser.add_argument("--train-per-class", type=positive_int, default=200,
                        help="training images per class, when the dataset is generated (default 200)")
    parser.add_argument("--val-per-class", type=positive_int, default=50,
                        help="held-out images per class, when the dataset is generated (default 50)")
    parser.add_argument("--data-seed", type=non_negative_int, default=0,
                        help="seed of the generated images (default 0; --train.seed seeds the training)")
    parser.add_argument("--store-resolution", type=non_negative_int, default=0,
                        help="longest side of the images in the demo's .beton (default 0: as generated, 40-96 px)")
    parser.add_argument("--no-report", action="store_true", help="skip the linear probe and figures after training")
    args, overrides = parser.parse_known_args(argv)
    own_mistakes = [option for option in overrides  # the trainer's options all name a section: --train.epochs
                    if option.startswith("-") and "." not in option.split("=", 1)[0]
                    and option.split("=", 1)[0] not in ("--config-file", "-C")]
    if own_mistakes:
        parser.error(f"unrecognized arguments: {' '.join(own_mistakes)}")

    from msf_fast.config import load_config, output_folder_problem
    from msf_fast.errors import UserError
    data = Path(args.data)
    problem = output_folder_problem(args.data)  # the demo writes its images and store there
    if problem:
        parser.error(f"--data {args.data}: {problem}")
    # The demo's folder is its own: a new demo replaces the last one, unless told to continue it.
    replace = [] if any(option.startswith("--train.resume") for option in overrides) else ["--logging.overwrite=1"]
    try:  # a mistake in the options is told before the dataset is generated (the data paths are checked below)
        chosen = load_config(["--config-file", str(DEMO_CONFIG), *replace, *overrides], check_data=False,
                             prog=parser.prog)
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    problem = given_data_problem(chosen, overrides)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    from dataset_prep.demo_data import NotDemoData
    try:
        dataset = ensure_demo_data(data, args.train_per_class, args.val_per_class, args.data_seed,
                                   resuming=not replace)
    except NotDemoData as error:  # a user's dataset given as --data: it would be deleted
        parser.error(f"--data {args.data}: {error}")
    except DemoDataInUse as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    fewer_steps = fewer_steps_note(chosen, dataset["train_images"])
    if fewer_steps:
        print(f"note: {fewer_steps}", flush=True)
    try:
        cfg = load_config(["--config-file", str(DEMO_CONFIG), *demo_store(data, overrides, args.store_resolution),
                           *replace, *overrides], prog=parser.prog)
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    from msf_fast.stopping import RunStopped
    from msf_fast.trainer import Trainer
    start = time.perf_counter()
    try:
        # demo.yaml's 2 threads are the demo's choice, not the user's (given as an option or in their own recipe
        # file): fewer on fewer cores, or where other processes keep cores busy
        threads_given = any(option.startswith(("--train.threads", "--config-file", "-C")) for option in overrides)
        trainer = Trainer(cfg, fit_threads_to_load=not threads_given)
        already_finished = trainer.finished
        resumed_at = trainer.step if trainer.resumed else None
        result = trainer.train()
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except RunStopped as stop:
        print(f"{PROG}: {stop}", file=sys.stderr)
        return stop.exit_code
    except RuntimeError as error:  # torch.OutOfMemoryError is one; any other is a bug and keeps its traceback
        from msf_fast.errors import training_out_of_memory
        shortage = training_out_of_memory(error, cfg)
        if shortage is None:
            raise
        print(f"{PROG}: error: {shortage}", file=sys.stderr)
        return 1
    stopped = trainer.stops.signal  # during the last step: the training finished, the report is left for later
    written = trainer.folder / "summary.json"
    finished_summary = json.loads(written.read_text()) if already_finished and written.exists() else None
    if finished_summary is not None:  # a finished demo resumed: its summary stands, time and report included
        if args.no_report or "linear_probe" in finished_summary:
            print_summary(finished_summary, cfg.eval.knn_k)
            return 0
    minutes = (time.perf_counter() - start) / 60
    knn = result.knn_by_epoch
    random_init = knn.get(0)
    trained = knn[max(knn)] if knn and max(knn) > 0 else None
    summary = {"random_init_knn_top1": random_init, "trained_knn_top1": trained,
               "knn_by_epoch": knn, "loss_by_epoch": result.loss_by_epoch, "steps": result.steps,
               "minutes": round(minutes, 2), "resumed_at_step": resumed_at, "log": str(trainer.folder / "log.jsonl"),
               "plot": str(trainer.folder / "training.png")}
    if finished_summary is not None:  # only the report is added: the training's time is the one it recorded
        summary.update(minutes=finished_summary["minutes"], resumed_at_step=finished_summary.get("resumed_at_step"))
    stopped_report = None
    if not args.no_report and not stopped and random_init is not None and trained is not None:
        try:
            summary.update(paper_report(trainer, data, random_init, trained))
        except ReportStopped as stop:  # the training's summary is kept: a resume adds the report
            stopped_report = stop.exit_code
    (trainer.folder / "summary.json").write_text(json.dumps(summary, indent=2))
    if stopped_report is not None:
        print(f"{PROG}: the report was interrupted; the training is finished (--train.resume=auto makes the report)",
              file=sys.stderr)
        return stopped_report
    print_summary(summary, cfg.eval.knn_k)
    if stopped and not args.no_report:
        print(f"{PROG}: stopped by {trainer.stops.signal_name} after the last step: the training is finished, the "
              "report was not made (--train.resume=auto makes it)", file=sys.stderr)
        return 128 + stopped
    return 0


def fewer_steps_note(cfg, images: int) -> str | None:
    """What a batch larger than the recipe's costs: the demo learns per step, and the same epochs are fewer steps."""
    import yaml
    recipe = yaml.safe_load(DEMO_CONFIG.read_text())["train"]
    if cfg.train.batch_size <= recipe["batch_size"] or cfg.train.max_steps:
        return None
    steps = cfg.train.epochs * (images // cfg.train.batch_size)
    wanted = recipe["epochs"] * (images // recipe["batch_size"])
    if steps >= wanted:
        return None
    epochs = -(-wanted // (images // cfg.train.batch_size))
    span = f"{cfg.train.epochs} epochs are" if cfg.train.epochs != 1 else "1 epoch is"
    return (f"train.batch_size={cfg.train.batch_size}: {span} {steps} steps, against the "
            f"recipe's {wanted} steps of {recipe['batch_size']}; the demo learns per step, not per image (README "
            f"\"Why batch 32\"): --train.epochs={epochs} gives {wanted} or more")


def print_summary(summary: dict, k: int) -> None:
    random_init, trained = summary["random_init_knn_top1"], summary["trained_knn_top1"]
    minutes = f"{summary['minutes']:.1f} min"
    if summary.get("resumed_at_step") is not None:  # the earlier sessions' time is not known
        minutes += f" in this session, which resumed at step {summary['resumed_at_step']}"
    print()
    if random_init is None or trained is None:
        print(f"trained {plural(summary['steps'], 'step')} ({minutes}); k-NN was not evaluated (eval.* settings)")
    else:
        print(f"k-NN top-1 (k={k}, held-out images): random init {random_init:.3f} -> "
              f"trained {trained:.3f} after {plural(summary['steps'], 'step')} ({minutes})")
    if "linear_probe" in summary:
        probe = summary["linear_probe"]
        print(f"linear probe top-1: random init {probe['random_init']['top1']:.3f} -> trained "
              f"{probe['trained']['top1']:.3f}")
        print(f"report: {summary['report']}")
    print(f"log: {summary['log']}  plot: {summary['plot']}")


class ReportStopped(Exception):
    """Ctrl-C or SIGTERM while an eval command of the report ran (it said "interrupted")."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


def quietly(command, argv: list[str]) -> int:
    """Run an eval command without its JSON line on stdout (the demo prints its own summary); ReportStopped when
    it was stopped (the demo said "failed", exit 1), whose own "interrupted" line the demo's replaces."""
    said = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
        code = command(argv)
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise ReportStopped(code)
    sys.stderr.write(said.getvalue())
    return code


def paper_report(trainer, data: Path, random_init_knn: float, trained_knn: float) -> dict:
    """The eval commands on the run: linear probe of the epoch-0 snapshot and of the final checkpoint, the
    figures over every snapshot, and a first report section comparing random init and trained."""
    from msf_fast import eval as evaluation
    from msf_fast.eval.report import markdown_table, write_section

    folder, cfg = trainer.folder, trainer.cfg
    checkpoints = folder / "checkpoints"
    snapshots = sorted(checkpoints.glob("epoch_*.pt"))
    if not snapshots or snapshots[0].name != "epoch_0000.pt":
        return {}
    final = checkpoints / "latest.pt"
    common = ["--resolution", str(cfg.data.resolution), "--workers", str(cfg.data.workers), "--device",
              cfg.train.device, "--batch-size", "256", "--no-progress"]
    print("evaluating: linear probe of the random init and of the trained backbone, figures ...", flush=True)
    probes = {}
    for name, checkpoint in (("random_init", snapshots[0]), ("trained", final)):
        out = folder / "linear_probe" / name
        if quietly(evaluation.main, ["linear", "--ckpt", str(checkpoint), "--train", str(data / "train"), "--val",
                                     str(data / "val"), "--out", str(out), *common]) != 0:
            raise SystemExit(f"the linear probe of {checkpoint} failed")
        probes[name] = {key: value for key, value in json.loads((out / "linear.json").read_text()).items()
                        if key in ("top1", "top5", "checkpoint")}
    figure_checkpoints = [str(path) for path in snapshots]
    final_is_last_snapshot = (trainer.step == trainer.epoch * trainer.steps_per_epoch
                              and snapshots[-1].name == f"epoch_{trainer.epoch:04d}.pt")
    if not final_is_last_snapshot:  # a run stopped mid-epoch (max_steps) ends after its last snapshot
        figure_checkpoints.append(str(final))
    figures = {"tsne": ["--data", str(data / "val")],
               "neighbours": ["--data", str(data / "train"), "--queries-from", str(data / "val")],
               "clusters": ["--data", str(data / "val"), "--clusters", "10"]}
    for command, options in figures.items():
        chosen = figure_checkpoints if command != "clusters" else [str(final)]
        if quietly(evaluation.main, [command, "--ckpt", *chosen, "--out", str(folder), *common, *options]) != 0:
            raise SystemExit(f"the {command} figure failed")
    rows = [["random init (epoch 0)", random_init_knn, probes["random_init"]["top1"], probes["random_init"]["top5"]],
            ["trained", trained_knn, probes["trained"]["top1"], probes["trained"]["top5"]]]
    report = write_section(folder, "demo", "## Demo: random init vs trained\n\n"
                           f"k-NN (k={cfg.eval.knn_k}, majority vote) and the linear probe (the paper's protocol on "
                           "cached centre-crop features, 40 epochs) on the held-out demo images.\n\n"
                           + markdown_table(["backbone", "k-NN top-1", "linear top-1", "linear top-5"], rows))
    return {"linear_probe": probes, "report": str(report)}


if __name__ == "__main__":
    sys.exit(main())
