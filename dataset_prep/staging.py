"""Outputs that appear only when complete: write under a hidden temporary name, rename at the end.

An interrupted conversion leaves at most a `.NAME.partial-PID` entry (removed on a clean failure or Ctrl-C; after a
SIGKILL or a power cut, by the next write of NAME), never something under the final name that looks finished.
`--overwrite` keeps the old output until the new one is complete.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from typing import IO, Callable

STALE_AFTER_S = 60  # a leftover untouched this long whose PID is gone here (not a writer on another host sharing it)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a job scheduler, docker stop): cleaned up like Ctrl-C."""


def stop_exit_code(stop: KeyboardInterrupt) -> int:
    """What a command stopped by Ctrl-C or SIGTERM exits with, as a shell reports a process ended by it."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


class _StopState:
    requested: type[KeyboardInterrupt] | None = None  # the stop a handler raised in this block
    committing = False  # past commit_point: stops are ignored


_STOP = _StopState()


@contextmanager
def sigterm_as_ctrl_c():
    """Within the block, SIGTERM raises Terminated in the main process, so that staged outputs are discarded as on
    Ctrl-C; a forked worker dies of it as usual (its main process cleans up).
    Both stops are also remembered, for `commit_point`: an exception raised where something swallows it is lost
    (numba compiles FFCV's pipeline through C code that calls back into Python and prints and drops what the callback
    raised: write_beton stopped at that moment went on, wrote its store and exited 0)."""
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        if _STOP.committing:
            return
        _STOP.requested = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        raise _STOP.requested()

    stops = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (a background job)
        stops.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, handler) for signum in stops}
    _STOP.requested, _STOP.committing = None, False
    try:
        yield
    finally:
        for signum, handling in previous.items():
            signal.signal(signum, handling)
        _STOP.requested, _STOP.committing = None, False


def commit_point() -> None:
    """Call in a sigterm_as_ctrl_c block where a writer's work is done, before its staged outputs are renamed into
    place: a stop that came before (its exception possibly swallowed) is raised now, so nothing is committed; one
    that comes later is ignored until the block ends. Its outputs are then whole, and its summary says so (a stop
    between the store's rename and the end was "interrupted; nothing written" over a finished store, or left a
    manifest without its .beton)."""
    if _STOP.requested is not None:
        raise _STOP.requested()
    _STOP.committing = True


class OutputError(OSError):
    """The output cannot be written where asked (exists, missing folder, not writable)."""


def nearest_existing(path: str) -> str:
    """`path` itself if it exists, else its closest existing parent: where a folder to be made would hang."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def check_destination(path: str, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"output {path!r} already exists (pass --overwrite to replace it)")
    parent = os.path.dirname(os.path.abspath(path))
    on_path = nearest_existing(parent)
    if not os.path.isdir(on_path):
        raise OutputError(f"cannot write {path!r}: {on_path!r} is a file, not a folder")
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {path!r}: folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path!r}: folder {parent!r} is not writable")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_leftovers(folder: str, name: str) -> None:
    """Remove the `.NAME.partial-PID` / `.NAME.previous-PID` entries of writers that were killed (their PID is gone,
    nothing touched them for a minute), with a note: a killed conversion left gigabytes there."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(partial|previous)-(\d+)")
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry)
        if not match or int(match[2]) == os.getpid() or _process_exists(int(match[2])):
            continue
        path = os.path.join(folder, entry)
        try:
            if time.time() - os.lstat(path).st_mtime < STALE_AFTER_S:
                continue
            _remove(path)
        except OSError:
            continue
        print(f"note: removed {path}, left by an interrupted write (PID {match[2]})", file=sys.stderr)


class StagedPath:
    """A temporary sibling of `final` (a file, or a folder with `is_dir`) that becomes `final` on `commit()`.
    As a context manager: committed when the block completes, discarded when it raises (Ctrl-C included)."""

    def __init__(self, final: str, is_dir: bool = False):
        self.final = final
        folder, name = os.path.split(os.path.abspath(final))
        self.temporary = os.path.join(folder, f".{name}.partial-{os.getpid()}")
        self.is_dir = is_dir
        remove_stale_leftovers(folder, name)
        try:  # create it now, so a destination we cannot write to fails before any work is done
            if is_dir:
                os.mkdir(self.temporary)
            else:
                open(self.temporary, "wb").close()
        except OSError as error:
            raise OutputError(f"cannot write {final!r}: {error.strerror or error}") from None

    def commit(self) -> None:
        if self.is_dir and os.path.isdir(self.final):
            previous = self.temporary.replace(".partial-", ".previous-")
            os.replace(self.final, previous)
            os.replace(self.temporary, self.final)
            _remove(previous)
        else:
            os.replace(self.temporary, self.final)

    def discard(self) -> None:
        _remove(self.temporary)

    def __enter__(self) -> "StagedPath":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:  # a rename refused: the staged output must not stay behind
            self.discard()
            raise


class LockHeld(Exception):
    """Another process holds the lock file; the exception's text is what the holder wrote there."""


def hold_lock_file(path: str, open_file: Callable[[], IO], holder: str) -> IO:
    """flock(2) `path` (opened by `open_file`) without waiting, and write `holder` into it (best effort: a full disk
    fails later, in one line). LockHeld with the holder's text when another process has it. A holder that removed
    the file (while holding it) between our open and our lock leaves us an unlinked one: we lock the new one."""
    while True:
        handle = open_file()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read()
            handle.close()
            raise LockHeld(text) from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(holder + "\n")
        handle.flush()
    except OSError:
        pass
    return handle


@contextmanager
def only_writer(path: str, overwrite: bool):
    """Hold an OS lock on `.NAME.lock` beside `path` while it is written: a second writer of the same output is
    refused (two at once both ended 'wrote', the later one silently replacing the other's output). Under the lock
    the destination is checked again: one finished while this one started is refused without --overwrite. The
    lock file goes at the end, while held."""
    lock_path = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.lock")

    def open_lock() -> IO:
        try:
            return open(lock_path, "a+")
        except OSError as error:
            raise OutputError(f"cannot write {path!r}: {error.strerror or error}") from None
    try:
        handle = hold_lock_file(lock_path, open_lock, str(os.getpid()))
    except LockHeld as held:
        pid = str(held).strip() or "unknown"
        raise OutputError(f"output {path!r} is being written by another process (PID {pid}): wait for it to end, "
                          "or write another output") from None
    try:
        check_destination(path, overwrite)
        yield
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        handle.close()
