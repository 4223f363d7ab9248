"""Every command starts with dataset_prep.command_start.start_command: the heavy packages load with Python's cyclic
collector off, and what they made is frozen out of its later passes (a command's start: 3.8 -> 2.8 s for
`import msf_fast.trainer` on a Zen 5); the collector works as before on everything made afterwards."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


COUNT_COLLECTIONS = """
import gc, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and full.append(1))
if sys.argv[1] == "start":
    from dataset_prep.command_start import start_command
    start_command("test")
import torch, torchvision
passes = len(full)
frozen = gc.get_freeze_count()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after the imports: the collector still frees it
del a, b
print(passes, frozen, int(gc.isenabled()), int(gc.collect() >= 2))
"""


def test_heavy_imports_run_without_full_collections_and_are_frozen():
    passes, frozen, enabled, freed = map(int, run(COUNT_COLLECTIONS, "start"))
    assert (passes, enabled, freed) == (0, 1, 1)
    assert frozen > 100_000  # torch's and torchvision's objects
    passes, frozen, enabled, freed = map(int, run(COUNT_COLLECTIONS, "plain"))
    assert passes >= 1 and frozen == 0 and (enabled, freed) == (1, 1)  # what it saves (Python 3.11: about 5 passes)


FAILING_IMPORT = """
import gc, sys
from dataset_prep import command_start
command_start.HEAVY_PACKAGES = frozenset({"broken_heavy_package"})
command_start.start_command("test")
sys.path.insert(0, sys.argv[1])
try:
    import broken_heavy_package
except ZeroDivisionError:
    print("raised", int(gc.isenabled()))
import json  # other packages load as before
print(int(gc.isenabled()), gc.get_freeze_count() > 0)
"""


def test_a_failing_heavy_import_raises_as_usual_and_leaves_the_collector_on(tmp_path):
    (tmp_path / "broken_heavy_package.py").write_text("x = 1 / 0\n")
    assert run(FAILING_IMPORT, str(tmp_path)) == ["raised", "1", "1", "True"]


def test_every_entry_point_starts_with_it():
    """Every module a command runs as __main__ calls start_command (which includes the Ctrl-C hook) and not the
    bare hook; the torch-free ones gain nothing from it, but a later import of torch would."""
    sources = [path for folder in ("msf_fast", "dataset_prep", "pipelines") for path in (ROOT / folder).rglob("*.py")]
    entry_points = [path for path in sources
                    if path.name == "__main__.py" or 'if __name__ == "__main__":' in path.read_text()]
    entry_points.append(ROOT / "train_imagenet.py")
    assert len(entry_points) >= 13
    for path in entry_points:
        text = path.read_text()
        assert "start_command(" in text and "one_line_on_ctrl_c(" not in text, path


@pytest.mark.parametrize("command, program", [(["train_imagenet.py"], "train_imagenet.py"),
                                              (["-m", "dataset_prep.write_beton", "a", "b"],
                                               "python -m dataset_prep.write_beton"),
                                              (["-m", "msf_fast.eval", "knn"], "python -m msf_fast.eval"),
                                              (["-m", "msf_fast.bench", "resize"],
                                               "python -m msf_fast.bench")])
@pytest.mark.parametrize("name, value, expected", [
    ("TQDM_MININTERVAL", "abc", "mininterval expects a number of at least 0 (e.g. TQDM_MININTERVAL=5)"),
    ("TQDM_MININTERVAL", "", "mininterval expects a number"),
    ("TQDM_MAXINTERVAL", "10s", "maxinterval expects a number"),
    ("TQDM_NCOLS", "wide", "ncols expects a whole number of at least 0 (e.g. TQDM_NCOLS=100)"),
    ("TQDM_NROWS", "-1", "nrows expects a whole number of at least 1"),  # taken: the bars vanished
    ("TQDM_SMOOTHING", "nan", "smoothing expects a number from 0 to 1 (e.g. TQDM_SMOOTHING=0.3)")])
def test_a_tqdm_setting_that_is_no_number_is_one_line(command, program, name, value, expected):
    """tqdm reads TQDM_MININTERVAL as a float when it is imported: 'abc' or an empty value was a 26-line traceback
    from every command (the README names the variable); values out of range it took, and drew nothing or nonsense."""
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env={**os.environ, name: value},
                          capture_output=True, text=True, timeout=120)
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith(f"{program}: error: {name}={value!r}: tqdm's setting "
                                                    f"{expected}"), done.stderr


def test_bars_written_to_a_file_wait_half_a_minute_between_redraws():
    import io

    from dataset_prep.progress import LOG_FILE_INTERVAL_S, bar_options
    assert bar_options(io.StringIO()) == {"mininterval": LOG_FILE_INTERVAL_S, "maxinterval": LOG_FILE_INTERVAL_S}

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert bar_options(Terminal()) == {}


INTERRUPTED_IMPORT = """
import importlib, os, signal, sys
from dataset_prep import command_start
from dataset_prep.staging import sigterm_as_ctrl_c
command_start.HEAVY_PACKAGES = frozenset({"slow_heavy_package"})
command_start.start_command("test")
sys.path.insert(0, sys.argv[1])
with sigterm_as_ctrl_c():
    try:
        importlib.import_module("slow_heavy_package")
        importlib.import_module(sys.argv[3])
    except KeyboardInterrupt as stop:
        print(type(stop).__name__, os.path.exists(sys.argv[2]))
