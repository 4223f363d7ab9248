"""The run's log: log.jsonl (strict JSON, one record per line), optionally TensorBoard events, and the plot of
loss and k-NN accuracy per epoch (training.png)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch

from dataset_prep.staging import StagedPath
from msf_fast.stopping import RunStopped

TENSORBOARD_INSTALL = "pip install -e '.[tensorboard]'"


def strict(value):
    """A non-finite float becomes None (null): log.jsonl stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


class JsonlLog:
    def __init__(self, path: str | Path, append: bool = False, tensorboard: bool = False):
        """`tensorboard`: also write the step and epoch records' numbers as TensorBoard scalars, beside the log."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append:
            drop_torn_record(self.path)
        self._file = open(self.path, "a" if append else "w")
        self.failed = False
        self._events = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._events = SummaryWriter(str(self.path.parent / "tensorboard"))

    def write(self, **record) -> None:
        """Append a record; RunStopped (exit 1) when it cannot be written (a full disk)."""
        try:
            self._file.write(json.dumps(strict(record), allow_nan=False) + "\n")
            self._file.flush()
        except OSError as error:
            self.failed = True
            raise RunStopped(f"cannot write the log {self.path}: {error.strerror or error}", exit_code=1) from None
        if self._events is not None and record.get("event") in ("step", "epoch"):
            event, step = record["event"], record["step"]
            for name, value in record.items():
                if name not in ("event", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._events.add_scalar(f"{event}/{name}", value, step)

    def write_if_possible(self, **record) -> None:
        """A record about a run that is stopping already: not written when the log cannot be."""
        if not self.failed:
            try:
                self.write(**record)
            except RunStopped:
                pass

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # a full disk, reported by the write that failed
            self.failed = True
        if self._events is not None:
            self._events.close()


def drop_torn_record(path: Path) -> None:
    """A log whose last record was cut short (the node lost, the disk full mid-line) continues after its last whole
    record, with a note: appending to the torn line made both records unreadable."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(max(0, size - 65536))
            tail = handle.read()
            if tail.endswith(b"\n"):
                return
            if b"\n" not in tail and len(tail) < size:  # a line longer than any record: end it instead
                handle.write(b"\n")
                cut = size
            else:
                cut = size - len(tail) + tail.rfind(b"\n") + 1
                handle.truncate(cut)
    except FileNotFoundError:
        return
    print(f"note: {path} ended in a record cut short ({size - cut} bytes, a write interrupted): dropped it",
          file=sys.stderr, flush=True)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a log; a line that is no JSON (a record cut short) is left out."""
    records = []
    with open(path) as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def logged_epochs(path: str | Path) -> tuple[dict[int, float], dict[int, float]]:
    """(loss by epoch, k-NN top-1 by epoch) from a log's epoch records; of an epoch logged twice (a run resumed
    mid-epoch repeats it), the later record."""
    losses, knn = {}, {}
    for record in read_jsonl(path):
        if record.get("event") == "epoch":
            if record.get("loss") is not None:
                losses[record["epoch"]] = record["loss"]
            if record.get("knn_top1") is not None:
                knn[record["epoch"]] = record["knn_top1"]
    return losses, knn


def plot_run(log_path: str | Path, out_path: str | Path) -> Path:
    """training.png of a run's log."""
    figure = training_figure([r for r in read_jsonl(log_path) if r.get("event") == "epoch"])
    with StagedPath(str(out_path)) as staged:
        figure.savefig(staged.temporary, format="png")
    return Path(out_path)


def training_figure(records: list[dict]):
    """Loss (left axis) and k-NN top-1 (right axis) per epoch, from the `epoch` records of a log."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4), dpi=100)
    loss_ax = fig.add_subplot()
    lines = []
    loss_points = [(r["epoch"], r["loss"]) for r in records if r.get("loss") is not None]
    if loss_points:
        lines += loss_ax.plot(*zip(*loss_points), color="tab:blue", marker="o", label="MSF loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss", color="tab:blue")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    knn_ax = loss_ax.twinx()
    knn_points = [(r["epoch"], r["knn_top1"]) for r in records if r.get("knn_top1") is not None]
    if knn_points:
        lines += knn_ax.plot(*zip(*knn_points), color="tab:red", marker="s", label="k-NN top-1")
        if knn_points[0][0] == 0:
            lines.append(knn_ax.axhline(knn_points[0][1], color="tab:red", linestyle=":", linewidth=1,
                                        label="k-NN of the random init"))
    knn_ax.set_ylabel("k-NN top-1", color="tab:red")
    knn_ax.set_ylim(0, 1)
    if lines:  # below the plot, where it hides no curve
        fig.legend(handles=lines, loc="lower center", ncol=len(lines), frameon=False)
    fig.suptitle("MSF training: loss and k-NN accuracy per epoch (epoch 0 = random init)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


class DeferredScalars:
    """Device scalars for the log, read without stalling the GPU: on CUDA they are copied to pinned host memory
    asynchronously when staged and read at the next stage/flush (by then long finished); on the CPU at once."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pending = None

    def stage(self, record: dict, **scalars: torch.Tensor) -> dict | None:
        """Queue `record` completed by `scalars`; return the record that is ready now (on CUDA the previous one)."""
        values = torch.stack([value.detach().float().reshape(()) for value in scalars.values()])
        if self.device.type != "cuda":
            return {**record, **dict(zip(scalars, values.tolist()))}
        ready = self.flush()
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending = (record, list(scalars), host, event)
        return ready

    def flush(self) -> dict | None:
        if self._pending is None:
            return None
        record, names, host, event = self._pending
        self._pending = None
        event.synchronize()
        return {**record, **dict(zip(names, host.tolist()))}
