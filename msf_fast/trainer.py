"""The training run: built from a config by a few `create_*` steps, then epochs of `train_step` with logging,
the k-NN monitor (epoch 0 = the random initialisation) and checkpoints."""
from __future__ import annotations

import importlib.util
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset_prep import core_load
from dataset_prep.progress import bar_disabled, bar_options, stops_deferred
from dataset_prep.wording import plural
from msf_fast import checkpoint as ckpt
from msf_fast.bank import default_chunk_rows
from msf_fast.config import holds_run_message, resolve_backend, to_dict
from msf_fast.distributed import data_parallel
from msf_fast.ema import make_ema
from msf_fast.errors import UserError
from msf_fast.knn_monitor import KnnMonitor
from msf_fast.model import MSF
from msf_fast.config import AUTO
from msf_fast.resume_rules import ResumeRefused, RunIdentity, check_resume, schedule_note
from msf_fast.run_checkpoints import RunCheckpoints, read_training_state
from msf_fast.run_folder import clear_run, holds_other_run, holds_run, other_run_message
from msf_fast.run_lock import RunFolderLock
from msf_fast.stopping import RunStopped, StopRequests, weights_finite
from msf_fast.runlog import DeferredScalars, JsonlLog, logged_epochs, plot_run, read_jsonl
from msf_fast.schedule import learning_rate, progressive_resolution, scaled_lr
from msf_fast.precision import resolve_precision
from msf_fast.step import bank_dtype, make_sgd, resolve_device, train_step
from msf_fast.throughput import StepClock, TimeSplit
from pipelines import TwoViewLoader, build_train_loader, default_torch_threads, process_cores, two_view_recipe
from pipelines.worker_sockets import TempFolderTooLong


@dataclass
class EpochStats:
    """One pass of the loop: a whole epoch, or its part up to the step limit (`complete` False)."""
    epoch: int  # 1-based: the epoch these steps belong to
    steps: int
    loss: float
    purity: float
    seconds: float
    complete: bool
    time: TimeSplit  # waiting for the loader vs in the step


