"""What every command does first, before its heavy imports: Ctrl-C as one line, and the heavy packages loaded
without Python's cyclic garbage collector.

Loading torch, torchvision, FFCV or numba makes about a million objects, and the collector's full passes, each
started when the heap has grown by a quarter, walk all of them again and again: a quarter of a command's start
(`import msf_fast.trainer`: 3.8 s, 2.8 s with the collector off while it loads, on a Zen 5). So while one of
these packages loads, the collector is off; afterwards its objects (modules, classes, functions: they live as long
as the process) are frozen out of later passes (`gc.freeze`), and the collector runs as before on everything made
after. The packages are still imported where they are used (lazily: `--help` and option mistakes answer before
torch loads); this only changes how their import runs. The cyclic garbage those imports leave (about 9,000 objects
after torch and torchvision) is frozen with the rest: a full pass to free it first costs 0.4 s.

Ctrl-C and SIGTERM are also held back while one of them loads, and delivered as soon as it has: raised inside
torch's import, the KeyboardInterrupt crossed its C++ (pybind11) module setup, which aborted the process
(`terminate called after throwing an instance of 'pybind11::error_already_set'`, exit -6, a 30-line stack) instead
of the command's one line and clean exit; seen in CI with SIGTERM half a second into write_beton.
"""
from __future__ import annotations

import atexit
import gc
import importlib.abc
import importlib.machinery
import os
import signal
import sys
import threading
import weakref

from dataset_prep import core_load
from dataset_prep.argument_parser import one_line_on_ctrl_c
from dataset_prep.progress import stops_deferred, tqdm_environment_problem

HEAVY_PACKAGES = frozenset({"numpy", "torch", "torchvision", "ffcv", "numba", "nvidia.dali"})


def is_heavy(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in HEAVY_PACKAGES)


class CollectorOffWhileLoading(importlib.abc.MetaPathFinder):
    """Finds the HEAVY_PACKAGES, and their modules imported later on their own (`from ffcv.loader import Loader`
    after `import ffcv`: numba compiles there, for a second), as the path finder does, and runs their import with
    the collector off and Ctrl-C / SIGTERM held back, then freezes what it made. Imports inside such an import are
    left to the path finder: the outer one covers them."""
    loading = 0  # heavy imports under way

    def find_spec(self, name, path=None, target=None):
        if CollectorOffWhileLoading.loading or not is_heavy(name):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            was_enabled = gc.isenabled()
            gc.disable()
            CollectorOffWhileLoading.loading += 1
            try:
                with stops_deferred():  # one that came meanwhile is raised as it ends
                    load(module)
            finally:
                CollectorOffWhileLoading.loading -= 1
                gc.freeze()
                if was_enabled:
                    gc.enable()

        spec.loader.exec_module = exec_module  # this spec's loader object only: its class stays the path finder's
        return spec


def load_heavy_packages_without_gc() -> None:
    """From now on in this process, the HEAVY_PACKAGES load with the collector off and are then frozen. Idempotent."""
    if not any(isinstance(finder, CollectorOffWhileLoading) for finder in sys.meta_path):
        sys.meta_path.insert(0, CollectorOffWhileLoading())


def stop_at_once(signum, frame) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(128 + signum)


def stops_end_the_exit() -> None:
    """An exit handler: Ctrl-C or SIGTERM while the interpreter ends (the command's work and its lines are done)
    raised KeyboardInterrupt in torch's library finalizers (weakref.finalize's, run at exit), printed as a traceback
    after the run's summary; from here on it ends the process at once, quietly. Exit handlers run last registered
    first: start_command registers weakref's own first, then this one."""
    if threading.current_thread() is threading.main_thread():
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, stop_at_once)


def start_command(program: str) -> None:
    """Call first in a command's entry point (`PROGRAM: interrupted` on an early Ctrl-C; a TQDM_ setting that tqdm
    cannot read, one line and exit 2; heavy imports without the collector; the cores' busy time sampled, to tell
    later how much of them other processes use)."""
    one_line_on_ctrl_c(program)
    problem = tqdm_environment_problem()
    if problem:
        print(f"{program}: error: {problem}", file=sys.stderr)
        sys.exit(2)
    core_load.mark_start()
    load_heavy_packages_without_gc()
    weakref.finalize(stops_end_the_exit, int)  # a no-op; weakref's exit handler is registered by the first one
    atexit.register(stops_end_the_exit)
