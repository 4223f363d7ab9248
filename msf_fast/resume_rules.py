"""What a resumed run must share with the run that wrote its checkpoint, what it may change with a one-line note,
and what it honours.

Refused, because the continued run would be neither run:
- the model's shape and the bank (model.*, msf.bank_size);
- the data: format, classes and count, and a .beton's order (data.in_memory as resolved: auto may resolve
  otherwise on another machine); a resumed epoch must see the same batches;
- the batch: train.batch_size per process and the number of processes (the bank fills by global batches, and
  both cut each epoch's batches out of the seeded order);
- the method (msf.topk, msf.momentum), the views (data.recipe and the resolution schedule), the seed (data
  order and crops), the kind of lr schedule.
Allowed with a note: optim.lr, optim.weight_decay and optim.momentum (a lower lr after a divergence), the
precision (train.amp=auto picks by machine), msf.bank_dtype, a data path that moved but holds the same data.
Honoured: train.epochs (the schedule continues as the new total defines it; the note gives the lr at the resume
step under the old and the new total), train.max_steps, and where and how fast the run goes (device, threads,
workers, logging, evaluation).
"""
from __future__ import annotations

from dataclasses import dataclass

from msf_fast.schedule import learning_rate, scaled_lr

# The model's shape as a checkpoint's model_args records it, and the parameter that sets each.
SHAPE_PARAMETERS = {"arch": "model.arch", "small_input": "model.small_input", "hidden_dim": "model.hidden_dim",
                    "proj_dim": "model.proj_dim", "bank_size": "msf.bank_size"}
REFUSED = {"msf.topk": "the method", "msf.momentum": "the method", "data.recipe": "the augmentations",
           "data.resolution": "the resolution schedule", "data.min_resolution": "the resolution schedule",
           "data.start_ramp": "the resolution schedule", "data.end_ramp": "the resolution schedule",
           "train.seed": "the data order and crops", "optim.schedule": "the learning-rate schedule"}
ORDERS = {True: "through the page cache in RANDOM order", False: "in the page-aware order without the cache"}
NOTED = ("optim.lr", "optim.weight_decay", "optim.momentum", "msf.bank_dtype")


@dataclass
class RunIdentity:
    """What the resuming run is: its model, data, batch split, settings (to_dict of its config) and precision."""
    model_args: dict
    data: dict
    steps_per_epoch: int
    world_size: int
    config: dict
    precision: str


class ResumeRefused(ValueError):
    """The checkpoint's run and this one differ where a continued run would be neither."""