print(signal.pthread_sigmask(signal.SIG_BLOCK, []) == set())
"""


@pytest.mark.parametrize("module", ["slow_heavy_package", "slow_heavy_package.later"])
@pytest.mark.parametrize("sig, raised", [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")])
def test_ctrl_c_and_sigterm_wait_for_a_heavy_import_to_finish(sig, raised, module, tmp_path):
    """Raised inside torch's import, a KeyboardInterrupt crossed its pybind11 module setup, which aborted the
    process (exit -6, a C++ 'terminate called' and 30 lines of stack) instead of the command's one line. A module
    of such a package imported later on its own (`from ffcv.loader import Loader`: numba compiles) is held too: a
    stop there was swallowed by numba's callbacks, printed as 'Exception ignored', and write_beton went on."""
    finished = tmp_path / "finished"
    package = tmp_path / "slow_heavy_package"
    package.mkdir()
    slow = (f"import os, signal, time\nos.kill(os.getpid(), signal.{sig})\ntime.sleep(0.3)\n"
            f"open({str(finished)!r}, 'w').close()\n")
    (package / "__init__.py").write_text(slow if module == "slow_heavy_package" else "")
    (package / "later.py").write_text(slow if module != "slow_heavy_package" else "")
    assert run(INTERRUPTED_IMPORT, str(tmp_path), str(finished), module) == [raised, "True", "True"]


@pytest.mark.parametrize("value, disabled", [("1", True), ("true", True), ("0", False), ("", False)])
def test_tqdm_disable_hides_every_bar(value, disabled, monkeypatch):
    """Every bar sets tqdm's `disable` (for --no-progress), which overrode TQDM_DISABLE=1: the writers drew theirs."""
    from dataset_prep.progress import bar_disabled
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert bar_disabled(True) is disabled and bar_disabled(False) is True


STOPPED_AT_EXIT = """
import os, signal, sys, time
from dataset_prep.command_start import start_command
start_command("test")
import weakref
def unregister():  # as torch's libraries (torch.library.Library), finalized as the interpreter ends
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)
    print("not reached")
class Library:
    pass
kept = Library()
weakref.finalize(kept, unregister)
print("done", flush=True)
"""


def test_ctrl_c_as_the_interpreter_ends_is_quiet():
    """Ctrl-C just after a run's summary raised KeyboardInterrupt in torch's finalizers: a traceback, exit 0."""
    done = subprocess.run([sys.executable, "-c", STOPPED_AT_EXIT], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "done\n", "")
