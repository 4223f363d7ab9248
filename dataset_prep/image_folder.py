"""List an ImageFolder (`class_name/.../image.ext`) exactly as torchvision's `ImageFolder` does.

Class indices are the sorted class-folder names and samples come in torchvision's order, so index i of a store
written from the full listing is sample i of `torchvision.datasets.ImageFolder(src)` (minus skipped files).
This module does not import torchvision: the writers start fast and work without it.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from dataset_prep.wording import plural

# torchvision.datasets.folder.IMG_EXTENSIONS (a test checks that they stay equal)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class SourceError(Exception):
    """The source folder cannot be converted at all (missing, not a folder, no class folders, no images)."""


@dataclass
class ImageFolderListing:
    root: str
    classes: list[str]
    samples: list[tuple[str, int]]  # (path, class index)
    ignored_files: list[str] = field(default_factory=list)  # files without an image extension

    @property
    def class_to_index(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def counts_per_class(self, samples=None) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for _, label in self.samples if samples is None else samples:
            counts[self.classes[label]] += 1
        return counts


def class_folders(root: str) -> list[str]:
    """The class names of an ImageFolder: its sub-folders, sorted (torchvision's order, so its labels)."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def is_image_file(file_name: str) -> bool:
    """Whether a file counts as an image, for the writers' listing and the trainer's start-up check alike."""
    return file_name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(root: str) -> ImageFolderListing:
    """The listing, or a SourceError naming what `root` is instead of an ImageFolder. A class folder without an
    image file (empty, or holding only other files) is refused, as torchvision's ImageFolder (and so the trainer)
    refuses it: a store with a class it could never have read is not written."""
    from dataset_prep.stores import describe_path
    if not os.path.isdir(root):
        raise SourceError(f"source {root!r} is not an ImageFolder (SRC_DIR/class_name/image.jpg): "
                          f"{_source_found(root, describe_path(root))}")
    classes = class_folders(root)
    if not classes:
        found = _source_found(root, describe_path(root))
        if "store" in found:
            raise SourceError(f"source {root!r} is not an ImageFolder (SRC_DIR/class_name/image.jpg): {found}")
        raise SourceError(f"source folder {root!r} has no class folders (expected SRC_DIR/class_name/image.jpg; "
                          f"{'it is empty' if not os.listdir(root) else 'it holds only files'})")
    samples, ignored, empty = [], [], {}
    for label, name in enumerate(classes):
        found = len(samples)
        others = 0
        for folder, _, file_names in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for file_name in sorted(file_names):
                path = os.path.join(folder, file_name)
                if is_image_file(file_name):
                    samples.append((path, label))
                else:
                    ignored.append(path)
                    others += 1
        if len(samples) == found:
            empty[name] = held_instead(others)
    if not samples:
        raise SourceError(f"source folder {root!r} has {plural(len(classes), 'class folder')} but no image files "
                          f"({', '.join(IMAGE_EXTENSIONS)})")
    if empty:
        raise SourceError(f"source folder {root!r}: {without_images_message(empty)}")
    return ImageFolderListing(root, classes, samples, ignored)


def without_images_message(empty: dict[str, str]) -> str:
    listed = ", ".join(f"{name} ({what})" for name, what in list(empty.items())[:5])
    more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
    return (f"{len(empty)} class folder{'s' if len(empty) > 1 else ''} without image files: {listed}{more}; "
            "torchvision's ImageFolder (the trainer's loader) refuses them too: remove them or add images")


def classes_without_images(root: str) -> dict[str, str]:
    """The class folders of `root` holding no image file, with what they hold instead ("empty", "3 other files").
    Cheap on a good folder: each class folder is read only up to its first image (a start-up check, before the
    loader lists every file)."""
    empty = {}
    for name in class_folders(root):
        others = 0
        for _, _, file_names in os.walk(os.path.join(root, name), followlinks=True):
            if any(map(is_image_file, file_names)):
                break
            others += len(file_names)
        else:
            empty[name] = held_instead(others)
    return empty


def held_instead(other_files: int) -> str:
    """What a class folder without images holds: "empty", "1 other file", "3 other files"."""
    return f"{other_files} other file{'s' if other_files != 1 else ''}" if other_files else "empty"


def _source_found(root: str, found: str) -> str:
    """What describe_path found, in words that fit a source: converted data given as the source is named as such."""
    from dataset_prep.stores import looks_like_beton
    converted = "already converted; give the ImageFolder it was written from"
    if os.path.isfile(root) and (root.endswith(".beton") or looks_like_beton(root)):
        return f"an FFCV .beton store ({converted})"
    if os.path.isfile(root) and root.lower().endswith(".tfrecord"):
        return f"a TFRecord shard ({converted})"
    if found.startswith("TFRecord shards") or os.path.isfile(os.path.join(root, "manifest.json")):
        return f"a TFRecord store ({converted})"
    return found


def random_subset(samples: list, limit: int, seed: int) -> list:
    """`limit` samples drawn uniformly without replacement (so spread over the classes), in listing order."""
    if limit <= 0 or limit >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen]
