"""Images for fidelity tests: the public-domain photos that scikit-learn and matplotlib ship (both are
dependencies of msf-fast), an ImageFolder of them in the forms ImageNet holds (JPEG, PNG, grayscale, CMYK), and
images of awkward shapes in a raw .beton."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def sample_photos() -> dict[str, np.ndarray]:
    """{name: H x W x 3 uint8}: scikit-learn's china (427 x 640) and flower (427 x 640), matplotlib's
    grace_hopper (600 x 512)."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    photos = {os.path.splitext(os.path.basename(path))[0]: image
              for path, image in zip(samples.filenames, samples.images)}
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        photos["grace_hopper"] = np.asarray(image.convert("RGB"))
    return photos


def write_photo_folder(root) -> dict[str, str]:
    """An ImageFolder (one class per file) of the photos in several sizes and forms; returns {class: file path}.

    - the three sample JPEGs byte for byte (427 x 640, 427 x 640, 600 x 512);
    - china as PNG, shrunk to 333 x 500; flower as a grayscale JPEG at 375 x 500;
    - grace_hopper as a CMYK JPEG; a 180 x 240 crop of china (smaller than the evaluation's 256) and a
      200 x 640 strip of flower (elongated), as JPEGs."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    files = {}

    def save(name, image, extension, **options):
        folder = os.path.join(str(root), name)
        os.makedirs(folder, exist_ok=True)
        files[name] = os.path.join(folder, f"{name}.{extension}")
        image.save(files[name], **options)

    samples = load_sample_images()
    originals = dict(zip(("china", "flower"), samples.filenames))
    originals["grace_hopper"] = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    for name, path in originals.items():
        with open(path, "rb") as source:
            data = source.read()
        os.makedirs(os.path.join(str(root), name), exist_ok=True)
        files[name] = os.path.join(str(root), name, f"{name}.jpg")
        with open(files[name], "wb") as target:
            target.write(data)
    photos = sample_photos()
    china, flower = Image.fromarray(photos["china"]), Image.fromarray(photos["flower"])
    save("china_png", china.resize((500, 333), Image.Resampling.LANCZOS), "png")
    save("flower_gray", flower.resize((500, 375), Image.Resampling.LANCZOS).convert("L"), "jpg", quality=95)
    save("grace_cmyk", Image.fromarray(photos["grace_hopper"]).convert("CMYK"), "jpg", quality=95)
    save("china_small", china.crop((200, 100, 440, 280)), "jpg", quality=95)
    save("flower_strip", flower.crop((0, 120, 640, 320)), "jpg", quality=95)
    return files


def load_rgb(path: str) -> np.ndarray:
    """A file as torchvision's ImageFolder reads it: PIL, converted to RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


ODD_SHAPES = [(1, 1), (4000, 20), (20, 4000), (3, 2), (1, 300)]


def odd_shape_images(seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in ODD_SHAPES]


def write_raw_beton(path: str, images: list[np.ndarray]) -> str:
    """A .beton of raw images (label k = image k) written by FFCV's own writer: ours refuses sides under 8
    pixels, but older stores and other tools' may hold them."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    writer = DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "label": IntField()}, num_workers=1)
    writer.from_indexed_dataset([(image, label) for label, image in enumerate(images)])
    return path
