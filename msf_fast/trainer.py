"""The training run: built from a config by a few `create_*` steps, then epochs of `train_step` with logging,
the k-NN monitor (epoch 0 = the random initialisation) and checkpoints."""
from __future__ import annotations

import importlib.util
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from msf_fast import checkpoint as ckpt
from msf_fast.config import resolve_backend, to_dict
from msf_fast.distributed import data_parallel
from msf_fast.ema import make_ema
from msf_fast.errors import UserError
from msf_fast.knn_monitor import KnnMonitor
from msf_fast.model import MSF
from msf_fast.run_checkpoints import RunCheckpoints, read_training_state
from msf_fast.runlog import DeferredScalars, JsonlLog, plot_run
from msf_fast.schedule import learning_rate, progressive_resolution, scaled_lr
from msf_fast.step import bank_dtype, make_sgd, resolve_device, resolve_precision, train_step
from msf_fast.throughput import StepClock, TimeSplit
from pipelines import TwoViewLoader, build_train_loader, two_view_recipe


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
        return {"steps": self.steps, "final_loss": self.final_loss, "knn_top1": self.knn_by_epoch,
                **self.time.record(), "bound": self.time.bound, "folder": str(self.folder)}


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


def build_model(cfg, device: torch.device, bank_storage: torch.dtype = torch.float32) -> MSF:
    model = MSF(arch=cfg.model.arch, bank_size=cfg.msf.bank_size, topk=cfg.msf.topk,
                momentum=cfg.msf.momentum, hidden_dim=cfg.model.hidden_dim or None,
                proj_dim=cfg.model.proj_dim or None, small_input=cfg.model.small_input,
                bank_chunk_size=cfg.msf.bank_chunk, bank_dtype=bank_storage)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


