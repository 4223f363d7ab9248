"""Outputs that appear only when complete: write under a hidden temporary name, rename at the end.

An interrupted conversion leaves at most a `.NAME.partial-PID` entry (removed on a clean failure or Ctrl-C),
never something under the final name that looks finished. `--overwrite` keeps the old output until the new
one is complete.
"""
from __future__ import annotations

import os
import shutil


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
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {path!r}: folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path!r}: folder {parent!r} is not writable")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


class StagedPath:
    """A temporary sibling of `final` (a file, or a folder with `is_dir`) that becomes `final` on `commit()`.
    As a context manager: committed when the block completes, discarded when it raises (Ctrl-C included)."""

    def __init__(self, final: str, is_dir: bool = False):
        self.final = final
        folder, name = os.path.split(os.path.abspath(final))
        self.temporary = os.path.join(folder, f".{name}.partial-{os.getpid()}")
        self.is_dir = is_dir
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
        if exc_type is None:
            self.commit()
        else:
            self.discard()
