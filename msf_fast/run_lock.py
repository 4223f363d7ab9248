"""One run per folder: a training run holds an OS lock on RUN/.lock while it can write there.

The lock is flock(2) on an open file, so a process that dies in any way (SIGKILL, a crash, a lost node) releases it
at once; the file keeps the holder's PID, host and start time for the message a second run gets. The same process
may take the lock of a folder again (a script that resumes a run it trained): its earlier hold is closed first. A run
refused at start discards the lock: the .lock file and the folders it made go, so it leaves no trace.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from dataset_prep.staging import LockHeld, hold_lock_file
from msf_fast.errors import UserError

LOCK_NAME = ".lock"
_held: dict[str, "RunFolderLock"] = {}  # this process's locks, by folder


class FolderInUse(UserError):
    """Another process holds the run folder."""


class RunFolderLock:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._file = None
        self.made: Path | None = None  # the outermost folder acquire created
        self.made_file = False  # whether acquire created .lock

    def acquire(self) -> "RunFolderLock":
        """Create the folder if needed and lock it; UserError (one line) when it cannot be created, FolderInUse
        naming the holder when another process runs there."""
        key = os.path.realpath(self.folder)
        if key in _held:
            _held.pop(key).release()
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            handle = hold_lock_file(str(self.path), self._open, holder)
        except LockHeld as held:
            raise FolderInUse(f"logging.folder={self.folder} is in use by another run ({describe_holder(str(held))}): "
                              "wait for it to end, or choose another --logging.folder") from None
        self._file = handle
        _held[key] = self
        return self

    def _open(self):
        missing = [path for path in (self.folder, *self.folder.parents) if not path.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.made = self.made or (missing[-1] if missing else None)
            self.made_file = self.made_file or not self.path.exists()
            return open(self.path, "a+")
        except OSError as error:
            raise UserError(f"logging.folder={self.folder}: cannot be created or written "
                            f"({error.strerror or error})") from None

    def discard(self) -> None:
        """Release, and remove what acquire created: the .lock file (while still holding it) and the folders,
        when empty. For a run refused at start."""
        if self._file is not None and self.made_file:
            try:
                self.path.unlink()
            except OSError:
                pass
        self.release()
        if self.made is None:
            return
        folder = self.folder
        while True:
            try:
                folder.rmdir()
            except OSError:  # not empty (the user's files, or another run's), or gone
                return
            if folder == self.made:
                return
            folder = folder.parent

    def release(self) -> None:
        if self._file is None:
            return
        _held.pop(os.path.realpath(self.folder), None)
        self._file.close()  # closing the descriptor drops the flock
        self._file = None


def describe_holder(content: str) -> str:
    try:
        holder = json.loads(content)
        return f"PID {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "its PID unknown"
