"""Ordered parallel map over images with a progress bar (images/s and ETA)."""
from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import sys
import threading
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Callable, Generator, Iterator

if TYPE_CHECKING:
    from tqdm import tqdm


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


LOG_FILE_INTERVAL_S = 30.0
# tqdm's settings from the environment (TQDM_<OPTION>) that it converts to numbers, some when it is imported:
# option -> (type, smallest value that makes sense, largest)
TQDM_NUMBERS = {"MININTERVAL": (float, 0, math.inf), "MAXINTERVAL": (float, 0, math.inf),
                "MINITERS": (float, 0, math.inf), "SMOOTHING": (float, 0, 1), "DELAY": (float, 0, math.inf),
                "TOTAL": (float, 0, math.inf), "NCOLS": (int, 0, math.inf), "NROWS": (int, 1, math.inf),
                "POSITION": (int, 0, math.inf), "INITIAL": (int, 0, math.inf), "UNIT_DIVISOR": (int, 1, math.inf)}
TQDM_EXAMPLES = {"MININTERVAL": "5", "MAXINTERVAL": "30", "NCOLS": "100", "NROWS": "20", "SMOOTHING": "0.3"}


def tqdm_environment_problem() -> str | None:
    """A TQDM_ setting that tqdm would fail to convert, with a traceback, at import or at a bar's start; or one
    out of its range, which it takes and then draws nothing (NROWS=-1), a negative count, or a bar per update."""
    for option, (kind, lowest, highest) in TQDM_NUMBERS.items():
        name = f"TQDM_{option}"
        value = os.environ.get(name)
        if value is None:
            continue
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not lowest <= number <= highest:  # NaN too
            expected = "a number" if kind is float else "a whole number"
            expected += f" from {lowest} to {highest}" if highest < math.inf else f" of at least {lowest}"
            example = TQDM_EXAMPLES.get(option)
            return (f"{name}={value!r}: tqdm's setting {option.lower()} expects {expected}"
                    + (f" (e.g. {name}={example})" if example else ""))
    return None


def bar_disabled(enabled: bool = True) -> bool:
    """No bar when the command was told so (--no-progress), or when TQDM_DISABLE says yes: every bar here sets
    tqdm's `disable` itself, and that overrode the variable, which tqdm reads only as a default."""
    return not enabled or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def bar_options(stream=None) -> dict:
    """tqdm options for a bar drawn on `stream` (stderr): none on a terminal; where the output goes to a file or a
    pipe (a batch job's log), a redraw every LOG_FILE_INTERVAL_S seconds instead of tqdm's 0.1, so that a log
    holds a line of progress every half minute, not ten a second (a converter's hour was 36,000 redraws). tqdm's
    own TQDM_MININTERVAL, where set, decides."""
    stream = sys.stderr if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # closed, or no file at all
        terminal = False
    if terminal or "TQDM_MININTERVAL" in os.environ or "TQDM_MAXINTERVAL" in os.environ:
        return {}
    # maxinterval too: tqdm's monitor thread otherwise redraws a slow bar every 10 s
    return {"mininterval": LOG_FILE_INTERVAL_S, "maxinterval": LOG_FILE_INTERVAL_S}


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[tqdm]:
    """A bar (images/s, ETA) that stays drawn when its pass completes; a pass that fails or is interrupted
    (Ctrl-C, SIGTERM) erases it, so the error line that follows is not printed under a half-drawn bar. (A
    generator holding the bar is closed with GeneratorExit: a failure only when it had not yielded everything.)"""
    from tqdm import tqdm  # here: its import fails on a TQDM_MININTERVAL that is no number, which start_command tells

    bar = tqdm(total=total, desc=description, unit="img", disable=bar_disabled(enabled), dynamic_ncols=True,
               smoothing=0.05, **bar_options())
    try:
        yield bar
    except BaseException as stopped:
        if not (isinstance(stopped, GeneratorExit) and bar.n >= total):
            bar.leave = False
        raise
    finally:
        bar.close()


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back for the block, then raised by this process's own handlers as it ends.
    - Blocking them in this thread is not enough: a thread that a library started before (OpenBLAS's at numpy's
      import, OpenMP's) takes the signal, and Python then runs the handler in this thread between any two
      bytecodes, inside torch's import or a Pool's start. So the Python-level handlers are swapped for one that
      notes the signal; those that are not Python's (the default action, ignoring) stay as they are.
    - They are blocked as well, for the processes forked in the block: a worker keeps them blocked until
      start_worker has made it ignore them (before that, a worker ran the parent's handlers: its stop was lost,
      or printed beside the parent's line)."""
    if threading.current_thread() is not threading.main_thread():  # handlers run there alone (a loader thread's
        yield                                                          # lazy import of a torch module)
        return
    noted: list[int] = []
    swapped = {signum: signal.signal(signum, lambda signum, frame: noted.append(signum))
               for signum in STOP_SIGNALS if callable(signal.getsignal(signum))}
    held_before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held_before)  # one pending here is noted (Python checks now)
        for signum, handler in swapped.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)


