"""ImageNet-like synthetic photos for conversion and loader benchmarks.

Colour 1/f noise (the amplitude spectrum of natural images) at 500x375 or 375x500, saved as JPEG quality 90:
files of about 100 KB like ImageNet's training JPEGs, so decode, resize and encode cost what they cost there.
"""
from __future__ import annotations


if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.argument_parser import one_line_on_ctrl_c
    one_line_on_ctrl_c("synthetic_photos")

import json
import os
import sys

import numpy as np
from PIL import Image

from dataset_prep.argument_parser import OneLineParser, non_negative_int, positive_int
from dataset_prep.progress import progress_bar
from dataset_prep.staging import OutputError, StagedPath, nearest_existing

MARKER = "photos.json"


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        channels.append(field)
    luminance = channels[0]
    mixed = np.stack([luminance + 0.4 * channels[1], luminance, luminance + 0.4 * channels[2]], -1)
    mixed = (mixed - mixed.mean()) / (mixed.std() + 1e-9)
    return np.clip(128 + 45 * mixed, 0, 255).astype(np.uint8)


def generate_photo_folder(root: str, classes: int = 10, per_class: int = 50, seed: int = 0,
                          progress: bool = True) -> str:
    """`root/class_XX/NNNNN.jpg`, deterministic; reuses a complete earlier folder with the same settings. Written
    beside `root` and renamed when complete: an interrupted run leaves no partial folder, and a folder of other
    settings is replaced whole (another run's extra classes stayed in it). A folder that is not ours is refused."""
    settings = {"classes": classes, "per_class": per_class, "seed": seed}
    marker = os.path.join(root, MARKER)
    if os.path.exists(marker):
        with open(marker) as file:
            if json.load(file) == settings:
                return root
    elif os.path.isdir(root) and os.listdir(root) or os.path.lexists(root) and not os.path.isdir(root):
        raise OutputError(f"{root!r} exists and is no folder of synthetic photos (it has no {MARKER}): give a new "
                          "folder")
    parent = os.path.dirname(os.path.abspath(root))
    if not os.path.isdir(nearest_existing(parent)):
        raise OutputError(f"cannot write {root!r}: {nearest_existing(parent)!r} is a file, not a folder")
    os.makedirs(parent, exist_ok=True)
    rng = np.random.default_rng(seed)
    with StagedPath(root, is_dir=True) as staged, progress_bar(classes * per_class, "synthetic photos",
                                                               progress) as bar:
        for label in range(classes):
            folder = os.path.join(staged.temporary, f"class_{label:02d}")
            os.mkdir(folder)
            for index in range(per_class):
                width, height = (500, 375) if rng.random() < 0.75 else (375, 500)
                Image.fromarray(photo(rng, width, height)).save(os.path.join(folder, f"{index:05d}.jpg"),
                                                                quality=90)
                bar.update()
        with open(os.path.join(staged.temporary, MARKER), "w") as file:
            json.dump(settings, file)
    return root


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m dataset_prep.synthetic_photos", description=__doc__)
    parser.add_argument("root", help="folder written (an ImageFolder: root/class_XX/NNNNN.jpg)")
    parser.add_argument("--classes", type=positive_int, default=10, help="classes (default 10)")
    parser.add_argument("--per-class", type=positive_int, default=50, help="photos per class (default 50)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the photos' seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        generate_photo_folder(args.root, args.classes, args.per_class, args.seed, progress=not args.no_progress)
    except OSError as error:  # OutputError included; a full disk keeps the folder that was there
        message = str(error) if isinstance(error, OutputError) else f"cannot write {args.root!r}: {error.strerror}"
        print(f"synthetic_photos: error: {message}", file=sys.stderr)
        return 2
    print(f"synthetic_photos: {args.classes * args.per_class:,} photos of {args.classes} classes in {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
