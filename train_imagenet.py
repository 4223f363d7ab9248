"""Train MSF: python train_imagenet.py --config-file configs/rn50_200_epochs.yaml [--section.param=value ...]"""
from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    from msf_fast.config import ConfigError, load_config
    try:
        cfg = load_config(argv)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2

    from msf_fast.distributed import init_from_environment, shut_down
    from msf_fast.trainer import Trainer
    process = init_from_environment(cfg.train.device)  # torchrun: one process per GPU
    try:
        try:
            trainer = Trainer(cfg, rank=process.rank, world_size=process.world_size)
        except (OSError, ValueError, RuntimeError) as error:  # bad data folder, unusable checkpoint, no CUDA
            print(f"error: {error}", file=sys.stderr)
            return 2
        history = trainer.train()
    finally:
        shut_down()
    if trainer.is_main:
        print(json.dumps({"steps": trainer.step, "final_loss": history["loss"].get(max(history["loss"], default=0)),
                          "knn_top1": history["knn"], "folder": str(trainer.folder)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
