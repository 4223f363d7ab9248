"""Every knob of a training run, declared once as fastargs Sections (schema at a glance).

Recipes are YAML files in configs/; any value can be overridden on the command line:
    python train_imagenet.py --config-file configs/rn50_200_epochs.yaml --train.epochs=100
`load_config` returns a plain nested namespace (`cfg.msf.topk`), so the core takes explicit values.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import yaml
from fastargs import Config, Param, Section
from fastargs.validation import Checker

from dataset_prep.argument_parser import OneLineParser
from dataset_prep.image_folder import classes_without_images, without_images_message
from dataset_prep.staging import nearest_existing
from dataset_prep.stores import (BETON, TFRECORD, beton_problem, describe_path, path_kind, read_manifest,
                                 tfrecord_problem, within, written_from)
from dataset_prep.wording import plural, with_article
from msf_fast.architectures import RESNETS
from msf_fast.checkpoint_files import not_a_checkpoint_file
from msf_fast.errors import UserError
from msf_fast.run_folder import holds_other_run, holds_run, other_run_message
from pipelines import MAX_DATALOADER_WORKERS, data_format, default_torch_threads, default_workers
from pipelines.recipe import RECIPE_NAMES


class Flag(Checker):
    """A boolean that also reads "0/1/true/false/yes/no/on/off" from the command line."""

    def check(self, value):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)

    def help(self):
        return "a boolean"


class IntAtLeast(Checker):
    def __init__(self, low: int):
        self.low = low

    def check(self, value):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        number = int(value)
        if number < self.low:
            raise ValueError(value)
        return number

    def help(self):
        return f"an integer >= {self.low}"


class NumberIn(Checker):
    """A float in [low, high] (high = None: no upper bound)."""

    def __init__(self, low: float, high: float | None = None):
        self.low, self.high = low, high

    def check(self, value):
        number = float(value)
        if not (number >= self.low and (self.high is None or number <= self.high)):  # NaN fails too
            raise ValueError(value)
        return number

    def help(self):
        return f"a number >= {self.low:g}" if self.high is None else f"a number in [{self.low:g}, {self.high:g}]"


class AutoOr(Checker):
    """"auto", or what `checker` accepts."""

    def __init__(self, checker: Checker):
        self.checker = checker

    def check(self, value):
        return "auto" if str(value).strip().lower() == "auto" else self.checker.check(value)

    def help(self):
        return f"'auto' or {self.checker.help()}"


class OneOf(Checker):
    """One of `choices`, named in the order given (fastargs' OneOf keeps a set: its messages listed the choices in
    another order on every run)."""

    def __init__(self, choices):
        self.choices = list(choices)

    def check(self, value):
        if value not in self.choices:
            raise ValueError(value)
        return value

    def help(self):
        return f"one of {', '.join(map(str, self.choices))}"


POSITIVE, NON_NEGATIVE = IntAtLeast(1), IntAtLeast(0)
WORKERS = AutoOr(NON_NEGATIVE)
KNN_K_DEFAULT = 20  # eval.knn_k; the k-NN monitor shrinks this default (only) to a smaller searched set
AUTO = "auto"  # train.resume: the run folder's latest good checkpoint


def declare_schema(config: Config, for_help: bool = False) -> None:
    """`for_help`: the descriptions also say what `auto` picks on this machine (amp's answer loads torch, which a
    run's checks do without)."""
    amp_here = ""
    if for_help:
        from msf_fast.precision import cpu_amp_choice
        amp_here = f"; here {cpu_amp_choice()} on the CPU"

    def section(name, desc):
        return Section(name, desc, config_descriptor=config)

    section("model", "Backbone and heads").params(
        arch=Param(OneOf(RESNETS), "torchvision ResNet architecture", default="resnet50"),
        small_input=Param(Flag(), "3x3 stride-1 stem for 32-64 px images", default=False),
        hidden_dim=Param(NON_NEGATIVE, "MLP hidden width (0: 2 x backbone features)", default=0),
        proj_dim=Param(NON_NEGATIVE, "embedding width (0: backbone features / 4)", default=0),
    )
    section("msf", "Mean-shift loss and memory bank").params(
        topk=Param(POSITIVE, "neighbours the query is pulled to (1 = BYOL)", default=5),
        bank_size=Param(POSITIVE, "memory bank entries; a multiple of the global batch", default=1_024_000),
        momentum=Param(NumberIn(0, 1), "target EMA momentum", default=0.99),
        bank_chunk=Param(NON_NEGATIVE, "bank rows scored at once by the top-k search (0: 262,144 on CUDA, "
                                       "near the fastest for 291 MB; 65,536 on the CPU, faster there)", default=0),
        bank_dtype=Param(OneOf(["auto", "float32", "bfloat16", "float16"]),
                         "bank storage and search dtype (auto: the AMP dtype on CUDA, float32 on the CPU)",
                         default="auto"),
    )
    section("data", "Training data").params(
        backend=Param(OneOf(["auto", "torch", "ffcv", "dali"]),
                      "loader backend (auto: ffcv for a .beton, dali for a TFRecord store, torch for an ImageFolder)",
                      default="auto"),
        train_path=Param(str, "training data: an ImageFolder, a .beton (dataset_prep.write_beton) or a TFRecord "
                              "store (dataset_prep.write_tfrecord)", default=""),
        val_path=Param(str, "held-out data for the k-NN monitor: folder, .beton or TFRecord store ('' = none)",
                       default=""),
        recipe=Param(OneOf(RECIPE_NAMES), "augmentations target/online: w = weak, s = strong", default="w/s"),
        resolution=Param(POSITIVE, "training crop size (the final one with progressive resizing)", default=224),
        min_resolution=Param(NON_NEGATIVE, "progressive resizing: crop size of the first epochs (0 = off; e.g. 160)",
                             default=0),
        start_ramp=Param(NON_NEGATIVE, "progressive resizing: last epoch at min_resolution", default=0),
        end_ramp=Param(NON_NEGATIVE, "progressive resizing: first epoch at resolution", default=0),
        workers=Param(WORKERS, "loader workers: DataLoader processes (FFCV, DALI: threads); auto = one per core "
                               f"available (here {default_workers('ffcv')}; at most {MAX_DATALOADER_WORKERS} "
                               "DataLoader processes)", default="auto"),
        ffcv_decoder=Param(OneOf(["once", "twice"]), "FFCV: decode each image once for both views' seeded crops, or "
                                                     "twice (FFCV's stock decoders, unseeded crops)", default="once"),
        in_memory=Param(AutoOr(Flag()), "FFCV: 1 reads the store through the page cache in random order; 0 reads "
                                         "pages on demand, uncached, in a page-aware order (stores larger than "
                                         "memory); auto: 1 when the store takes at most 80%% of the memory "
                                         "available", default="auto"),
        decoder_device=Param(OneOf(["auto", "cpu", "mixed"]),
                             "DALI JPEG decoding: mixed = GPU (nvJPEG), auto = mixed when training on CUDA",
                             default="auto"),
    )
    section("optim", "SGD with a cosine schedule").params(
        lr=Param(NumberIn(0), "learning rate per 256 images (scaled linearly with the global batch)", default=0.05),
        momentum=Param(NumberIn(0), "SGD momentum", default=0.9),
        weight_decay=Param(NumberIn(0), "weight decay (all parameters)", default=1e-4),
        schedule=Param(OneOf(["cosine", "cosine_epoch", "constant"]),
                       "cosine per step, per epoch (the original code), or constant", default="cosine"),
    )
    section("train", "Training loop").params(
        epochs=Param(POSITIVE, "epochs", default=200),
        batch_size=Param(POSITIVE, "images per process and step", default=256),
        max_steps=Param(NON_NEGATIVE, "stop after this many steps in total (0 = no limit)", default=0),
        seed=Param(NON_NEGATIVE, "seed of weights, bank, data order and augmentations", default=0),
        device=Param(OneOf(["auto", "cpu", "cuda"]), "compute device", default="auto"),
        amp=Param(OneOf(["auto", "bf16", "fp16", "off"]), "autocast dtype (auto: bf16 on CUDA, fp16 on GPUs "
                  "without bf16; on the CPU bf16 only where native (AMX or AVX512-BF16), else fp32"
                  f"{amp_here})", default="auto"),
        channels_last=Param(Flag(), "channels-last memory format (also faster for fp32 on the CPU from 64 px on: "
                                    "python -m msf_fast.bench cpu)", default=True),
        compile=Param(Flag(), "torch.compile the encoders and predictor (2-core CPU, ResNet-18 at 32 px: 1.25x "
                              "in fp32 after 48 s of compiling, 0.79x in bf16; not yet measured on a GPU)", default=False),
        sync_bn=Param(Flag(), "SyncBatchNorm across ranks (CUDA; default: per-rank statistics, as the original's "
                              "DataParallel)", default=False),
        threads=Param(NON_NEGATIVE, "torch CPU threads (0: on the CPU the cores the loader workers leave free, half "
                                   f"the cores when they take all; here {default_torch_threads(default_workers('ffcv'))} "
                                   "beside data.workers=auto; fewer where other processes keep cores busy as the run "
                                   "starts; else torch's default)",
                      default=0),
        resume=Param(str, "continue a run: 'auto' (the run folder's latest good checkpoint if it has one, else start "
                          "fresh) or a checkpoint file ('' = start fresh in a folder without a run)", default=""),
    )
    section("logging", "Outputs").params(
        folder=Param(str, "run folder: log.jsonl, plots, checkpoints", default="runs/msf"),
        log_every=Param(POSITIVE, "steps between log lines", default=50),
        checkpoint_every=Param(NON_NEGATIVE, "epochs between checkpoints (0 = only at the end)", default=1),
        checkpoint_minutes=Param(NumberIn(0), "also write a step-exact checkpoint when this many minutes passed since "
                                              "the last one (0 = off)", default=30.0),
        snapshot_every=Param(NON_NEGATIVE, "keep checkpoints/epoch_NNNN.pt every N epochs, epoch 0 included, for the "
                                  "figures over training (0 = none)", default=0),
        progress=Param(Flag(), "progress bar", default=True),
        overwrite=Param(Flag(), "start a new run in a folder that holds one, deleting the old run's checkpoints, log, "
                                "plots and reports", default=False),
        tensorboard=Param(Flag(), "also write the step and epoch scalars as TensorBoard events in FOLDER/tensorboard "
                                  "(needs the tensorboard extra)", default=False),
    )
    section("eval", "k-NN monitor on held-out images").params(
        knn_every=Param(NON_NEGATIVE, "epochs between k-NN evaluations (0 = only at the end)", default=0),
        knn_k=Param(POSITIVE, "neighbours voting (the default shrinks to a smaller searched set)",
                    default=KNN_K_DEFAULT),
        knn_final=Param(Flag(), "evaluate k-NN at the end of training", default=True),
        knn_memory_path=Param(str, "labelled images the k-NN monitor searches: folder, .beton or TFRecord store "
                                   "('' = data.train_path)", default=""),
        knn_memory_per_class=Param(NON_NEGATIVE, "k-NN monitor: images per class searched, a seeded balanced subset "
                                        "(0 = all)", default=0),
        knn_val_per_class=Param(NON_NEGATIVE, "k-NN monitor: held-out images per class classified, a seeded balanced "
                                     "subset (0 = all)", default=0),
    )


class ConfigError(UserError):
    """A configuration that cannot run; the message names the parameter."""


def load_config(argv: list[str] | None = None, check_data: bool = True,
                prog: str = "train_imagenet.py") -> SimpleNamespace:
    """The run's config from YAML recipes and --section.param=value options; ConfigError names the first bad
    parameter. `check_data=False` skips the data paths (a run fed by another loader, e.g. a benchmark's); `prog`
    names the command in the parser's errors."""
    argv = sys.argv[1:] if argv is None else argv
    config = Config()
    declare_schema(config, for_help=asks_for_help(argv))
    parser = OneLineParser(prog=prog, description="Train MSF (see README for the recipes).")
    parser.add_argument("--config-file", "-C", action="append", default=[],
                        help="YAML recipe (repeatable; later files and CLI values override earlier ones)")
    for path, param in config.entries.items():
        parser.add_argument("--" + ".".join(path), default=None, metavar="VALUE",
                            help=f"{param.desc}; {param.checker.help()} (default: {param.default!r})")
    args = parser.parse_args(argv)
    for fname in args.config_file:
        config.collect(read_recipe(fname, known=config.entries))
    config.collect({k: v for k, v in vars(args).items() if k != "config_file" and v is not None})
    errors = config.validate(mode="errordict")
    if errors:
        path, _ = next(iter(errors.items()))
        param = config.entries[path]
        raise ConfigError(f"{'.'.join(path)}={config.content.get(path)!r}: expected {param.checker.help()}")
    cfg = config.get()
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # torchrun sets WORLD_SIZE
    if check_data:
        validate_data(cfg)
    if cfg.data.workers == "auto":
        cfg.data.workers = default_workers(resolve_backend(cfg.data.backend, cfg.data.train_path)
                                           if cfg.data.train_path else "ffcv")
    return cfg


def asks_for_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv  # OneLineParser takes no abbreviations


class KeyGivenTwice(Exception):
    pass


class RecipeLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error (PyYAML keeps the last one silently)."""


def _mapping_without_repeats(loader: RecipeLoader, node, deep: bool = False) -> dict:
    lines: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise KeyGivenTwice(f"{key} is given twice (lines {lines[key]} and {line})")
        lines[key] = line
    return loader.construct_mapping(node, deep)


RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def read_recipe(fname: str, known) -> dict:
    """A YAML recipe as {section: {param: value}}: sections of parameters, or flat `section.param: value` keys, or
    both. Anything else (not a file, not text, not YAML, not a mapping, a key the schema does not know, where a typo
    would be ignored) is a ConfigError naming the file."""
    if os.path.isdir(fname):
        raise ConfigError(f"--config-file={fname}: a folder, not a YAML recipe (e.g. configs/rn50_200_epochs.yaml)")
    if not os.path.exists(fname):  # a pipe (--config-file <(...)) or /dev/null reads as a file does
        raise ConfigError(f"--config-file={fname}: no such file")
    try:
        with open(fname, encoding="utf-8") as handle:
            content = yaml.load(handle, Loader=RecipeLoader)
    except KeyGivenTwice as error:
        raise ConfigError(f"{fname}: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config-file={fname}: not a text file (a YAML recipe is text)") from None
    except OSError as error:
        raise ConfigError(f"--config-file={fname}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"--config-file={fname}: not valid YAML{where} ({reason})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"--config-file={fname}: expected sections of parameters (e.g. 'train:' then "
                          f"'  epochs: 100'), found a {type(content).__name__}")
    recipe: dict = {}
    for key, values in content.items():
        if isinstance(values, dict):
            entries = {(str(key), str(name)): value for name, value in values.items()}
        elif "." in str(key):  # a flat `section.param: value`
            entries = {tuple(str(key).split(".", 1)): values}
        else:
            raise ConfigError(top_level_problem(fname, str(key), values, known))
        for (section, name), value in entries.items():
            if (section, name) not in known:
                raise ConfigError(f"{fname}: unknown parameter {section}.{name}{closest_name(section, name, known)}")
            if value is None:  # `epochs:` with nothing after it: YAML's null, which fastargs would skip
                raise ConfigError(f"{fname}: {section}.{name}: no value")
            if name in recipe.get(section, {}):  # as a flat section.param key and under its section
                raise ConfigError(f"{fname}: {section}.{name} is given twice (as '{section}.{name}:' and under "
                                  f"'{section}:')")
            recipe.setdefault(section, {})[name] = value
    return recipe


def top_level_problem(fname: str, key: str, value, known) -> str:
    """Why a top-level `key: value` is neither a section nor a flat section.param key: with no value, in the words
    of the nested case (`r.yaml: train.epochs: no value`); naming the section.param keys a parameter may stand for."""
    is_section = key in {name for name, _ in known}
    if value is None and is_section:  # `train:` with its parameters not indented under it
        return f"{fname}: {key}: no value (a section: indent its parameters under it, e.g. '  epochs: 100')"
    owners = [f"{section}.{name}" for section, name in known if name == key]
    if not owners and not is_section:
        close = difflib.get_close_matches(key, {name for _, name in known}, n=1, cutoff=0.6)
        owners = [f"{section}.{name}" for section, name in known if name in close]
    hint = f" (did you mean {' or '.join(owners)}?)" if owners else ""
    if value is None:
        return f"{fname}: {key}: no value, and no section{hint}"
    return f"--config-file={fname}: {key}: expected a section of parameters or a section.param key, found " \
           f"{value!r}{hint}"


def closest_name(section: str, name: str, known) -> str:
    names = [".".join(path) for path in known]
    found = difflib.get_close_matches(f"{section}.{name}", names, n=1, cutoff=0.6)
    return f" (did you mean {found[0]}?)" if found else ""


def validate(cfg, world_size: int = 1) -> None:
    """The checks that involve several parameters or the file system (each parameter's own range is its
    checker's, in the schema)."""
    if cfg.train.batch_size < 2:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: BatchNorm needs at least 2 images per process "
                          "and step (the batch statistics of one image are undefined)")
    global_batch = cfg.train.batch_size * world_size
    if cfg.msf.bank_size % global_batch:
        raise ConfigError(f"msf.bank_size={cfg.msf.bank_size}: must be a multiple of the global batch "
                          f"{global_batch} (train.batch_size={cfg.train.batch_size} x {plural(world_size, 'process')})")
    if cfg.msf.topk > cfg.msf.bank_size:
        raise ConfigError(f"msf.topk={cfg.msf.topk}: must not exceed msf.bank_size={cfg.msf.bank_size}")
    if cfg.data.min_resolution:
        if not 0 < cfg.data.min_resolution <= cfg.data.resolution:
            raise ConfigError(f"data.min_resolution={cfg.data.min_resolution}: must be in 1..data.resolution")
        if not 0 <= cfg.data.start_ramp < cfg.data.end_ramp:
            raise ConfigError(f"data.start_ramp={cfg.data.start_ramp}, data.end_ramp={cfg.data.end_ramp}: "
                              "progressive resizing needs 0 <= start_ramp < end_ramp")
    if cfg.train.resume not in ("", AUTO):  # a file that may be a torch file is read by the trainer
        what = not_a_checkpoint_file(Path(cfg.train.resume))
        if what:
            raise ConfigError(f"train.resume={cfg.train.resume}: {what} (or 'auto': the run folder's latest "
                              "checkpoint)")
    if cfg.logging.overwrite and cfg.train.resume:
        raise ConfigError(f"logging.overwrite=1 starts over and train.resume={cfg.train.resume} continues: choose one")
    if not cfg.train.resume and not cfg.logging.overwrite and holds_run(cfg.logging.folder):
        raise ConfigError(holds_run_message(cfg.logging.folder))
    if cfg.train.resume not in ("", AUTO) and holds_other_run(cfg.logging.folder, cfg.train.resume):
        raise ConfigError(other_run_message(cfg.logging.folder, cfg.train.resume))
    folder_problem = output_folder_problem(cfg.logging.folder)
    if folder_problem:
        raise ConfigError(f"logging.folder={cfg.logging.folder}: {folder_problem}")
    if cfg.logging.tensorboard and importlib.util.find_spec("tensorboard") is None:
        from msf_fast.runlog import TENSORBOARD_INSTALL
        raise ConfigError(f"logging.tensorboard=1 needs the tensorboard package: {TENSORBOARD_INSTALL}")


def holds_run_message(folder) -> str:
    return (f"logging.folder={folder} holds a run: continue it with --train.resume=auto, start over with "
            "--logging.overwrite=1 (deletes it), or choose another --logging.folder")


def output_folder_problem(folder: str) -> str | None:
    """Why `folder` cannot be created or written (None when it can): a file in its place or on its path, or an
    existing part that is not writable."""
    if not folder:
        return "empty (give a folder for the run's checkpoints and log)"
    path = nearest_existing(folder)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(folder) else f" on its path ({path})"
        return f"a file{where}, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    refused = creation_refused(path)
    return f"cannot be created or written ({refused})" if refused else None


def creation_refused(folder: str) -> str | None:
    """The OS's reason why nothing can be made in the existing `folder` (None when it can), where os.access cannot
    tell (root, /proc, some mounts): an entry is made there and removed at once."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".msf-write-check-", dir=folder))
    except OSError as error:
        return error.strerror or str(error)
    return None


def validate_data(cfg) -> None:
    """Every data path is an ImageFolder, a complete .beton or a complete TFRecord store, and the backend reads
    it: found at start, in one line that names the parameter and the fix, before anything is built."""
    if not cfg.data.train_path:
        raise ConfigError("data.train_path: required (an ImageFolder, a .beton file or a TFRecord store)")
    for name, path in (("data.train_path", cfg.data.train_path), ("data.val_path", cfg.data.val_path),
                       ("eval.knn_memory_path", cfg.eval.knn_memory_path)):
        if path:
            problem = data_problem(path)
            if problem:
                raise ConfigError(f"{name}={path}: {problem}")
            if within(cfg.logging.folder, path):  # its checkpoints and plots would be listed as images of the data
                raise ConfigError(f"logging.folder={cfg.logging.folder} is inside {name}={path}: the run would write "
                                  "its checkpoints and log among the images it reads; choose a folder outside the "
                                  "data")
            source = written_from(path)
            if source and within(cfg.logging.folder, source):
                raise ConfigError(f"logging.folder={cfg.logging.folder} is inside {source}, the folder {name}={path} "
                                  "was written from: the run's folder would be listed there as a class of images "
                                  "(by the evaluation, by a new store); choose a folder outside the data")
    check_held_out(cfg)
    path = cfg.data.train_path
    backend, stored_as = resolve_backend(cfg.data.backend, path), data_format(path)
    if backend == stored_as:
        return
    if backend == "torch":
        raise ConfigError(f"data.backend=torch reads an ImageFolder, and {path} is {with_article(KINDS[stored_as])} "
                          "(data.backend=auto picks the loader that reads it)")
    source = (read_manifest(path) or {}).get("source", "SRC_DIR") if stored_as != "torch" else path
    writer, output = ("write_beton", "OUT.beton") if backend == "ffcv" else ("write_tfrecord", "OUT_DIR")
    raise ConfigError(f"data.backend={backend} reads {with_article(KINDS[backend])}, and {path} is "
                      f"{with_article(KINDS[stored_as])}: write one with python -m dataset_prep.{writer} {source} "
                      f"{output}, or use data.backend=auto")


def check_held_out(cfg) -> None:
    """The k-NN monitor's held-out images are not the images it searches (refused: each would find itself) and
    should not be the training images; a store written with --val should not be trained on (one-line warnings)."""
    import sys

    from dataset_prep.stores import class_names, same_images, store_split
    from pipelines.contract import classes_problem
    warnings = []
    data, memory = cfg.data, cfg.eval.knn_memory_path or cfg.data.train_path
    if data.val_path and (cfg.eval.knn_every or cfg.eval.knn_final):
        searched = "eval.knn_memory_path" if cfg.eval.knn_memory_path else "data.train_path"
        how = same_images(data.val_path, memory)
        if how:
            raise ConfigError(f"data.val_path={data.val_path} and {searched}={memory} hold {how}: each held-out image "
                              "of the k-NN monitor would find itself among the images it searches (top-1 1.0 at k = "
                              "1); give held-out images, or data.val_path='' for no monitor")
        searched_classes, held_out_classes = class_names(memory), class_names(data.val_path)
        if searched_classes is not None and held_out_classes is not None:  # before the run takes its folder
            problem = classes_problem(searched_classes, f"{searched}={memory}", held_out_classes,
                                      f"data.val_path={data.val_path}")
            if problem:
                raise ConfigError(f"the k-NN monitor: {problem} (give both the same class folders, or "
                                  "data.val_path='' for no monitor)")
        how = same_images(data.val_path, data.train_path)
        if how:
            warnings.append(f"data.val_path={data.val_path} and data.train_path={data.train_path} hold {how}: the "
                            "k-NN monitor scores images the network trains on, which inflates it")
    if store_split(data.train_path) == "val":
        warnings.append(f"data.train_path={data.train_path} was written as a validation split (--val: its manifest "
                        "says \"split\": \"val\"): the run trains on held-out images")
    if os.environ.get("RANK", "0") == "0":  # torchrun: said once
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)


KINDS = {"torch": "ImageFolder", "ffcv": ".beton", "dali": "TFRecord store"}


def found_text(found: str) -> str:
    """describe_path's words after "expected ...;": "found a file, ...", but "it does not exist" as it is."""
    return found if found.startswith("it ") else f"found {found}"


def data_problem(path: str) -> str | None:
    """Why `path` cannot be read as training or evaluation data (None when it can)."""
    kind = path_kind(path)
    if kind == BETON:
        return beton_problem(path) if os.path.isfile(path) else f"no such .beton ({describe_path(path)})"
    if kind == TFRECORD:
        return tfrecord_problem(path)
    found = describe_path(path)
    if found != "an ImageFolder":
        return f"expected an ImageFolder, a .beton or a TFRecord store; {found_text(found)}"
    empty = classes_without_images(path)
    return without_images_message(empty) if empty else None


def resolve_backend(backend: str, train_path: str) -> str:
    return data_format(train_path) if backend == "auto" else backend


def to_dict(cfg) -> dict:
    return {name: dict(vars(section)) for name, section in vars(cfg).items()}
