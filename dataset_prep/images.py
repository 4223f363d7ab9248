"""Decoding source images for the stores: every decodable file becomes an upright 8-bit RGB image.

Upright means EXIF orientation applied; 16-bit and float images are scaled to 8 bits, palette, grayscale, CMYK
and alpha images are converted with PIL's `convert('RGB')` (alpha is dropped, as torchvision's loader does).
Anything that cannot be decoded raises `BadImage` with a short reason; nothing else escapes.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The original orientation values that swap width and height (EXIF tag 0x0112).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# The shortest side a stored image may have. Below it no crop is worth reading: the evaluation's centre crop of a
# 1-pixel side is empty (OpenCV aborts on it), a 256x1 strip left by shrinking a 4000x20 panorama holds one row.
MIN_STORED_SIDE = 8


class BadImage(Exception):
    """A source file that cannot be turned into an image; the message is the reason."""


def _open(path: str) -> Image.Image:
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file (0 bytes)")
        return Image.open(path)
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"too many pixels ({error})") from None
    except OSError as error:
        raise BadImage(f"unreadable ({error.strerror or error})") from None


def _decode(image: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF/metadata it can still decode
            image.load()
    except OSError as error:
        reason = "truncated" if "truncated" in str(error) else "undecodable"
        raise BadImage(f"{reason} ({error})") from None
    except Exception as error:  # PIL raises assorted types (SyntaxError, ValueError, ...) on corrupt data
        raise BadImage(f"undecodable ({type(error).__name__}: {error})") from None


# The first bytes of the formats torchvision's ImageFolder lists (IMAGE_EXTENSIONS), and GIF, which PIL reads too.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a",
               b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7")


def file_problem(path: str) -> str | None:
    """Why `path` is no image at all (None when it may be one), from its first bytes: empty, unreadable, or a
    format PIL does not recognise (a text or HTML file named .jpg). Cheap (one small read; PIL is asked only about
    unusual signatures), so a loader can check every file of a folder before it starts; damage past the header
    (a truncated JPEG) shows only when the image is decoded (`decode_failure`)."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if not head:
        return "empty file (0 bytes)"
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    try:
        with Image.open(path):
            return None
    except Exception as error:
        return decode_failure(path, error)


def decode_failure(path: str, error: Exception) -> str:
    """The reason, in the writers' words, why decoding `path` raised `error`."""
    if isinstance(error, UnidentifiedImageError):
        try:
            empty = os.path.getsize(path) == 0
        except OSError:
            empty = False
        return "empty file (0 bytes)" if empty else "not an image (format not recognised)"
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels ({error})"
    if isinstance(error, OSError):
        if "truncated" in str(error):
            return f"truncated ({error})"
        if error.strerror:  # the file system's error (errno), not the decoder's
            return f"unreadable ({error.strerror})"
    return f"undecodable ({type(error).__name__}: {error})"


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # an unreadable EXIF block leaves the image as stored
        return 1


def check_image(path: str) -> tuple[int, int]:
    """Decode the whole file and return its upright (width, height); raise `BadImage` if it does not decode.

    JPEGs are decoded at 1/8 scale: the entropy-coded data is still read to the end (so truncation is caught)
    while most of the decoding work is skipped.
    """
    with _open(path) as image:
        width, height = image.size
        if image.format == "JPEG":
            image.draft(image.mode, (1, 1))
        _decode(image)
        if exif_orientation(image) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return width, height


def fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size after shrinking so that the longer side is at most `max_side` (0: unchanged); FFCV's rounding."""
    ratio = max_side / max(width, height) if max_side else 1.0
    if ratio >= 1:
        return width, height
    return max(1, int(ratio * width)), max(1, int(ratio * height))


def unusable_size(width: int, height: int, max_side: int) -> str | None:
    """Why an upright `width` x `height` image cannot be stored (None when it can): after shrinking to `max_side`
    (the store's --max-resolution, 0: kept) a side is below MIN_STORED_SIDE. Both writers skip such images."""
    stored = fitted_size(width, height, max_side)
    if min(stored) >= MIN_STORED_SIDE:
        return None
    shrunk = f", {stored[0]}x{stored[1]} after --max-resolution {max_side}" if stored != (width, height) else ""
    hint = ("; --max-resolution 0 would keep it whole" if shrunk and min(width, height) >= MIN_STORED_SIDE else "")
    return (f"{width}x{height} pixels{shrunk}: a side under {MIN_STORED_SIDE} pixels, too small for any crop"
            f"{hint}")


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied, from the header alone."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _TRANSPOSING_ORIENTATIONS else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode in _SIXTEEN_BIT_MODES or pixels.max() > 255:
            pixels = pixels / 257.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.max() <= 1.0:
            pixels = pixels * 255.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    try:
        return image.convert("RGB")
    except Exception as error:
        raise BadImage(f"unsupported colour mode {image.mode} ({error})") from None


def load_rgb(path: str, max_side: int = 0) -> Image.Image:
    """The upright RGB image; raise `BadImage` if the file does not decode.

    With `max_side`, a JPEG much larger than needed is decoded at a reduced DCT scale (never below twice the
    final size, so the final resize still averages over enough pixels); the caller does the final resize.
    """
    with _open(path) as image:
        if max_side and image.format == "JPEG":
            width, height = fitted_size(*image.size, max_side)
            image.draft(image.mode, (2 * width, 2 * height))
        _decode(image)
        orientation = exif_orientation(image)
        if orientation != 1:
            try:
                image = ImageOps.exif_transpose(image)
            except Exception as error:
                raise BadImage(f"cannot apply EXIF orientation {orientation} ({error})") from None
        rgb = to_rgb(image)
        if rgb is image:
            rgb = image.copy()  # closing the file releases the decoded pixels
    return rgb


def stored_jpeg(path: str, max_side: int, quality: int) -> bytes:
    """JPEG bytes for a store: the file itself when it is already an upright RGB JPEG within `max_side`
    (lossless and fast; still fully decoded once to prove it is intact), else the re-encoded upright RGB image.
    BadImage when it does not decode, or is too small once shrunk (`unusable_size`)."""
    with _open(path) as image:
        problem = unusable_size(*upright_size(image), max_side)
        if problem:
            raise BadImage(problem)
        keep_as_is = (image.format == "JPEG" and image.mode == "RGB" and exif_orientation(image) == 1
                      and fitted_size(*image.size, max_side) == image.size)
    if keep_as_is:
        check_image(path)
        with open(path, "rb") as file:
            return file.read()
    return encode_jpeg(shrink(load_rgb(path, max_side), max_side), quality)


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    size = fitted_size(*image.size, max_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
