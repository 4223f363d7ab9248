"""Benchmarks: the `python -m msf_fast.bench ...` commands (see cli.py), one JSON line per measurement.

timing.py (interleaved medians, peak memory), bank.py, ema.py, step.py, loader.py, plan.py (time to train).
"""


def main(argv: list[str] | None = None) -> int:
    from msf_fast.bench.cli import main as run
    return run(argv)
