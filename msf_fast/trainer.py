"""The training loop: builds everything from a config, runs epochs of `train_step`, logs,
evaluates k-NN (epoch 0 = the random initialisation), checkpoints, resumes."""
from __future__ import annotations

import importlib.util
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset_prep.staging import StagedPath
from msf_fast import checkpoint as ckpt
from msf_fast.config import resolve_backend, to_dict
from msf_fast.ema import make_ema
from msf_fast.knn import knn_evaluation
from msf_fast.model import MSF
from msf_fast.runlog import DeferredScalars, JsonlLog, plot_run
from msf_fast.schedule import learning_rate, progressive_resolution, scaled_lr
from msf_fast.step import bank_dtype, make_sgd, resolve_device, resolve_precision, train_step
from pipelines import build_eval_loader, build_train_loader, two_view_recipe


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loader_notice(folder: str) -> str:
    if importlib.util.find_spec("ffcv") is None:
        from pipelines.ffcv_backend import FFCV_INSTALL
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
    def __init__(self, cfg, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.device = resolve_device(cfg.train.device)
        threads = cfg.train.threads
        if not threads and self.device.type == "cpu":
            # Loader workers share the cores; oversubscribed torch threads ran ~10x slower on 2 cores.
            threads = max(1, (os.cpu_count() or 1) - cfg.data.workers)
        if threads:
            torch.set_num_threads(threads)
        self.precision = resolve_precision(cfg.train.amp, self.device)
        seed_everything(cfg.train.seed)

        self.recipe = two_view_recipe(cfg.data.recipe, cfg.data.resolution)
        backend = resolve_backend(cfg.data.backend, cfg.data.train_path)
        if cfg.data.backend == "auto" and backend == "torch" and self.is_main:
            print(loader_notice(cfg.data.train_path), flush=True)
        self.loader = build_train_loader(backend,
                                         cfg.data.train_path, self.recipe, cfg.train.batch_size,
                                         cfg.data.workers, cfg.train.seed, rank, world_size,
                                         pin_memory=self.device.type == "cuda", device=self.device,
                                         dtype=self.precision.dtype if self.device.type == "cuda" else None,
                                         decoder_device=cfg.data.decoder_device)
        self.resolution = cfg.data.resolution  # the loader's crop size; progressive resizing changes it per epoch
        self.compile_reported = False  # FFCV's numba compilation time is logged once
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)

        self.model = build_model(cfg, self.device, bank_dtype(cfg.msf.bank_dtype, self.device, self.precision))
        if cfg.train.compile:
            compile_encoders(self.model)
        self.forward_model = self._data_parallel(cfg) if world_size > 1 else self.model
        self.ema = make_ema(self.model.online, self.model.target)  # a captured CUDA graph on CUDA
        self.base_lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size * world_size)
        self.optimizer = make_sgd(self.model.trainable_parameters(), self.base_lr, cfg.optim.momentum,
                                  cfg.optim.weight_decay, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None

        self.folder = Path(cfg.logging.folder)
        self.checkpoint_path = self.folder / "checkpoints" / "latest.pt"
        self.epoch, self.step = 0, 0
        self._saved_step = -1
        if cfg.train.resume:
            self._resume(cfg.train.resume)
        self.log = JsonlLog(self.folder / "log.jsonl", append=bool(cfg.train.resume)) if self.is_main else None
        self.log_scalars = DeferredScalars(self.device)  # logging reads no GPU value inside the step
        monitor = self.is_main and cfg.data.val_path and (cfg.eval.knn_every or cfg.eval.knn_final)
        self.eval_loaders = self._knn_monitor_loaders(cfg) if monitor else None  # rank 0 alone evaluates

    def _knn_monitor_loaders(self, cfg) -> tuple:
        """The k-NN monitor's labelled (searched) and held-out images, each optionally a per-class balanced
        subset seeded by train.seed (eval.knn_memory_per_class, eval.knn_val_per_class)."""
        from pipelines.subsets import balanced_subset, dataset_labels
        loaders = []
        for path, per_class in ((cfg.eval.knn_memory_path or cfg.data.train_path, cfg.eval.knn_memory_per_class),
                                (cfg.data.val_path, cfg.eval.knn_val_per_class)):
            indices = (balanced_subset(dataset_labels(path), seed=cfg.train.seed, per_class=per_class)
                       if per_class else None)
            loaders.append(build_eval_loader(path, self.recipe, 2 * cfg.train.batch_size, cfg.data.workers,
                                             indices=indices))
        return tuple(loaders)

    def _data_parallel(self, cfg) -> torch.nn.Module:
        """DDP over the MSF module: gradients of the online network and predictor are averaged; every rank
        enqueues the targets of all ranks (rank order), so the banks stay identical. Buffers (bank, BN
        statistics) are synchronised once at start, not every step: the bank stays in step through the gather, and
        BN statistics stay per rank."""
        from torch.nn.parallel import DistributedDataParallel

        from msf_fast.distributed import all_gather_rows
        if cfg.train.sync_bn:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.gather_across_ranks = all_gather_rows
        device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids, forward_sync_buffers=False)

    # ------------------------------------------------------------------ state
    def _resume(self, path: str) -> None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if state.get("format") != ckpt.FORMAT:
            raise ValueError(f"{path}: not an msf-fast checkpoint (import original ones with msf_fast.checkpoint)")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"{path}: saved with {state['steps_per_epoch']} steps per epoch, this run has "
                             f"{self.steps_per_epoch} (different data, batch size or world size)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.epoch = self.step // self.steps_per_epoch

    def save_checkpoint(self) -> Path | None:
        if not self.is_main:
            return None
        if self._saved_step != self.step:
            state = ckpt.training_state(self.model, self.optimizer, self.scaler, self.epoch, self.step,
                                        self.steps_per_epoch, to_dict(self.cfg))
            ckpt.atomic_save(state, self.checkpoint_path)
            self._saved_step = self.step
        return self.checkpoint_path

    def _save_snapshot(self, epoch: int) -> None:
        """checkpoints/epoch_NNNN.pt every logging.snapshot_every epochs, epoch 0 (the initialisation) included:
        the inputs of the figures that follow the representation over training."""
        every = self.cfg.logging.snapshot_every
        if every and epoch % every == 0:
            self.save_checkpoint()
            with StagedPath(str(self.checkpoint_path.with_name(f"epoch_{epoch:04d}.pt"))) as snapshot:
                os.remove(snapshot.temporary)
                try:  # latest.pt is replaced by a new file at each save: a hard link keeps this one's bytes
                    os.link(self.checkpoint_path, snapshot.temporary)
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(self.checkpoint_path, snapshot.temporary)

    # ------------------------------------------------------------------ evaluation
    def evaluate_knn(self) -> dict | None:
        """{"knn_top1": majority vote, "knn_weighted_top1": weighted vote} at eval.knn_k, or None."""
        if self.eval_loaders is None:
            return None
        k = self.cfg.eval.knn_k
        report = knn_evaluation(self.model.online, *self.eval_loaders, self.device, (k,), self.precision.dtype)
        return {"knn_top1": report[f"top1_k{k}_majority"], "knn_weighted_top1": report[f"top1_k{k}_weighted"]}

    def _knn_due(self, epoch: int) -> bool:
        every = self.cfg.eval.knn_every
        last = epoch == self.cfg.train.epochs or self.step >= self.total_steps
        return (every and epoch % every == 0) or (last and self.cfg.eval.knn_final)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        cfg = self.cfg
        history = {"knn": {}, "loss": {}}
        if self.step == 0 and self.is_main:
            self._save_snapshot(0)
            if self.eval_loaders is not None:
                knn0 = self.evaluate_knn()
                history["knn"][0] = knn0["knn_top1"]
                self.log.write(event="epoch", epoch=0, step=0, loss=None, purity=None, **knn0)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (cfg.logging.progress and self.is_main),
                   unit="step", dynamic_ncols=True, desc="MSF")
        momentum = cfg.msf.momentum
        while self.step < self.total_steps:
            self._set_epoch_resolution()
            epoch_start = time.perf_counter()
            skip = self.step - self.epoch * self.steps_per_epoch
            loss_sum = torch.zeros((), device=self.device)
            purity_sum = torch.zeros((), device=self.device)
            steps_done = 0
            tick, tick_step = time.perf_counter(), self.step
            for online, target, labels in self.loader.iterate(self.epoch, skip_batches=skip):
                if self.step >= self.total_steps:
                    break
                online = online.to(self.device, non_blocking=True)
                target = target.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                lr = learning_rate(self.base_lr, cfg.optim.schedule, self.step, self.steps_per_epoch,
                                   cfg.train.epochs)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                out = train_step(self.forward_model, self.ema, self.optimizer, self.scaler, self.precision,
                                 online, target, labels, momentum)
                if steps_done == 0 and self.is_main:
                    self._report_loader_compilation()
                loss_sum += out.loss.detach()
                purity_sum += out.purity
                steps_done += 1
                self.step += 1
                bar.update(1)
                if self.step % cfg.logging.log_every == 0 and self.is_main:
                    now = time.perf_counter()
                    rate = (self.step - tick_step) * cfg.train.batch_size * self.world_size / (now - tick)
                    tick, tick_step = now, self.step
                    self._write_step(bar, self.log_scalars.stage(
                        dict(event="step", epoch=self.epoch + 1, step=self.step, lr=lr, images_per_s=rate),
                        loss=out.loss, purity=out.purity))
            if steps_done == 0:
                raise RuntimeError(f"the {self.loader.backend} loader yielded no batch for epoch {self.epoch + 1}")
            epoch_complete = self.step % self.steps_per_epoch == 0
            if epoch_complete:
                self.epoch += 1
            self._end_epoch(history, loss_sum, purity_sum, steps_done, epoch_complete,
                            time.perf_counter() - epoch_start)
        bar.close()
        if self.is_main:
            self.save_checkpoint()
            if self.log is not None:
                self.log.close()
                plot_run(self.folder / "log.jsonl", self.folder / "training.png")
        return history

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
                        img_s=f"{record['images_per_s']:.0f}")

    def _report_loader_compilation(self) -> None:
        seconds = getattr(self.loader, "compile_seconds", None)  # FFCV's numba compilation, once per process
        if seconds is not None and not self.compile_reported:
            self.compile_reported = True
            self.log.write(event="loader", backend=self.loader.backend, compile_seconds=seconds)
            tqdm.write(f"{self.loader.backend} loader: first batch after {seconds:.1f} s (numba compilation)")

    def _end_epoch(self, history, loss_sum, purity_sum, steps_done, epoch_complete, seconds) -> None:
        if not self.is_main or steps_done == 0:
            return
        pending = self.log_scalars.flush()  # the epoch's last step record comes before the epoch record
        if pending is not None:
            self.log.write(**pending)
        epoch = self.epoch if epoch_complete else self.epoch + 1
        loss = (loss_sum / steps_done).item()
        purity = (purity_sum / steps_done).item()
        knn = (self.evaluate_knn() if self._knn_due(epoch) else None) or {"knn_top1": None}
        history["loss"][epoch] = loss
        if knn["knn_top1"] is not None:
            history["knn"][epoch] = knn["knn_top1"]
        self.log.write(event="epoch", epoch=epoch, step=self.step, loss=loss, purity=purity, **knn,
                       seconds=seconds, complete=epoch_complete, resolution=self.resolution)
        every = self.cfg.logging.checkpoint_every
        if epoch_complete and every and epoch % every == 0:
            self.save_checkpoint()
        if epoch_complete:
            self._save_snapshot(epoch)
        tqdm.write(f"epoch {epoch}: loss {loss:.4f} purity {purity:.3f}"
                   + (f" k-NN top-1 {knn['knn_top1']:.3f}" if knn["knn_top1"] is not None else "")
                   + f" ({seconds:.0f} s)")
