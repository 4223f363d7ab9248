"""What the data on disk looks like: the three kinds a path can be, and where a store's manifest lives.

- an ImageFolder: SRC/class_name/image.jpg (read by the torchvision loader);
- an FFCV store: OUT.beton, with OUT.beton.manifest.json beside it (dataset_prep.write_beton);
- a TFRecord store: a folder of shards, their DALI .idx files, labels.npy and manifest.json (dataset_prep.write_tfrecord).
"""
from __future__ import annotations

import json
import os

import numpy as np

from dataset_prep.image_folder import class_folders

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


def class_names(path: str) -> list[str] | None:
    """The class names in label order as the loaders see them: an ImageFolder's class folders (sorted, as
    torchvision's ImageFolder lists them), a store's manifest (None without one)."""
    if path_kind(path) != IMAGE_FOLDER:
        return manifest_classes(path)
    return class_folders(path)


def images_source(path: str) -> str | None:
    """The folder whose images `path` holds, resolved: an ImageFolder itself, a store the source folder its
    manifest names (None for a store without one)."""
    if path_kind(path) == IMAGE_FOLDER:
        return os.path.realpath(path)
    source = (read_manifest(path) or {}).get("source")
    return os.path.realpath(source) if isinstance(source, str) and source else None


def written_from(path: str) -> str | None:
    """The folder a store was written from, resolved (None for an ImageFolder, or a store without a manifest): a
    folder made inside it would be listed as a class of images, though the store is what is read."""
    return None if path_kind(path) == IMAGE_FOLDER else images_source(path)


def same_images(first: str, second: str) -> str | None:
    """How `first` and `second` hold the same images, in words for a message (None when, as far as the paths and
    the stores' manifests tell, they do not): one path, a store and the folder it was written from, or two stores
    written from one folder (a --limit store holds some of its images: the same for a held-out set)."""
    if os.path.realpath(first) == os.path.realpath(second):
        return "the same data"
    source = images_source(first)
    if source is None or source != images_source(second):
        return None
    if path_kind(first) == IMAGE_FOLDER or path_kind(second) == IMAGE_FOLDER:
        store = second if path_kind(first) == IMAGE_FOLDER else first
        return f"the same images ({store} was written from {source})"
    return f"the same images (both stores were written from {source})"


def within(path: str, folder: str) -> bool:
    """`path` is `folder` or lies under it, links resolved (`path` need not exist yet): an output written there would
    be listed as part of the data in `folder`."""
    inner, outer = os.path.realpath(path), os.path.realpath(folder)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def store_split(path: str) -> str | None:
    """The split a store was written as ("train", or "val" with the writers' --val), from its manifest."""
    return None if path_kind(path) == IMAGE_FOLDER else (read_manifest(path) or {}).get("split")


# --- checks: what is wrong with a path, in one line that says how to fix it --------------------------------
# FFCV 1.0.2's file layout (ffcv/types.py): a header, field descriptors, per-sample metadata, the samples' pages,
# then the allocation table (sample_id, ptr, size per stored field value) from `alloc_table_ptr` to the end.
_BETON_HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
                          ("alloc_table_ptr", "<u8")])
_BETON_ALLOCATION = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
_BETON_VERSION = 2
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def looks_like_beton(path: str) -> bool:
    """A file that starts with an FFCV header (version 2), whatever its name."""
    try:
        header = np.fromfile(path, dtype=_BETON_HEADER, count=1)
    except (OSError, ValueError):
        return False
    return len(header) == 1 and int(header["version"][0]) == _BETON_VERSION and int(header["num_fields"][0]) > 0


