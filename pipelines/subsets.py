"""Labelled subsets of a dataset: per-class balanced and seeded, or read from a user's list file.

A subset is a sorted array of sample indices into the dataset's own order (an ImageFolder's sorted listing, a
store's record order). A list file names one sample per line, either by index or (ImageFolders) by file name,
e.g. the 1% / 10% ImageNet lists of SimCLR (`n01440764_10026.JPEG`); blank lines and `#` comments are ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipelines import data_format


def dataset_labels(root: str) -> np.ndarray:
    """The label of every sample, in the dataset's order, without decoding images."""
    backend = data_format(root)
    if backend == "ffcv":
        from dataset_prep.ffcv_import import import_ffcv
        import_ffcv()
        from ffcv.reader import Reader
        return np.asarray(Reader(root).metadata["f1"], dtype=np.int64)
    if backend == "dali":
        from pipelines.dali_backend import read_tfrecord_store, store_labels
        return store_labels(read_tfrecord_store(root))
    from pipelines.torchvision_backend import image_folder
    return np.asarray(image_folder(root).targets, dtype=np.int64)


def balanced_subset(labels: np.ndarray, seed: int = 0, fraction: float | None = None,
                    per_class: int | None = None) -> np.ndarray:
    """Per class, `per_class` samples or round(fraction x class size) (at least 1), drawn uniformly at random
    with a generator seeded by (seed, class): the same subset for a class whatever the other classes are."""
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"subset fraction {fraction}: must be in (0, 1]")
    if per_class is not None and per_class <= 0:
        raise ValueError(f"images per class {per_class}: must be positive")
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = per_class if per_class is not None else max(1, round(fraction * len(members)))
        rng = np.random.default_rng([seed, int(label)])
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def read_subset_file(path: str | Path, root: str, num_samples: int) -> np.ndarray:
    """Indices named by a list file: integers, or file names / relative paths of an ImageFolder's images."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            entries.append((number, text))
    if not entries:
        raise ValueError(f"{path}: no sample listed")
    if all(text.isdigit() for _, text in entries):
        indices = np.array([int(text) for _, text in entries], dtype=np.int64)
        for (number, text), index in zip(entries, indices):
            if index >= num_samples:
                raise ValueError(f"{path}:{number}: index {index} out of range (the data has {num_samples} samples)")
        return np.unique(indices)
    positions = _file_positions(root, path)
    indices = []
    for number, text in entries:
        index = positions.get(text.replace(os.sep, "/"))
        if index is None:
            index = positions.get(os.path.basename(text))
        if index is None:
            raise ValueError(f"{path}:{number}: {text} is not an image of {root}")
        indices.append(index)
    return np.unique(np.array(indices, dtype=np.int64))


def _file_positions(root: str, list_path) -> dict[str, int]:
    """ImageFolder sample index by relative path and by base name (base names that repeat are left out)."""
    names = sample_names(root) if os.path.isdir(root) else None
    if names is None:
        raise ValueError(f"{list_path}: file names need an ImageFolder to match against; for {root} list indices")
    positions, seen = {}, {}
    for index, relative in enumerate(names):
        positions[relative] = index
        name = os.path.basename(relative)
        seen[name] = seen.get(name, 0) + 1
        positions.setdefault(name, index)
    return {key: value for key, value in positions.items() if "/" in key or seen[key] == 1}


def sample_names(root: str) -> list[str] | None:
    """The relative path of every sample of an ImageFolder, in its order (None for a store: listed by index)."""
    if data_format(root) != "torch":
        return None
    from pipelines.torchvision_backend import image_folder
    return [os.path.relpath(file, root).replace(os.sep, "/") for file, _ in image_folder(root).samples]


def write_subset_file(path: str | Path, indices: np.ndarray, names: list[str] | None) -> Path:
    """The subset as a list file readable by read_subset_file: the samples' `names` (`sample_names`: relative
    paths of an ImageFolder), or their indices when there are none."""
    path = Path(path)
    lines = [names[int(index)] if names is not None else str(int(index)) for index in indices]
    path.write_text("\n".join(lines) + "\n")
    return path
