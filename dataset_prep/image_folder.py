"""List an ImageFolder (`class_name/.../image.ext`) exactly as torchvision's `ImageFolder` does.

Class indices are the sorted class-folder names and samples come in torchvision's order, so index i of a store
written from the full listing is sample i of `torchvision.datasets.ImageFolder(src)` (minus skipped files).
This module does not import torchvision: the writers start fast and work without it.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

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


def list_image_folder(root: str) -> ImageFolderListing:
    if not os.path.exists(root):
        raise SourceError(f"source folder {root!r} does not exist")
    if not os.path.isdir(root):
        raise SourceError(f"source {root!r} is not a folder (expected an ImageFolder: class_name/image.jpg)")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise SourceError(f"source folder {root!r} has no class folders (expected class_name/image.jpg)")
    samples, ignored = [], []
    for label, name in enumerate(classes):
        for folder, _, file_names in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for file_name in sorted(file_names):
                path = os.path.join(folder, file_name)
                if file_name.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((path, label))
                else:
                    ignored.append(path)
    if not samples:
        raise SourceError(f"source folder {root!r} has {len(classes)} class folders but no image files "
                          f"({', '.join(IMAGE_EXTENSIONS)})")
    return ImageFolderListing(root, classes, samples, ignored)


def random_subset(samples: list, limit: int, seed: int) -> list:
    """`limit` samples drawn uniformly without replacement (so spread over the classes), in listing order."""
    if limit <= 0 or limit >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen]
