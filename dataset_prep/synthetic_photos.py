"""ImageNet-like synthetic photos for conversion and loader benchmarks.

Colour 1/f noise (the amplitude spectrum of natural images) at 500x375 or 375x500, saved as JPEG quality 90:
files of about 100 KB like ImageNet's training JPEGs, so decode, resize and encode cost what they cost there.
"""
from __future__ import annotations


PROG = "python -m dataset_prep.synthetic_photos"  # every message starts with it, as the usage line does

if __name__ == "__main__":  # before the imports below, which take seconds: Ctrl-C then is one line
    from dataset_prep.command_start import start_command
    start_command(PROG)

import json
import os
import sys

import numpy as np
from PIL import Image

from dataset_prep.argument_parser import OneLineParser, non_negative_int, positive_int
from dataset_prep.progress import progress_bar
from dataset_prep.staging import OutputError, StagedPath, nearest_existing, sigterm_as_ctrl_c, stop_exit_code

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


def written_settings(root: str) -> dict | None:
    """The settings of the photos in `root` (None for a new or empty folder). OutputError for a folder that is not
    one of ours, or a path that cannot be one: checked before any work."""
    if not root:
        raise OutputError("the folder is empty: give a folder for the photos")
    marker = os.path.join(root, MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker) as file:
                return json.load(file)
        except ValueError:  # cut short by a full disk: the photos beside it are ours, to be written again
            return {}
    if os.path.isdir(root) and os.listdir(root) or os.path.lexists(root) and not os.path.isdir(root):
        raise OutputError(f"{root!r} exists and is no folder of synthetic photos (it has no {MARKER}): give a new "
                          "folder")
    existing = nearest_existing(os.path.dirname(os.path.abspath(root)))
    if not os.path.isdir(existing):
        raise OutputError(f"cannot write {root!r}: {existing!r} is a file, not a folder")
    return None


def generate_photo_folder(root: str, classes: int = 10, per_class: int = 50, seed: int = 0,
                          progress: bool = True) -> str:
    """`root/class_XX/NNNNN.jpg`, deterministic; reuses a complete earlier folder with the same settings. Written
    beside `root` and renamed when complete: an interrupted run leaves no partial folder, and a folder of other
    settings is replaced whole (another run's extra classes stayed in it). A folder that is not ours is refused."""
    settings = {"classes": classes, "per_class": per_class, "seed": seed}
    if written_settings(root) == settings:
        return root
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
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
    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument("root", help="folder written (an ImageFolder: root/class_XX/NNNNN.jpg)")
    parser.add_argument("--classes", type=positive_int, default=10, help="classes (default 10)")
    parser.add_argument("--per-class", type=positive_int, default=50, help="photos per class (default 50)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the photos' seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    settings = {"classes": args.classes, "per_class": args.per_class, "seed": args.seed}
    try:
        reused = written_settings(args.root) == settings
        if not reused:
            with sigterm_as_ctrl_c():
                generate_photo_folder(args.root, args.classes, args.per_class, args.seed,
                                      progress=not args.no_progress)
    except OSError as error:  # OutputError included; a full disk keeps the folder that was there
        message = str(error) if isinstance(error, OutputError) else f"cannot write {args.root!r}: {error.strerror}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:  # Ctrl-C or SIGTERM: the staged folder is gone
        print(f"{PROG}: interrupted; {args.root} is as it was", file=sys.stderr)
        return stop_exit_code(interruption)
    photos = f"{args.classes * args.per_class:,} photo{'s' * (args.classes * args.per_class != 1)} of " \
             f"{args.classes} class{'es' * (args.classes != 1)}"
    print(f"{PROG}: {args.root} already holds {photos} (seed {args.seed})" if reused
          else f"{PROG}: {photos} in {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
