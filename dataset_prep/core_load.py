"""How many of this process's cores other processes keep busy, measured over the command's own start-up.

torch's OpenMP threads split every op evenly, so an op waits for its slowest thread: with another process busy on
one of 2 cores, 2 torch threads trained 2.3-2.9x slower than 1 (README, "Precision, layout and threads"). The
load average cannot tell that apart from the command that ran a minute before; the cores' busy time while this
command loads torch (1-3 s in which it uses one core itself) can. `start_command` takes the first sample, the
trainer the second when it picks its threads.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from dataset_prep.wording import plural

MIN_WINDOW_S = 0.5  # shorter windows are too few 10-ms clock ticks to tell one busy core from none


@dataclass(frozen=True)
class CpuSample:
    busy_s: float  # busy seconds summed over the cores sampled (steal included: a vCPU the host gave away)
    total_s: float  # all seconds summed over those cores
    own_s: float  # this process's CPU seconds (all its threads, and its children once they ended)
    cores: int


def parse_proc_stat(text: str, cores: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks summed over the `cores` lines (cpuN) of /proc/stat's text. Busy is everything but
    idle and iowait; guest time is already counted in user."""
    busy = total = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += sum(ticks) - ticks[3] - ticks[4]
        total += sum(ticks)
    return busy, total


def sample() -> CpuSample | None:
    """Now, over the cores this process may run on; None where /proc/stat cannot be read (not Linux)."""
    try:
        cores = os.sched_getaffinity(0)
        with open("/proc/stat") as stat:
            busy, total = parse_proc_stat(stat.read(), cores)
    except (AttributeError, OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()  # with the children it waited for (a converter's pool): they are not "other processes"
    return CpuSample(busy / tick, total / tick, own.user + own.system + own.children_user + own.children_system,
                     len(cores))


def busy_cores_of_others(start: CpuSample | None, end: CpuSample | None) -> float | None:
    """Cores' worth of CPU that other processes used between two samples (0 = the cores were this process's
    alone), to two decimals (what the logs record); None without two samples over the same cores at least
    MIN_WINDOW_S apart."""
    if start is None or end is None or start.cores != end.cores:
        return None
    window = (end.total_s - start.total_s) / end.cores  # wall seconds, as the cores counted them
    if window < MIN_WINDOW_S:
        return None
    others = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
    return round(max(0.0, others / window), 2)


_STARTED: CpuSample | None = None


def mark_start() -> None:
    """The first sample: the command starts."""
    global _STARTED
    _STARTED = sample()


def busy_cores_since_start() -> float | None:
    """busy_cores_of_others since mark_start (None if it was not called, or too recently)."""
    return busy_cores_of_others(_STARTED, sample())


def threads_that_fit(threads: int, cores: int, others: float | None) -> int:
    """`threads`, or fewer: at most the process's cores and, where other processes keep half a core or more busy,
    the cores they leave idle (rounded half up; at least 1)."""
    idle = cores - others if others is not None and others >= 0.5 else cores
    return max(1, min(threads, math.floor(idle + 0.5)))


SHARING_COST = ("threads sharing cores with busy processes trained 2.3x (one busy core of 2) to 20-60x (both) "
                "slower on a 2-core Zen 5")


def threads_note(planned: int, threads: int, cores: int, others: float | None, option: str) -> str | None:
    """The note a CPU run prints as training begins: its `planned` torch threads were lowered to `threads` to fit
    the cores that other processes left idle, or (not lowered: given by the user) they share cores with them; None
    when neither."""
    if others is None or others < 0.5:
        return None
    planned = min(planned, cores)  # fewer threads than planned because the process has fewer cores: not the load's
    busy = f"note: other processes kept {others:.1f} of this process's {plural(cores, 'core')} busy as it started"
    if threads < planned:
        return (f"{busy}: {plural(threads, 'torch thread')} instead of {planned} ({SHARING_COST}); {option}={planned} "
                f"uses {planned} anyway")
    fit = threads_that_fit(threads, cores, others)
    if fit < threads:
        return f"{busy}; {SHARING_COST}: {option}={fit} if that load stays (README, \"Precision, layout and threads\")"
    return None
