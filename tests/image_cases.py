"""Source folders for the store tests: clean photos-like images, and every kind of awkward file."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth random colour gradients (JPEG-friendly, so a resized and re-encoded copy keeps a high PSNR)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        a, b, c, d = rng.uniform(-1, 1, 4)
        channels.append(128 + 60 * np.sin(3 * a * x + 3 * b * y + c) + 40 * np.cos(2 * d * x * y))
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def save(path: str, image: Image.Image, **options) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **options)
    return path


def make_clean_source(root: str, classes=("ant", "bee", "cat"), per_class=4, size=(80, 60), seed=0) -> str:
    """Same-size RGB JPEGs (quality 95), one of them in a nested folder, plus a non-image file to ignore."""
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            sub = "nested" if i == per_class - 1 else ""
            save(os.path.join(root, name, sub, f"{name}_{i}.JPEG"),
                 Image.fromarray(smooth_image(rng, *size)), quality=95)
    with open(os.path.join(root, classes[0], "notes.txt"), "w") as file:
        file.write("not an image")
    return root


def jpeg_bytes(array: np.ndarray, quality=95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_messy_source(root: str, seed=0) -> dict:
    """One class folder per kind of file. Returns {'bad': {relpath: reason word}, 'good': {relpath: expected}}
    where `expected` is the upright RGB array the stores must hold."""
    rng = np.random.default_rng(seed)
    good, bad = {}, {}

    def path(name):
        return os.path.join(root, name.split("/")[0], name.split("/")[1])

    base = smooth_image(rng, 48, 32)
    save(path("plain/rgb.jpg"), Image.fromarray(base), quality=95)
    good["plain/rgb.jpg"] = base

    # bad files
    os.makedirs(os.path.join(root, "bad"), exist_ok=True)
    open(path("bad/empty.jpg"), "wb").close()
    bad["bad/empty.jpg"] = "empty"
    noisy = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = jpeg_bytes(noisy)
    with open(path("bad/truncated.jpg"), "wb") as file:
        file.write(data[: len(data) * 6 // 10])
    bad["bad/truncated.jpg"] = "truncated"
    with open(path("bad/text.png"), "w") as file:
        file.write("this is a text file with an image extension\n" * 10)
    bad["bad/text.png"] = "not an image"

    # decodable oddities
    rgba = np.dstack([base, rng.integers(0, 256, base.shape[:2], dtype=np.uint8)])
    save(path("odd/rgba.png"), Image.fromarray(rgba, "RGBA"))
    good["odd/rgba.png"] = base
    gray = base.mean(-1).astype(np.uint8)
    save(path("odd/gray.jpg"), Image.fromarray(gray, "L"), quality=95)
    good["odd/gray.jpg"] = np.repeat(gray[..., None], 3, -1)
    cmyk = Image.fromarray(base).convert("CMYK")
    save(path("odd/cmyk.jpg"), cmyk, quality=95)
    good["odd/cmyk.jpg"] = np.asarray(cmyk.convert("RGB"))
    sixteen = (gray.astype(np.uint16) * 257)
    image16 = Image.fromarray(sixteen)
    assert image16.mode == "I;16"
    save(path("odd/gray16.png"), image16)
    good["odd/gray16.png"] = np.repeat(gray[..., None], 3, -1)
    palette = Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save(path("odd/palette.png"), palette)
    good["odd/palette.png"] = np.asarray(palette.convert("RGB"))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored sideways: the upright image is the stored one turned 90 degrees clockwise
    save(path("odd/rotated.jpg"), Image.fromarray(base), quality=95, exif=exif.tobytes())
    good["odd/rotated.jpg"] = np.rot90(base, k=-1)
    return {"good": good, "bad": bad}


def write_image_folder(root, images: dict[str, list[np.ndarray]]) -> str:
    """An ImageFolder of lossless PNGs from {class name: [HxWx3 uint8 arrays]}."""
    for name, arrays in images.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(os.path.join(root, name, f"{i}.png"))
    return str(root)


def coordinate_images(count: int = 32, size: int = 128) -> dict[str, list[np.ndarray]]:
    """One image per class (labels identify samples): red encodes x, green y, blue the sample."""
    y, x = np.mgrid[0:size, 0:size] * (256 // size)
    return {f"s{i:02d}": [np.stack([x, y, np.full_like(x, (i * 8) % 256)], -1).astype(np.uint8)]
            for i in range(count)}


def flat_colour_images(classes: int = 4, per_class: int = 8, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Flat, clearly coloured images: crops keep the colour exactly, photometric ops change it."""
    rng = np.random.default_rng(seed)
    images = {}
    for c in range(classes):
        arrays = []
        for _ in range(per_class):
            colour = rng.permutation([200, 60, int(rng.integers(90, 170))])
            arrays.append(np.full((40, 56, 3), colour, np.uint8))
        images[f"c{c}"] = arrays
    return images