def beton_problem(path: str) -> str | None:
    """Why `path` is not a complete .beton (None when it is): a truncated or foreign file is found before training."""
    rewrite = "write it again with python -m dataset_prep.write_beton SRC_DIR OUT.beton"
    try:
        size = os.path.getsize(path)
        header = np.fromfile(path, dtype=_BETON_HEADER, count=1)
    except OSError as error:
        return f"cannot read it ({error.strerror or error})"
    if len(header) == 0 or int(header["version"][0]) != _BETON_VERSION:
        return f"not an FFCV .beton (no version-{_BETON_VERSION} FFCV header); {rewrite}"
    table_start, samples = int(header["alloc_table_ptr"][0]), int(header["num_samples"][0])
    table_bytes = size - table_start
    if table_start == 0 or table_bytes < 0 or table_bytes % _BETON_ALLOCATION.itemsize:
        return f"truncated ({size:,} bytes; its allocation table is cut off); {rewrite}"
    table = np.fromfile(path, dtype=_BETON_ALLOCATION, offset=table_start)
    if samples and (len(table) == 0 or int((table["ptr"] + table["size"]).max()) > table_start
                    or len(np.unique(table["sample_id"])) != samples):
        return f"truncated or damaged (its allocation table does not cover its {samples:,} samples); {rewrite}"
    return None


def tfrecord_problem(folder: str) -> str | None:
    """Why `folder` is not a complete TFRecord store (None when it is): missing or mismatched shards, .idx files
    or labels.npy are found before training."""
    rewrite = "write the store again with python -m dataset_prep.write_tfrecord SRC_DIR OUT_DIR"
    manifest = read_manifest(folder)
    if not manifest or manifest.get("format") != "tfrecord":
        return f"no TFRecord manifest ({TFRECORD_MANIFEST}); {rewrite}"
    for shard in manifest.get("shards", []):
        record_path = os.path.join(folder, shard["tfrecord"])
        index_path = os.path.join(folder, shard["index"])
        if not os.path.isfile(record_path):
            return f"shard {shard['tfrecord']} is missing; {rewrite}"
        if not os.path.isfile(index_path):
            return f"shard {shard['tfrecord']} has no index {shard['index']} (DALI reads through it); {rewrite}"
        with open(index_path) as handle:
            lines = handle.read().split()
        entries = np.asarray(lines, dtype=np.int64).reshape(-1, 2) if len(lines) % 2 == 0 else None
        shard_size = os.path.getsize(record_path)
        if entries is None or len(entries) != shard["records"] or (
                len(entries) and int(entries[-1].sum()) != shard_size):
            return (f"index {shard['index']} does not match shard {shard['tfrecord']} ({shard['records']} records, "
                    f"{shard_size:,} bytes); {rewrite}")
    labels = manifest.get("labels")
    if labels and not os.path.isfile(os.path.join(folder, labels)):
        return f"{labels} is missing; {rewrite}"
    return None


def describe_path(path: str) -> str:
    """What `path` is, for an error that expected an ImageFolder, a .beton or a TFRecord store."""
    if not os.path.lexists(path):
        return "it does not exist"
    if os.path.isfile(path):
        lower = path.lower()
        if lower.endswith(".tfrecord"):
            return ("a single TFRecord shard: give the store's folder (the one holding manifest.json, written by "
                    "python -m dataset_prep.write_tfrecord)")
        if looks_like_beton(path):
            return f"an FFCV store without the .beton suffix: rename it to {path}.beton"
        if lower.endswith(_IMAGE_SUFFIXES):
            return "an image file: give the ImageFolder that holds class_name/image.jpg"
        return "a file, neither a .beton nor a folder"
    if not os.path.isdir(path):
        return "neither a file nor a folder"
    try:
        entries = list(os.scandir(path))
    except OSError as error:
        return f"a folder that cannot be read ({error.strerror or error})"
    if any(entry.name.endswith(".tfrecord") for entry in entries):
        return f"TFRecord shards without the writer's {TFRECORD_MANIFEST}: write the store with write_tfrecord"
    if not entries:
        return "an empty folder"
    if not any(entry.is_dir() for entry in entries):
        return "a folder without class folders (an ImageFolder holds class_name/image.jpg)"
    return "an ImageFolder"
