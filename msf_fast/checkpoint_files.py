"""What a file given as a checkpoint is, told from its first bytes: no torch file at all (missing, a folder, empty,
a dataset, an image, text) or possibly one. Torch-free, so that train_imagenet.py's check of train.resume answers
before torch loads."""
from __future__ import annotations

import codecs
from pathlib import Path

from msf_fast.errors import UserError

# torch.save's zip archive, and its legacy format (before torch 1.6): a pickle (protocol 2) of its magic number
_TORCH_ZIP, _TORCH_LEGACY = b"PK\x03\x04", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_PICKLE = b"\x80"  # a pickle of protocol 2 or later
_IMAGE_MAGIC = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
                b"BM": "a BMP image", b"RIFF": "a RIFF file (WebP image?)"}


class NotACheckpoint(UserError, ValueError):
    """A file given as a checkpoint that is none (or that cannot be read): the message names it and what it seems
    to be. A ValueError too, for callers that catch that."""


def refuse_non_checkpoint(path: str | Path) -> None:
    """NotACheckpoint naming `path` when it is plainly no torch file."""
    problem = not_a_checkpoint_file(Path(path))
    if problem:
        raise NotACheckpoint(f"{Path(path)}: {problem}")


def not_a_checkpoint_file(path: Path) -> str | None:
    """What `path` is when it is plainly no torch file (None when it may be one): missing, a folder, empty, an
    FFCV .beton, a TFRecord shard, an image, a text file."""
    from dataset_prep.stores import looks_like_beton
    if not path.exists():
        return "no such file" if not path.is_symlink() else "a broken link (its target does not exist)"
    if path.is_dir():
        run = path / "checkpoints" / "latest.pt"
        hint = f" (a run folder: give {run})" if run.is_file() else ""
        return f"a folder, not a checkpoint file{hint}"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not head:
        return "an empty file (0 bytes), not a checkpoint"
    if path.suffix == ".beton" or looks_like_beton(str(path)):
        return ("an FFCV .beton (a dataset written by dataset_prep.write_beton), not a checkpoint; checkpoints are "
                ".pt files such as runs/NAME/checkpoints/latest.pt")
    if path.suffix == ".tfrecord" or path.suffix == ".idx":
        return "a TFRecord shard or index (dataset files written by dataset_prep.write_tfrecord), not a checkpoint"
    if head.startswith((_TORCH_ZIP, _TORCH_LEGACY)):
        return None
    if head.startswith(_PICKLE) and len(head) > 1 and 2 <= head[1] <= 5:
        return (f"a Python pickle (protocol {head[1]}), not a torch checkpoint (torch.save writes a zip archive); not "
                "loaded: unpickling runs its code")
    if b"\0" not in head:
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at 4 KiB is no error
        except UnicodeDecodeError:
            text = None
        if text is not None:
            first = next((line.strip() for line in text.splitlines() if line.strip()), "")
            shown = first[:40] + ("..." if len(first) > 40 else "")
            return f"a text file (starting {shown!r}), not a checkpoint"
    for magic, kind in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            return f"{kind}, not a checkpoint"
    return f"not a torch checkpoint (an unrecognised binary file of {path.stat().st_size:,} bytes)"
