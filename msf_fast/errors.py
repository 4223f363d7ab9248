"""The one exception the commands report as a single line (exit code 2): a mistake in what the user asked for.

Anything else (a torch or CUDA RuntimeError, a bug) keeps its traceback.
"""
import errno


class UserError(Exception):
    """A value, path or file the user gave cannot be used; the message names it and says why."""


class UsageError(ValueError):
    """Options that cannot go together or a value out of range, found after parsing: told as the parser tells its
    own mistakes (one line with the command's usage hint, exit code 2). Any other ValueError is a bug and keeps its
    traceback."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException) -> bool:
    """A write that failed for lack of space: the OS's ENOSPC/EDQUOT, or torch.save's RuntimeError for it (the zip
    writer's "unexpected pos")."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    return isinstance(error, RuntimeError) and ("unexpected pos" in str(error) or "failed writing file" in str(error))