@dataclass
class TrainResult:
    steps: int
    folder: Path
    loss_by_epoch: dict[int, float] = field(default_factory=dict)
    knn_by_epoch: dict[int, float] = field(default_factory=dict)  # epoch 0: the random initialisation
    time: TimeSplit = field(default_factory=TimeSplit)  # the whole run's, the loader's start-up excluded

    @property
    def final_loss(self) -> float | None:
        return self.loss_by_epoch[max(self.loss_by_epoch)] if self.loss_by_epoch else None

    def summary(self) -> dict:
        timing = {**self.time.record(), "bound": self.time.bound} if self.time.images else {}  # none: nothing ran
        return {"steps": self.steps, "final_loss": self.final_loss, "knn_top1": self.knn_by_epoch, **timing,
                "folder": str(self.folder)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loader_notice(folder: str) -> str:
    if importlib.util.find_spec("ffcv") is None:
        from dataset_prep.ffcv_import import FFCV_INSTALL
        return f"note: FFCV is not installed, so the torchvision loader reads the ImageFolder (install: {FFCV_INSTALL})"
    return (f"note: torchvision loader for the ImageFolder {folder}; for the FFCV loader convert it once: "
            f"python -m dataset_prep.write_beton {folder} train.beton")


def compile_encoders(model: MSF) -> None:
    """torch.compile in place (nn.Module.compile): parameter names, the EMA's parameter lists and
    checkpoints stay as they are."""
    for module in (model.online, model.predictor, model.target):
        module.compile()


def build_model(cfg, device: torch.device, bank_storage: torch.dtype = torch.float32,
                layout: torch.memory_format = torch.contiguous_format) -> MSF:
    model = MSF(arch=cfg.model.arch, bank_size=cfg.msf.bank_size, topk=cfg.msf.topk,
                momentum=cfg.msf.momentum, hidden_dim=cfg.model.hidden_dim or None,
                proj_dim=cfg.model.proj_dim or None, small_input=cfg.model.small_input,
                bank_chunk_size=cfg.msf.bank_chunk or default_chunk_rows(device), bank_dtype=bank_storage)
    return model.to(device, memory_format=layout)


class Trainer:
    threads_option = "--train.threads"  # as the command that runs it names train.threads (the note on shared cores)

    def __init__(self, cfg, rank: int = 0, world_size: int = 1, loader: TwoViewLoader | None = None,
                 fit_threads_to_load: bool = False):
        """`loader` replaces the one data.* describes (e.g. synthetic batches for a benchmark). On the CPU, automatic
        threads (train.threads=0) are fitted to the cores other processes leave idle, and so are the configured
        ones with `fit_threads_to_load` (a command's own default, not the user's choice)."""
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.fit_threads_to_load = fit_threads_to_load
        self.is_main = rank == 0
        self.device = self.create_device()
        self.precision = resolve_precision(cfg.train.amp, self.device)
        self.layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.start_lines = self.precision_lines()  # told when training starts: a refused resume is one line
        seed_everything(cfg.train.seed)
        self.recipe = two_view_recipe(cfg.data.recipe, cfg.data.resolution)
        self.loader = loader if loader is not None else self.create_loader()
        self.resolution = cfg.data.resolution  # the loader's crop size; progressive resizing changes it per epoch
        self.first_batch_reported = False
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.model = self.create_model()
        self.forward_model = self.create_data_parallel() if world_size > 1 else self.model
        self.ema = make_ema(self.model.online, self.model.target)  # a captured CUDA graph on CUDA
        self.base_lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size * world_size)
        self.optimizer = make_sgd(self.model.trainable_parameters(), self.base_lr, cfg.optim.momentum,
                                  cfg.optim.weight_decay, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None
        self.folder = Path(cfg.logging.folder)
        self.checkpoints = RunCheckpoints(self.folder, cfg.logging.checkpoint_every, cfg.logging.snapshot_every,
                                          cfg.logging.checkpoint_minutes, writer=self.is_main)
        self.epoch, self.step = 0, 0
        self.epoch_progress: dict | None = None  # loss and purity sums of the steps done in an unfinished epoch
        self.lock = None  # held by rank 0 while the run can write into its folder
        self.log = None
        try:
            self.resumed = self.start_or_resume()
            self.finished = self.step >= self.total_steps  # a finished run is left as it is
            self.stops = StopRequests(world_size)
            self.log_scalars = DeferredScalars(self.device)  # logging reads no GPU value inside the step
            # rank 0 alone evaluates
            self.monitor = self.create_monitor() if self.is_main and not self.finished else None
            if self.is_main and not self.finished:
                self.log = self.open_log()
        except BaseException:
            if getattr(self, "resumed", True) is False:
                self.leave_no_trace()  # a fresh run that fails to start (a full disk)
            self.release_folder()
            raise

    # ------------------------------------------------------------------ building
    def create_device(self) -> torch.device:
        try:
            device = resolve_device(self.cfg.train.device)
        except RuntimeError as error:
            raise UserError(f"train.device={self.cfg.train.device}: {error}") from None
        threads = self.cfg.train.threads
        self.busy_cores_of_others = None
        if device.type == "cpu":  # README, "Precision, layout and threads"
            if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) == 1:  # torchrun's ranks start side by side
                self.busy_cores_of_others = core_load.busy_cores_since_start()
            self.planned_threads = threads or default_torch_threads(self.cfg.data.workers)
            threads = self.planned_threads
            if not self.cfg.train.threads or self.fit_threads_to_load:
                threads = core_load.threads_that_fit(threads, process_cores(), self.busy_cores_of_others)
        if threads:
            torch.set_num_threads(threads)
        return device

    def precision_lines(self) -> list[tuple[str, bool]]:
        """The precision, layout and threads chosen, and why: one line (and a warning where the choice is known to
        be slow here), each with whether it goes to stderr."""
        layout = "channels-last" if self.layout == torch.channels_last else "NCHW"
        count = torch.get_num_threads()
        threads = f", {count} torch thread{'s' if count > 1 else ''}" if self.device.type == "cpu" else ""
        lines = [(f"{self.precision.describe()}; {layout}{threads}", False)]
        if self.precision.warning:
            lines.append((self.precision.warning, True))
        return lines

    def create_loader(self) -> TwoViewLoader:
        data = self.cfg.data
        backend = resolve_backend(data.backend, data.train_path)
        if data.backend == "auto" and backend == "torch":
            self.start_lines.append((loader_notice(data.train_path), False))
        try:
            return build_train_loader(backend, data.train_path, self.recipe, batch_size=self.cfg.train.batch_size,
                                      workers=data.workers, seed=self.cfg.train.seed, rank=self.rank,
                                      world_size=self.world_size, device=self.device,
                                      dtype=self.precision.dtype if self.device.type == "cuda" else None,
                                      decoder_device=data.decoder_device, ffcv_decoder=data.ffcv_decoder,
                                      in_memory=data.in_memory)
        except TempFolderTooLong as error:
            raise UserError(f"data.workers={data.workers}: {error}") from None
        except (OSError, ValueError) as error:  # a missing or empty folder, an unreadable store, too few images
            raise UserError(f"data.train_path: {error}") from None

    def create_model(self) -> MSF:
        model = build_model(self.cfg, self.device, bank_dtype(self.cfg.msf.bank_dtype, self.device, self.precision),
                            self.layout)
        if self.cfg.train.compile:
            compile_encoders(model)
        return model

    def create_data_parallel(self) -> torch.nn.Module:
        if self.cfg.train.sync_bn:
            if self.device.type != "cuda":
                raise UserError("train.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        return data_parallel(self.model, self.device)

    def create_monitor(self) -> KnnMonitor | None:
        try:
            return KnnMonitor.from_config(self.cfg, self.recipe)
        except TempFolderTooLong as error:
            raise UserError(f"data.workers={self.cfg.data.workers} (the k-NN monitor's loaders): {error}") from None
        except (OSError, ValueError) as error:
            raise UserError(f"the k-NN monitor (data.val_path, eval.knn_memory_path): {error}") from None

    # ------------------------------------------------------------------ state
    def start_or_resume(self) -> bool:
        """Continue from a checkpoint (True), or start fresh; train.resume=auto continues the folder's run if it has
        one. Unless the run is already finished, rank 0 then holds the folder's lock (a second run there is
        refused), and a fresh run deletes a run found there only with logging.overwrite."""
        found = self.checkpoint_to_resume()
        notes = self.resume_from(*found) if found else []
        if self.step < self.total_steps and self.is_main:
            self.lock = RunFolderLock(self.folder).acquire()
            if found and self.cfg.train.resume != AUTO and holds_other_run(self.folder, found[0]):
                raise UserError(other_run_message(self.folder, found[0]))  # written since load_config looked
            if not found and holds_run(self.folder):
                if self.cfg.train.resume == AUTO:  # a run that stopped before its first checkpoint: nothing to keep
                    clear_run(self.folder)
                elif not self.cfg.logging.overwrite:  # written since load_config looked
                    raise UserError(holds_run_message(self.folder))
                else:
                    clear_run(self.folder)
                    self.say(f"logging.overwrite: deleted the run in {self.folder}")
        if found:
            for line in notes:
                self.say(line)
            if self.step < self.total_steps:  # a finished run says so in train(), once
                self.say(f"resuming from {found[0]} at step {self.step} of {self.total_steps}")
        elif self.cfg.train.resume == AUTO:
            self.say(f"train.resume=auto: no checkpoint in {self.checkpoints.folder}: starting a new run")
        return found is not None

    def checkpoint_to_resume(self) -> tuple[Path, dict] | None:
        resume = self.cfg.train.resume
        if resume == AUTO:
            try:
                return self.checkpoints.resumable(self.device, self.say)
            except ValueError as error:
                raise UserError(f"train.resume=auto: {error}") from None
        if not resume:
            return None
        try:
            return Path(resume), read_training_state(resume, map_location=self.device)
        except ValueError as error:  # "PATH: what it is"
            raise UserError(f"train.resume={error}") from None

    def resume_from(self, path: Path, state: dict) -> list[str]:
        """Load `state`; the notes for what this run changes (README "Long runs": what a resume refuses, notes,
        honours)."""
        identity = RunIdentity(ckpt.model_args(self.model), self.data_identity(), self.steps_per_epoch,
                               self.world_size, to_dict(self.cfg), self.precision.name)
        try:
            notes = check_resume(state, identity)
        except ResumeRefused as refused:  # named as the config checks name it (train.resume=PATH: ...)
            given = f"train.resume=auto: {path}" if self.cfg.train.resume == AUTO else f"train.resume={path}"
            raise UserError(f"{given}: {refused}") from None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.epoch = self.step // self.steps_per_epoch
        if self.step % self.steps_per_epoch:  # resumed mid-epoch: the epoch's mean covers the steps before too
            self.epoch_progress = state.get("epoch_progress")
        if path == self.checkpoints.latest:
            self.checkpoints.saved_step = self.step
        stretched = schedule_note(state.get("config"), identity.config, self.step, self.steps_per_epoch,
                                  self.cfg.train.batch_size * self.world_size)
        return notes + ([stretched] if stretched else [])

    def open_log(self) -> JsonlLog:
        log = JsonlLog(self.folder / "log.jsonl", append=self.resumed, tensorboard=self.cfg.logging.tensorboard)
        log.write(event="setup", device=self.device.type, **self.precision.record(),
                  channels_last=self.layout == torch.channels_last, torch_threads=torch.get_num_threads(),
                  loader_workers=self.cfg.data.workers, busy_cores_of_others=self.busy_cores_of_others)
        return log

    def release_folder(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def data_identity(self) -> dict:
        """What a checkpoint records of the training data, so that a resume on other data is refused."""
        identity = {"format": self.loader.backend, "classes": list(self.loader.classes),
                    "samples": int(self.loader.num_samples)}
        if getattr(self.loader, "in_memory", None) is not None:  # FFCV: RANDOM order or the page-aware one
            identity["in_memory"] = bool(self.loader.in_memory)
        return identity

    def training_state(self) -> dict:
        return {**ckpt.training_state(self.model, self.optimizer, self.scaler, self.epoch, self.step,
                                      self.steps_per_epoch, to_dict(self.cfg), self.data_identity()),
                "world_size": self.world_size, "precision": self.precision.name,
                "epoch_progress": self.epoch_progress if self.step % self.steps_per_epoch else None}

    def save_point(self, snapshot_epoch: int | None = None) -> None:
        """A checkpoint, reached by every rank at the same step: weights that are not finite are never saved (the
        run stops, exit 1), rank 0 writes, and every rank learns whether it could."""
        if not weights_finite(self.model):
            self.stops.check_loss(self.step, math.nan)
            raise self.nonfinite_stop("non-finite weights")
        failure = None
        try:
            self.checkpoints.save(self.step, self.training_state, snapshot_epoch)
        except RunStopped as error:
            failure = error
        if not self.stops.all_ranks_ok(failure is None):
            raise failure or RunStopped(f"rank 0 could not write the checkpoint at step {self.step}", exit_code=1)

    def nonfinite_stop(self, what: str) -> RunStopped:
        step, saved = self.stops.nonfinite[0], self.checkpoints.saved_step
        last_good = (f"the last good checkpoint is {self.checkpoints.latest} (step {saved}): continue from it with "
                     "--train.resume=auto" if saved >= 0 else
                     "no checkpoint was written before it: start it again (--train.resume=auto)")
        return RunStopped(f"{what} at step {step}: the run stopped without saving; {last_good} with a lower "
                          f"--optim.lr (now {self.cfg.optim.lr:g} per 256 images)", exit_code=1)

    def say(self, line: str) -> None:
        if self.is_main:
            tqdm.write(line)

    def evaluate_knn(self) -> dict:
        """{"knn_top1", "knn_weighted_top1"} at eval.knn_k, or {"knn_top1": None} without a monitor."""
        if self.monitor is None:
            return {"knn_top1": None}
        return self.monitor.evaluate(self.model.online, self.device, self.precision.dtype)

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """The remaining steps. RunStopped when the run stops early: preempted (after a step-exact checkpoint),
        a non-finite loss or weights (nothing saved), a checkpoint that could not be written."""
        result = TrainResult(steps=self.step, folder=self.folder)
        log = self.folder / "log.jsonl"
        if self.resumed and log.exists():  # a finished run is a resumed one too
            # the result is the run's, not this session's: the epochs before a resume, the random init's k-NN among
            # them (a finished run's final_loss was null; a demo resumed after Ctrl-C had no random init to report)
            result.loss_by_epoch, result.knn_by_epoch = logged_epochs(log)
        if self.finished:
            past = (f"; it is past the end of this schedule (train.epochs={self.cfg.train.epochs}"
                    + (f", train.max_steps={self.cfg.train.max_steps}" if self.cfg.train.max_steps else "") + ")"
                    if self.step > self.total_steps else "")
            self.say(f"the run in {self.folder} is finished (step {self.step} of {self.total_steps}{past}): nothing "
                     "to do")
            if self.is_main and log.exists():
                self.complete_ending(log)
            return result
        shared = self.device.type == "cpu" and core_load.threads_note(
            self.planned_threads, torch.get_num_threads(), process_cores(), self.busy_cores_of_others,
            self.threads_option)
        if shared:
            self.start_lines.append((shared, True))
        if self.is_main:  # here, not while the trainer is built: a run that stops on a mistake says it in one line
            for line, to_stderr in self.start_lines:
                print(line, file=sys.stderr if to_stderr else sys.stdout, flush=True)
        self.start_lines = []
        bar = tqdm(total=self.total_steps, initial=self.step, disable=bar_disabled(self.cfg.logging.progress and self.is_main),
                   unit="step", dynamic_ncols=True, desc="MSF", **bar_options())
        completed = False
        try:
            with self.stops:
                if self.step == 0:
                    self._start(result)
                stopping = False
                while self.step < self.total_steps and not stopping:
                    stats = self._run_epoch(bar)
                    result.time.add(stats.time)
                    self.stops.check_loss(self.step, stats.loss)
                    if self.is_main:
                        self._record_epoch(stats, result)
                    stopping, _ = self.stops.agree(interval_end=True)
                    # a stop at the last step lets the run finish: its checkpoint comes after the final k-NN (one
                    # saved before it, a stop during it left a finished run without its last epoch's record)
                    whole = not stopping or (self.step >= self.total_steps and not self.stops.nonfinite)
                    if whole and stats.complete and self.checkpoints.due_at_epoch_end(stats.epoch):
                        self.save_point(stats.epoch if self.checkpoints.snapshot_due(stats.epoch) else None)
                result.steps = self.step
                self._finish(result)
            completed = True
        except RunStopped as stop:
            if self.never_stepped():
                raise self.unstarted_stop(stop) from None
            if self.log is not None:
                self.log.write_if_possible(event="stopped", step=self.step, reason=str(stop),
                                           exit_code=stop.exit_code)
            raise
        finally:
            bar.close()
            self.close_outputs(completed)
        return result

    def complete_ending(self, log: Path) -> None:
        """What a stop as the run ended left undone, its last checkpoint written: the log's `end` record, and the
        plot (missing, or older than the log)."""
        events = [record.get("event") for record in read_jsonl(log) if record.get("event") in ("epoch", "end")]
        if self.step == self.total_steps and events and events[-1] == "epoch":
            ending = JsonlLog(log, append=True)
            try:
                ending.write(event="end", step=self.step, logged_on_resume=True)
            finally:
                ending.close()
            self.say("its end, which a stop kept from being logged, is logged now")
        plot = self.folder / "training.png"
        if not plot.exists() or plot.stat().st_mtime < log.stat().st_mtime:
            self.plot()

    def never_stepped(self) -> bool:
        """A fresh run that stops before its first step leaves nothing that marks the folder as holding a run."""
        return not self.resumed and self.step == 0

    def unstarted_stop(self, stop: RunStopped) -> RunStopped:
        if not self.stops.signal:
            return stop
        return RunStopped(f"stopped by {self.stops.signal_name} before the first step: nothing was kept in "
                          f"{self.folder}; start again with the same command", exit_code=stop.exit_code)

    def leave_no_trace(self) -> None:
        """A fresh run that stops before its first step deletes what it wrote, its .lock and the folders it made."""
        if self.lock is not None:  # rank 0 holds it, while the run can write
            clear_run(self.folder)
            self.lock.discard()

    def close_outputs(self, completed: bool) -> None:
        """Close the log and plot it; a fresh run that failed before its first step deletes what it wrote; the
        folder's lock goes last."""
        try:
            if self.log is not None:
                self.log.close()
                if not completed and self.never_stepped():
                    self.leave_no_trace()
                else:
                    self.plot(warn=completed)
        finally:
            self.release_folder()

    def plot(self, warn: bool = True) -> None:
        try:
            with stops_deferred():  # a second or so: a stop then ends the run with its plot whole and up to date
                plot_run(self.folder / "log.jsonl", self.folder / "training.png")
        except OSError as error:
            if warn:
                self.say(f"warning: training.png not written: {error.strerror or error}")

    def _start(self, result: TrainResult) -> None:
        """Step 0: the snapshot of the initialisation and its k-NN."""
        if self.checkpoints.snapshot_due(0):
            self.save_point(snapshot_epoch=0)
        if self.monitor is not None:
            self._record_initialisation(result)

    def _finish(self, result: TrainResult) -> None:
        if self.stops.nonfinite:
            raise self.nonfinite_stop(f"non-finite loss ({self.stops.nonfinite[1]})")
        self.save_point()
        if self.stops.signal and self.step < self.total_steps:
            raise RunStopped(f"stopped by {self.stops.signal_name} at step {self.step}: the checkpoint "
                             f"{self.checkpoints.latest} holds it; continue with --train.resume=auto",
                             exit_code=128 + self.stops.signal)
        if self.stops.signal:  # nothing is left to train: "continue with --train.resume=auto" found a finished run
            self.say(f"{self.stops.signal_name} came at the last step: the run is finished")
        self._exclude_loader_start_up(result.time)
        if self.is_main:
            self.log.write(event="end", step=self.step, **result.time.record(), bound=result.time.bound)
            tqdm.write(f"{plural(self.step, 'step')}, {result.time.images_per_s:,.0f} images/s; "
                       f"{result.time.verdict()}")

    def _run_epoch(self, bar) -> EpochStats:
        """The epoch's remaining steps, up to the step limit or an agreed stop; a time-based checkpoint when due."""
        self._set_epoch_resolution()
        started = time.perf_counter()
        epoch = self.epoch + 1
        carried = self.epoch_progress or {"loss_sum": 0.0, "purity_sum": 0.0, "steps": 0}
        loss_sum = torch.tensor(carried["loss_sum"], device=self.device)
        purity_sum = torch.tensor(carried["purity_sum"], device=self.device)
        steps = 0  # this session's

        def progress() -> dict:
            return {"loss_sum": loss_sum.item(), "purity_sum": purity_sum.item(), "steps": carried["steps"] + steps}
        clock, split = StepClock(self.device, self.cfg.train.batch_size * self.world_size), TimeSplit()
        skip = self.step - self.epoch * self.steps_per_epoch
        for online, target, labels in clock.batches(self.loader.iterate(self.epoch, skip_batches=skip)):
            if self.step >= self.total_steps:
                break
            with clock.step():
                out, lr = self._train_step(online, target, labels)
            if steps == 0 and self.is_main:
                self._report_first_batch()
            loss_sum += out.loss.detach()
            purity_sum += out.purity
            steps += 1
            self.step += 1
            bar.update(1)
            interval_end = self.step % self.cfg.logging.log_every == 0
            if interval_end:
                interval = clock.read()
                split.add(interval)
                self._log_step(bar, dict(event="step", epoch=epoch, step=self.step, lr=lr, **interval.record()), out)
            stop, save = self.stops.agree(interval_end, self.checkpoints.due_by_time())
            if stop:
                break
            # not at an epoch's last step: a crash before its record was written lost that epoch's loss and k-NN
            # (the epoch-end checkpoint, or the next step's, comes seconds later)
            if save and self.step % self.steps_per_epoch and self.step < self.total_steps:
                self.epoch_progress = progress()
                self.save_point()
        if steps == 0:
            raise RuntimeError(f"the {self.loader.backend} loader yielded no batch for epoch {epoch}")
        split.add(clock.read(wait_for_gpu=True))
        complete = self.step % self.steps_per_epoch == 0
        if complete:
            self.epoch += 1
        self.epoch_progress = None if complete else progress()
        counted = carried["steps"] + steps
        return EpochStats(epoch, steps, (loss_sum / counted).item(), (purity_sum / counted).item(),
                          time.perf_counter() - started, complete, split)

    def _train_step(self, online, target, labels):
        # the loaders yield channels-last; convolutions follow the input's layout, so NCHW needs the batch in NCHW
        online = online.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        target = target.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        labels = labels.to(self.device, non_blocking=True)
        lr = learning_rate(self.base_lr, self.cfg.optim.schedule, self.step, self.steps_per_epoch,
                           self.cfg.train.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = train_step(self.forward_model, self.ema, self.optimizer, self.scaler, self.precision,
                         online, target, labels, self.cfg.msf.momentum)
        return out, lr

    def _set_epoch_resolution(self) -> None:
        data = self.cfg.data
        resolution = progressive_resolution(self.epoch, data.min_resolution, data.resolution, data.start_ramp,
                                            data.end_ramp)
        if resolution != self.resolution:
            self.loader.set_resolution(resolution)
            self.resolution = resolution

    def _log_step(self, bar, record: dict, out) -> None:
        """Every rank stages its loss (read one interval later on CUDA) and checks it; rank 0 logs it."""
        record = self.log_scalars.stage(record, loss=out.loss, purity=out.purity)
        if record is None:
            return
        self.stops.check_loss(record["step"], record["loss"])
        if not self.is_main:
            return
        self.log.write(**record)
        # shown at the bar's next redraw: a redraw per record filled a batch job's log every log_every steps
        bar.set_postfix(loss=f"{record['loss']:.3f}", purity=f"{record['purity']:.2f}",
                        img_s=f"{record['images_per_s']:.0f}", wait=f"{record['data_wait_fraction']:.0%}",
                        refresh=False)

    def _exclude_loader_start_up(self, split: TimeSplit) -> None:
        """The first batch's wait (FFCV: numba compilation) is a one-time cost, not the loader's pace."""
        start_up = min(self.loader.compile_seconds or 0.0, split.data_wait_seconds)
        split.data_wait_seconds -= start_up
        split.seconds = max(split.seconds - start_up, 0.0)

    def _report_first_batch(self) -> None:
        """The first epoch's wait for its first batch, logged once (FFCV: numba compilation)."""
        seconds = self.loader.compile_seconds
        if seconds is None or self.first_batch_reported:
            return
        self.first_batch_reported = True
        self.log.write(event="loader", backend=self.loader.backend, compile_seconds=seconds)
        reason = " (numba compilation)" if self.loader.backend == "ffcv" else ""
        tqdm.write(f"{self.loader.backend} loader: first batch after {seconds:.1f} s{reason}")

    def _record_initialisation(self, result: TrainResult) -> None:
        """Epoch 0: the k-NN of the random initialisation."""
        knn = self.evaluate_knn()
        result.knn_by_epoch[0] = knn["knn_top1"]
        self.log.write(event="epoch", epoch=0, step=0, loss=None, purity=None, **knn)

    def _record_epoch(self, stats: EpochStats, result: TrainResult) -> None:
        """The epoch record in the log (the epoch's last step record first), k-NN when due, the console line."""
        pending = self.log_scalars.flush()
        if pending is not None:
            self.stops.check_loss(pending["step"], pending["loss"])
            self.log.write(**pending)
        last = stats.epoch == self.cfg.train.epochs or self.step >= self.total_steps
        # a stop signal ends the epoch early: its k-NN would be of a partial epoch, and delay the checkpoint; a stop
        # at the last step lets the run finish, k-NN included (a kill during it leaves the checkpoint before the last
        # epoch, which a resume trains again)
        finished = self.step >= self.total_steps
        due = self.monitor is not None and self.monitor.due(stats.epoch, last) and (finished or not self.stops.signal)
        knn = self.evaluate_knn() if due else {"knn_top1": None}
        result.loss_by_epoch[stats.epoch] = stats.loss
        if knn["knn_top1"] is not None:
            result.knn_by_epoch[stats.epoch] = knn["knn_top1"]
        self.log.write(event="epoch", epoch=stats.epoch, step=self.step, loss=stats.loss, purity=stats.purity, **knn,
                       seconds=stats.seconds, complete=stats.complete, resolution=self.resolution,
                       **stats.time.record())
        tqdm.write(f"epoch {stats.epoch}: loss {stats.loss:.4f} purity {stats.purity:.3f}"
                   + (f" k-NN top-1 {knn['knn_top1']:.3f}" if knn["knn_top1"] is not None else "")
                   + f" ({stats.seconds:.0f} s"
                   + ("" if stats.complete else f"; partial, stopped at step {self.step}") + ")")
