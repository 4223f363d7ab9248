"""DataLoader worker processes hand each batch over as file descriptors, sent through a Unix socket that
multiprocessing makes in the temporary folder: $TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX. Linux allows 107 bytes for
such a path. Under a longer $TMPDIR the socket cannot be made: each worker prints a traceback for every batch and the
loader waits forever. So a loader with worker processes refuses such a folder before they start.

More worker processes than cores is said once per process, in one line. `check_worker_processes` does both;
torch-free: `bench loader` calls it before its child processes start."""
import os
import sys
import tempfile

from dataset_prep.wording import plural

SOCKET_PATH_LIMIT = 107  # sun_path's 108 bytes, less the terminating NUL
SOCKET_NAME = "/pymp-XXXXXXXX/listener-XXXXXXXX"  # what multiprocessing appends to the folder
FOLDER_LIMIT = SOCKET_PATH_LIMIT - len(SOCKET_NAME)


class TempFolderTooLong(RuntimeError):
    """The temporary folder's path leaves no room for the worker processes' socket names."""


def check_worker_sockets(workers: int) -> None:
    if workers <= 0:
        return
    folder = tempfile.gettempdir()
    length = len(os.fsencode(folder))
    if length > FOLDER_LIMIT:
        raise TempFolderTooLong(
            f"the temporary folder {folder} ($TMPDIR) is {length} bytes long: the loader's worker processes pass "
            f"batches through sockets made in it, and Linux allows them a folder of at most {FOLDER_LIMIT} bytes "
            "(they would wait forever); set TMPDIR to a shorter folder, e.g. TMPDIR=/tmp")


_NOTED_WORKER_COUNTS: set[int] = set()


def note_workers_beyond_cores(workers: int) -> None:
    """One line on stderr (once per process and count) when there are more worker processes than cores."""
    from pipelines import process_cores

    cores = process_cores()
    if workers > cores and workers not in _NOTED_WORKER_COUNTS:
        _NOTED_WORKER_COUNTS.add(workers)
        print(f"note: {workers} DataLoader workers on {plural(cores, 'core')} available here: they take turns on them, "
              "which is no faster than one per core (the default)", file=sys.stderr, flush=True)


def check_worker_processes(workers: int) -> None:
    """Before a loader starts `workers` processes: TempFolderTooLong, or the note on more workers than cores."""
    check_worker_sockets(workers)
    note_workers_beyond_cores(workers)
