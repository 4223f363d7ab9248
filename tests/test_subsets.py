"""Label subsets: balanced per class, seeded, independent across classes, and list files both ways."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import build_eval_loader, two_view_recipe
from pipelines.subsets import balanced_subset, dataset_labels, read_subset_file, sample_names, write_subset_file

LABELS = np.repeat(np.arange(10), [100, 120, 80, 100, 100, 100, 100, 100, 100, 3])


def test_balanced_fraction_keeps_each_class_share():
    chosen = balanced_subset(LABELS, seed=0, fraction=0.1)
    counts = np.bincount(LABELS[chosen], minlength=10)
    assert counts.tolist() == [10, 12, 8, 10, 10, 10, 10, 10, 10, 1]  # at least one image of a tiny class
    assert np.all(np.diff(chosen) > 0), "sorted, no repeats"
    assert balanced_subset(LABELS, seed=0, per_class=5).size == 9 * 5 + 3


def test_subsets_are_seeded_and_classes_independent():
    first = balanced_subset(LABELS, seed=3, fraction=0.01)
    assert np.array_equal(first, balanced_subset(LABELS, seed=3, fraction=0.01))
    assert not np.array_equal(first, balanced_subset(LABELS, seed=4, fraction=0.01))
    without_class_0 = LABELS.copy()
    without_class_0[:100] = 99  # class 0 replaced by another class: the other classes keep their picks
    other = balanced_subset(without_class_0, seed=3, fraction=0.01)
    assert np.array_equal(first[LABELS[first] != 0], other[without_class_0[other] != 99])


def test_bad_subset_requests():
    with pytest.raises(ValueError, match="exactly one"):
        balanced_subset(LABELS, fraction=0.1, per_class=2)
    with pytest.raises(ValueError, match="fraction 1.5"):
        balanced_subset(LABELS, fraction=1.5)


def test_list_files_by_index_path_and_name(tiny_imagefolder, tmp_path):
    root = str(tiny_imagefolder / "train")
    listing = tmp_path / "list.txt"
    listing.write_text("# the first images\n0\n5   # comment\n\n95\n")
    assert read_subset_file(listing, root, 96).tolist() == [0, 5, 95]
    listing.write_text("class_1/3.jpg\nclass_0/0.jpg\n")
    assert read_subset_file(listing, root, 96).tolist() == [0, 24 + 17]  # name order: 0, 1, 10..19, 2, 20..23, 3
    written = write_subset_file(tmp_path / "again.txt", np.array([0, 41]), sample_names(root))
    assert written.read_text().split() == ["class_0/0.jpg", "class_1/3.jpg"]
    listing.write_text("96\n")
    with pytest.raises(ValueError, match="list.txt:1: index 96 out of range"):
        read_subset_file(listing, root, 96)
    listing.write_text("")
    with pytest.raises(ValueError, match="no sample listed"):
        read_subset_file(listing, root, 96)


def test_eval_loader_reads_only_the_subset(tiny_imagefolder):
    root = str(tiny_imagefolder / "train")
    labels = dataset_labels(root)
    assert np.bincount(labels).tolist() == [24] * 4
    chosen = balanced_subset(labels, seed=0, per_class=2)
    loader = build_eval_loader(root, two_view_recipe("w/s", 32), batch_size=3, workers=0, indices=chosen)
    read = torch.cat([batch_labels for _, batch_labels in loader])
    assert read.tolist() == labels[chosen].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
