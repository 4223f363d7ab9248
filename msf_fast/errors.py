"""The one exception the commands report as a single line (exit code 2): a mistake in what the user asked for.

Running out of memory is one line too (`out_of_memory`, exit code 1); anything else (another torch or CUDA
RuntimeError, a bug) keeps its traceback.
"""
import errno
import re


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


def out_of_memory(error: BaseException) -> str | None:
    """What an allocation that failed asked for, in a few words ("out of memory on the GPU: 2.00 GiB asked, 1.00 GiB
    free of 79.15 GiB"), or None for any other error. torch raises torch.OutOfMemoryError on CUDA and a RuntimeError
    from its CPU allocator; a process the kernel kills for memory raises nothing."""
    text = str(error)
    if type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text:
        asked = re.search(r"Tried to allocate ([0-9.]+ [KMGT]?i?B)", text)
        free = re.search(r"total capacity of ([0-9.]+ [KMGT]?i?B) of which ([0-9.]+ [KMGT]?i?B) is free", text)
        details = [f"{asked.group(1)} asked"] if asked else []
        details += [f"{free.group(2)} free of {free.group(1)}"] if free else []
        return "out of memory on the GPU" + (f": {', '.join(details)}" if details else "")
    cpu = re.search(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate ([0-9]+) bytes", text)
    if isinstance(error, RuntimeError) and cpu:
        return f"out of memory on the CPU: {int(cpu.group(1)) / 2**30:,.1f} GiB asked at once"
    return None


def out_of_memory_line(error: BaseException, args) -> str | None:
    """out_of_memory's words and the command's options that size its allocations (`--batch-size`, `--resolution`,
    `--bank-size`, `--dim`, those it has), to lower; None for any other error."""
    shortage = out_of_memory(error)
    if shortage is None:
        return None
    sizes = [f"--{name.replace('_', '-')} {getattr(args, name)}"
             for name in ("batch_size", "resolution", "bank_size", "dim") if getattr(args, name, None) is not None]
    if not sizes:
        return shortage
    which = {1: "it", 2: "either"}.get(len(sizes), "one of them")
    return f"{shortage}, at {', '.join(sizes[:-1]) + ' and ' if len(sizes) > 1 else ''}{sizes[-1]}: lower {which}"


def training_out_of_memory(error: BaseException, cfg) -> str | None:
    """out_of_memory's words and the training settings that size its memory, to lower in a new run (a resume keeps
    the batch, the resolution schedule and the bank); None for any other error."""
    shortage = out_of_memory(error)
    if shortage is None:
        return None
    return (f"{shortage}, at train.batch_size={cfg.train.batch_size} per process, data.resolution="
            f"{cfg.data.resolution} and msf.bank_size={cfg.msf.bank_size}: lower one of them in a new run")
