"""The run's JSONL log and its plot of loss and k-NN accuracy per epoch."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dataset_prep.staging import StagedPath


class JsonlLog:
    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if append else "w")

    def write(self, **record) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


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