def check_resume(state: dict, run: RunIdentity) -> list[str]:
    """The notes for what this run changes from the checkpoint's (one line each); ResumeRefused saying what
    differs and what to use when the run cannot continue from `state`."""
    for key, parameter in SHAPE_PARAMETERS.items():
        if state["model_args"].get(key) != run.model_args[key]:
            raise ResumeRefused(f"it holds {parameter}={state['model_args'].get(key)}, this run has "
                                f"{parameter}={run.model_args[key]} (another model)")
    saved_data = state.get("data")
    if saved_data:
        if saved_data["format"] != run.data["format"]:
            raise ResumeRefused(f"it was trained on {describe_data(saved_data)}, this run reads "
                                f"{describe_data(run.data)} (another data format orders its samples differently)")
        if saved_data["classes"] != run.data["classes"] or saved_data["samples"] != run.data["samples"]:
            raise ResumeRefused(f"it was trained on {describe_data(saved_data)}, this run reads "
                                f"{describe_data(run.data)} (other data)")
    if saved_data and saved_data.get("in_memory", run.data.get("in_memory")) != run.data.get("in_memory"):
        before = saved_data["in_memory"]
        raise ResumeRefused(f"it read its .beton {ORDERS[before]} (data.in_memory={int(before)}), this run would "
                            f"read {ORDERS[not before]}: another order of samples; resume with "
                            f"--data.in_memory={int(before)}")
    saved = state.get("config")
    if not saved:  # a checkpoint written without its settings (a benchmark's): only the shape of an epoch is known
        if state["steps_per_epoch"] != run.steps_per_epoch:
            raise ResumeRefused(f"it was saved with {state['steps_per_epoch']} steps per epoch, this run has "
                                f"{run.steps_per_epoch} (another batch size or number of processes)")
        return []
    check_batch(saved["train"]["batch_size"], state.get("world_size"), run.config["train"]["batch_size"],
                run.world_size)
    for name, what in REFUSED.items():
        before, now = setting(saved, name), setting(run.config, name)
        if before != now:
            raise ResumeRefused(f"it was trained with {name}={before}, this run has {name}={now} ({what}): resume "
                                f"with --{name}={before}")
    notes = [f"{name}: {setting(saved, name)} -> {setting(run.config, name)}" for name in NOTED
             if setting(saved, name) != setting(run.config, name)]
    if state.get("precision") and state["precision"] != run.precision:
        notes.append(f"precision: the checkpoint was trained in {state['precision']}, this run continues in "
                     f"{run.precision} (not step for step the same run)")
    if saved["data"]["train_path"] != run.config["data"]["train_path"]:
        notes.append(f"data.train_path: {run.config['data']['train_path']} (the checkpoint's run read "
                     f"{saved['data']['train_path']}; same data: {describe_data(run.data)})")
    return [f"note: {line}" for line in notes]


def check_batch(saved_batch: int, saved_world: int | None, batch: int, world: int) -> None:
    """Refuse another per-process batch or number of processes (an older checkpoint records no process count)."""
    if saved_batch == batch and saved_world in (None, world):
        return
    if saved_world is None:
        raise ResumeRefused(f"it was saved with train.batch_size={saved_batch} per process, this run has "
                            f"train.batch_size={batch}: resume with --train.batch_size={saved_batch}")
    fix = f"--train.batch_size={saved_batch}" + (f" on {processes(saved_world)}" if saved_world != world else "")
    raise ResumeRefused(f"it was saved with a global batch of {saved_batch * saved_world} (train.batch_size="
                        f"{saved_batch} x {processes(saved_world)}), this run has {batch * world} (train.batch_size="
                        f"{batch} x {processes(world)}): resume with {fix}")


def processes(count: int) -> str:
    return f"{count} process" + ("es" if count > 1 else "")


def schedule_note(saved: dict | None, config: dict, step: int, steps_per_epoch: int, global_batch: int) -> str | None:
    """The one line a resume with another train.epochs prints: the schedule now spans the new total, and the lr
    at the resume step under the old and the new total (None when the total is the same)."""
    if not saved or saved["train"]["epochs"] == config["train"]["epochs"]:
        return None
    old, new = saved["train"]["epochs"], config["train"]["epochs"]
    if step >= new * steps_per_epoch:  # past the new end: the run is finished, and says so
        return None
    schedule = config["optim"]["schedule"]

    def lr_at(settings: dict, epochs: int) -> float:
        return learning_rate(scaled_lr(settings["optim"]["lr"], global_batch), schedule, step, steps_per_epoch,
                             epochs)
    return (f"note: train.epochs {old} -> {new}: the {schedule} schedule now spans {epochs(new)}; the lr at step "
            f"{step} is {lr_at(config, new):.4g} ({lr_at(saved, old):.4g} under {epochs(old)})")


def epochs(count: int) -> str:
    return f"{count} epoch{'s' if count != 1 else ''}"


def setting(config: dict, name: str):
    section, parameter = name.split(".")
    return config.get(section, {}).get(parameter)


def describe_data(data: dict) -> str:
    kind = {"torch": "an ImageFolder", "ffcv": "a .beton", "dali": "a TFRecord store"}.get(data["format"], data["format"])
    return f"{kind} of {data['samples']:,} images in {len(data['classes'])} classes"
