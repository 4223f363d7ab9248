"""msf-fast: the MSF method and its training run (this folder's top level), evaluation (eval/), benchmarks (bench/).

The method: model.py (MSF: online, target, predictor, the loss), bank.py (memory bank and top-k search),
ema.py (target update), step.py (one training step), schedule.py, reference.py (the original formulation).
The run: config.py (every knob), trainer.py (the loop), run_checkpoints.py (when and where checkpoints are
written, what a run resumes from), checkpoint.py (reading and writing them), knn_monitor.py, runlog.py,
distributed.py (torchrun), devices.py (which device: auto, and a GPU torch cannot use), errors.py, demo.py,
export.py.
"""
