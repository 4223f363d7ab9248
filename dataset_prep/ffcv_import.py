"""Importing FFCV, an optional dependency: one install hint, and torch's thread count left alone.

`import ffcv` sets torch's CPU threads to 1; every caller here wants to keep its own count.
"""
from __future__ import annotations

FFCV_INSTALL = "apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev && pip install -e '.[ffcv]'"


class FFCVUnavailable(ImportError):
    pass


def import_ffcv() -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        import ffcv  # noqa: F401
        from ffcv.loader import Loader  # noqa: F401
    except ImportError as error:
        raise FFCVUnavailable(f"FFCV is not installed ({error}): {FFCV_INSTALL}") from None
    finally:
        torch.set_num_threads(threads)
