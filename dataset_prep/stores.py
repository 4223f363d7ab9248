"""What the data on disk looks like: the three kinds a path can be, and where a store's manifest lives.

- an ImageFolder: SRC/class_name/image.jpg (read by the torchvision loader);
- an FFCV store: OUT.beton, with OUT.beton.manifest.json beside it (dataset_prep.write_beton);
- a TFRecord store: a folder of shards, their DALI .idx files, labels.npy and manifest.json (dataset_prep.write_tfrecord).
"""
from __future__ import annotations

import json
import os

IMAGE_FOLDER, BETON, TFRECORD = "imagefolder", "beton", "tfrecord"
BETON_SUFFIX = ".beton"
TFRECORD_MANIFEST = "manifest.json"


def beton_manifest_path(beton: str) -> str:
    return beton + ".manifest.json"


def tfrecord_manifest_path(folder: str) -> str:
    return os.path.join(folder, TFRECORD_MANIFEST)


def manifest_path(store: str) -> str:
    """The manifest of a store: inside a TFRecord store's folder, beside a .beton."""
    return tfrecord_manifest_path(store) if os.path.isdir(store) else beton_manifest_path(store)


def read_manifest(store: str) -> dict | None:
    """The store's manifest, or None when it has none (or it is not JSON)."""
    try:
        with open(manifest_path(store)) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def path_kind(path: str) -> str:
    """BETON for a .beton path, TFRECORD for a folder holding write_tfrecord's manifest, else IMAGE_FOLDER.
    Nothing else is checked."""
    if path.endswith(BETON_SUFFIX):
        return BETON
    if os.path.isdir(path) and (read_manifest(path) or {}).get("format") == "tfrecord":
        return TFRECORD
    return IMAGE_FOLDER


def manifest_classes(store: str) -> list[str] | None:
    """The store's class names in label order (None without a manifest that lists them)."""
    classes = (read_manifest(store) or {}).get("classes")
    if not isinstance(classes, dict):
        return None
    return [name for name, _ in sorted(classes.items(), key=lambda item: item[1])]