def ignore_stops() -> None:
    """In a worker process: Ctrl-C and SIGTERM are its parent's to act on (a terminal's Ctrl-C and a scheduler's
    SIGTERM reach the whole process group), and no longer held as stops_deferred held them across the fork."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def start_worker(parent: int) -> None:
    """Run first in every worker process.
    - Ctrl-C and SIGTERM are left to the parent, which stops the workers with SIGKILL (their KeyboardInterrupt
      tracebacks were printed beside its one line; a worker that a whole-group SIGTERM, Slurm's, killed while it
      held a queue's lock left the parent's pool waiting on it forever).
    - On Linux it dies with its parent (`parent`: its PID, taken before the fork): a converter killed
      with SIGKILL left its workers running on, holding the disk and the cores."""
    ignore_stops()
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request was made
            os._exit(1)


def parallel_map(function: Callable, items: list, workers: int, description: str,
                 progress: bool = True) -> Iterator:
    """`function(item)` for each item, in order; `workers` <= 1 runs in this process (one core),
    otherwise in that many processes while this one consumes the results."""
    with progress_bar(len(items), description, progress) as bar:
        if workers <= 1:
            results: Generator = (function(item) for item in items)
        else:
            results = ordered_map(function, items, workers, max(1, min(32, len(items) // (workers * 16))))
        with closing(results):
            for result in results:
                bar.update()
                yield result


def _serve(function: Callable, connection, parent: int) -> None:
    """A worker of ordered_map: chunks in, their results (or the exception raised) out, until its pipe closes."""
    start_worker(parent)
    while True:
        try:
            chunk = connection.recv()
        except EOFError:
            return
        try:
            reply = ("done", [function(item) for item in chunk])
        except Exception as error:  # raised again in the parent
            reply = ("failed", error)
        connection.send(reply)


def ordered_map(function: Callable, items: list, workers: int, chunksize: int) -> Iterator:
    """`function(item)` for each item, in order, in `workers` forked processes, each with its own pipes.
    multiprocessing.Pool's workers share the locks of its queues: one that a whole-group SIGTERM (Slurm's
    preemption) or a kill ended while it held one left Pool.terminate waiting forever (2 of 5 such stops of
    write_tfrecord hung). Here nothing is shared: chunk k goes to worker k mod N, two ahead, and its results are
    read back from that worker in order. A worker that dies ends the map with ChildProcessError."""
    chunks = [items[start:start + chunksize] for start in range(0, len(items), chunksize)]
    context = multiprocessing.get_context("fork")
    processes, connections = [], []
    try:
        with stops_deferred():  # a stop is raised as this block ends: the workers are stopped below
            for _ in range(min(workers, len(chunks))):
                ours, theirs = context.Pipe()
                process = context.Process(target=_serve, args=(function, theirs, os.getpid()), daemon=True)
                process.start()
                theirs.close()
                processes.append(process)
                connections.append(ours)

        def exchange(index: int, send: bool):
            worker = index % len(processes)
            try:
                return connections[worker].send(chunks[index]) if send else connections[worker].recv()
            except (EOFError, OSError):  # its end of the pipe closed: it died (killed, out of memory)
                processes[worker].join(timeout=5)
                raise ChildProcessError(f"a worker process ended (exit code {processes[worker].exitcode})") from None

        ahead = 2 * len(processes)
        for index in range(min(ahead, len(chunks))):
            exchange(index, send=True)
        for index in range(len(chunks)):
            status, payload = exchange(index, send=False)
            if status == "failed":
                raise payload
            if index + ahead < len(chunks):
                exchange(index + ahead, send=True)
            yield from payload
    finally:
        with stops_deferred():  # a stop raised within left the workers unjoined
            for process in processes:
                process.kill()
            for process in processes:
                process.join()
            for connection in connections:
                connection.close()