class Trainer:
    def __init__(self, cfg, rank: int = 0, world_size: int = 1, loader: TwoViewLoader | None = None):
        """`loader` replaces the one data.* describes (e.g. synthetic batches for a benchmark)."""
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.is_main = rank == 0
        self.device = self.create_device()
        self.precision = resolve_precision(cfg.train.amp, self.device)
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
                                          writer=self.is_main)
        self.epoch, self.step = 0, 0
        if cfg.train.resume:
            self.resume(cfg.train.resume)
        self.log = JsonlLog(self.folder / "log.jsonl", append=bool(cfg.train.resume)) if self.is_main else None
        self.log_scalars = DeferredScalars(self.device)  # logging reads no GPU value inside the step
        self.monitor = self.create_monitor() if self.is_main else None  # rank 0 alone evaluates

    # ------------------------------------------------------------------ building
    def create_device(self) -> torch.device:
        try:
            device = resolve_device(self.cfg.train.device)
        except RuntimeError as error:
            raise UserError(f"train.device={self.cfg.train.device}: {error}") from None
        threads = self.cfg.train.threads
        if not threads and device.type == "cpu":
            # Loader workers share the cores; oversubscribed torch threads ran ~10x slower on 2 cores.
            threads = max(1, (os.cpu_count() or 1) - self.cfg.data.workers)
        if threads:
            torch.set_num_threads(threads)
        return device

    def create_loader(self) -> TwoViewLoader:
        data = self.cfg.data
        backend = resolve_backend(data.backend, data.train_path)
        if data.backend == "auto" and backend == "torch" and self.is_main:
            print(loader_notice(data.train_path), flush=True)
        try:
            return build_train_loader(backend, data.train_path, self.recipe, batch_size=self.cfg.train.batch_size,
                                      workers=data.workers, seed=self.cfg.train.seed, rank=self.rank,
                                      world_size=self.world_size, device=self.device,
                                      dtype=self.precision.dtype if self.device.type == "cuda" else None,
                                      decoder_device=data.decoder_device)
        except (OSError, ValueError) as error:  # a missing or empty folder, an unreadable store, too few images
            raise UserError(f"data.train_path: {error}") from None

    def create_model(self) -> MSF:
        model = build_model(self.cfg, self.device, bank_dtype(self.cfg.msf.bank_dtype, self.device, self.precision))
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
        except (OSError, ValueError) as error:
            raise UserError(f"the k-NN monitor's data (data.val_path, eval.knn_memory_path): {error}") from None

    # ------------------------------------------------------------------ state
    def resume(self, path: str) -> None:
        try:
            state = read_training_state(path, map_location=self.device)
        except ValueError as error:
            raise UserError(f"train.resume: {error}") from None
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise UserError(f"train.resume: {path} was saved with {state['steps_per_epoch']} steps per epoch, this "
                            f"run has {self.steps_per_epoch} (different data, batch size or world size)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.epoch = self.step // self.steps_per_epoch

    def training_state(self) -> dict:
        return ckpt.training_state(self.model, self.optimizer, self.scaler, self.epoch, self.step,
                                   self.steps_per_epoch, to_dict(self.cfg))

    def save_checkpoint(self) -> Path | None:
        return self.checkpoints.save(self.step, self.training_state)

    def evaluate_knn(self) -> dict:
        """{"knn_top1", "knn_weighted_top1"} at eval.knn_k, or {"knn_top1": None} without a monitor."""
        if self.monitor is None:
            return {"knn_top1": None}
        return self.monitor.evaluate(self.model.online, self.device, self.precision.dtype)

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        result = TrainResult(steps=self.step, folder=self.folder)
        if self.step == 0 and self.is_main:
            self.checkpoints.started(self.training_state)
            if self.monitor is not None:
                self._record_initialisation(result)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.cfg.logging.progress and self.is_main),
                   unit="step", dynamic_ncols=True, desc="MSF")
        while self.step < self.total_steps:
            stats = self._run_epoch(bar)
            result.time.add(stats.time)
            if self.is_main:
                self._record_epoch(stats, result)
                if stats.complete:
                    self.checkpoints.epoch_ended(stats.epoch, self.step, self.training_state)
        bar.close()
        result.steps = self.step
        self._exclude_loader_start_up(result.time)
        if self.is_main:
            self.save_checkpoint()
            self.log.write(event="end", step=self.step, **result.time.record(), bound=result.time.bound)
            self.log.close()
            plot_run(self.folder / "log.jsonl", self.folder / "training.png")
            tqdm.write(f"{self.step} steps, {result.time.images_per_s:,.0f} images/s; {result.time.verdict()}")
        return result

    def _run_epoch(self, bar) -> EpochStats:
        self._set_epoch_resolution()
        started = time.perf_counter()
        epoch = self.epoch + 1
        loss_sum = torch.zeros((), device=self.device)
        purity_sum = torch.zeros((), device=self.device)
        steps = 0
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
            if self.step % self.cfg.logging.log_every == 0 and self.is_main:
                interval = clock.read()
                split.add(interval)
                self._write_step(bar, self.log_scalars.stage(
                    dict(event="step", epoch=epoch, step=self.step, lr=lr, **interval.record()),
                    loss=out.loss, purity=out.purity))
        if steps == 0:
            raise RuntimeError(f"the {self.loader.backend} loader yielded no batch for epoch {epoch}")
        split.add(clock.read(wait_for_gpu=True))
        complete = self.step % self.steps_per_epoch == 0
        if complete:
            self.epoch += 1
        return EpochStats(epoch, steps, (loss_sum / steps).item(), (purity_sum / steps).item(),
                          time.perf_counter() - started, complete, split)

    def _train_step(self, online, target, labels):
        online = online.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
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

    def _write_step(self, bar, record: dict | None) -> None:
        if record is None:
            return
        self.log.write(**record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", purity=f"{record['purity']:.2f}",
                        img_s=f"{record['images_per_s']:.0f}", wait=f"{record['data_wait_fraction']:.0%}")

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
            self.log.write(**pending)
        last = stats.epoch == self.cfg.train.epochs or self.step >= self.total_steps
        due = self.monitor is not None and self.monitor.due(stats.epoch, last)
        knn = self.evaluate_knn() if due else {"knn_top1": None}
        result.loss_by_epoch[stats.epoch] = stats.loss
        if knn["knn_top1"] is not None:
            result.knn_by_epoch[stats.epoch] = knn["knn_top1"]
        self.log.write(event="epoch", epoch=stats.epoch, step=self.step, loss=stats.loss, purity=stats.purity, **knn,
                       seconds=stats.seconds, complete=stats.complete, resolution=self.resolution,
                       **stats.time.record())
        tqdm.write(f"epoch {stats.epoch}: loss {stats.loss:.4f} purity {stats.purity:.3f}"
                   + (f" k-NN top-1 {knn['knn_top1']:.3f}" if knn["knn_top1"] is not None else "")
                   + f" ({stats.seconds:.0f} s)")
