"""Dataset conversion and the helpers every command shares. Importing it first (every entry point does) picks
numba's threading layer for processes confined to one core (below)."""
import os


def cpu_quota_cores() -> float | None:
    """The cores a cgroup v2 CPU quota allows this process (`docker --cpus`, Kubernetes limits), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as file:
            quota, period = file.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def confined_to_one_core() -> bool:
    from dataset_prep.progress import available_cores
    quota = cpu_quota_cores()
    return available_cores() == 1 or (quota is not None and quota < 2)


def avoid_tbb_on_one_core() -> None:
    """On one core (taskset, Slurm --cpus-per-task=1, a quota of one CPU), numba's TBB threading layer (its default
    where libtbb is installed, as OpenCV's packages install it) hangs forever at exit once FFCV has decoded or
    written: TBB starts no worker thread, and numba's unload_tbb waits for a task no thread runs (numba#10556,
    oneTBB#2056). The OpenMP layer has no such wait. A layer chosen in NUMBA_THREADING_LAYER is kept."""
    if "NUMBA_THREADING_LAYER" not in os.environ and confined_to_one_core():
        os.environ["NUMBA_THREADING_LAYER"] = "omp"


avoid_tbb_on_one_core()
