"""Train MSF: python train_imagenet.py --config-file configs/rn50_200_epochs.yaml [--section.param=value ...]"""
from __future__ import annotations

import json
import sys

PROG = "train_imagenet.py"


def main(argv: list[str] | None = None) -> int:
    from msf_fast.config import load_config
    from msf_fast.errors import UserError
    try:
        cfg = load_config(argv)
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    from dataset_prep.staging import sigterm_as_ctrl_c, stop_exit_code
    from msf_fast.distributed import init_from_environment, shut_down
    from msf_fast.stopping import RunStopped
    from msf_fast.trainer import Trainer
    process = init_from_environment(cfg.train.device)  # torchrun: one process per GPU
    rank = f"rank {process.rank}: " if process.world_size > 1 else ""
    trainer = None
    try:
        # SIGTERM (a scheduler's, torchrun's) before training runs, or after: as Ctrl-C, one line (it killed the
        # process without a word); while it trains, it saves a checkpoint and stops
        with sigterm_as_ctrl_c():
            trainer = Trainer(cfg, rank=process.rank, world_size=process.world_size)
            result = trainer.train()
    except UserError as error:  # a bad data path, an unusable checkpoint, no CUDA; anything else is a bug
        print(f"{PROG}: {rank}error: {error}", file=sys.stderr)
        return 2
    except RunStopped as stop:  # preempted (after a checkpoint), a non-finite loss, a file not written
        print(f"{PROG}: {rank}{stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt as stop:  # before training started, or a second Ctrl-C (the first one saves and stops)
        if trainer is None:  # a fresh run left no trace, a resumed one did not write yet
            print(f"{PROG}: {rank}interrupted while the run started; {cfg.logging.folder} is as it was",
                  file=sys.stderr)
        elif trainer.never_stepped():  # a fresh run: what it wrote is gone
            print(f"{PROG}: {rank}interrupted before the first step; nothing was kept in {cfg.logging.folder}",
                  file=sys.stderr)
        else:
            print(f"{PROG}: {rank}interrupted; --train.resume=auto continues from the last checkpoint written",
                  file=sys.stderr)
        return stop_exit_code(stop)
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        from msf_fast.errors import training_out_of_memory
        shortage = training_out_of_memory(error, cfg)
        if shortage is None:
            raise
        if trainer is None:  # it failed as it was built: a fresh run left no trace, a resumed one wrote nothing
            kept = f"nothing was written in {cfg.logging.folder}"
        elif trainer.never_stepped():
            kept = f"nothing was kept in {cfg.logging.folder}"
        else:
            kept = "the last checkpoint written is kept (--train.resume=auto continues it with the same settings)"
        print(f"{PROG}: {rank}error: {shortage}; {kept}", file=sys.stderr)
        return 1
    finally:
        shut_down()
    if trainer.is_main:
        print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    from dataset_prep.command_start import start_command
    start_command(PROG)  # Ctrl-C before main's own handling: while torch loads, say
    sys.exit(main())
