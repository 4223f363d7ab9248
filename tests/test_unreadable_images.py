"""Files in an ImageFolder that are no image (issue 21, item 7): a text file named .jpg, a truncated JPEG. The store
writers skip them with a line naming the file; so does every reader of a folder (the training loader, the evaluation
loaders, the listings behind labels and subsets), instead of a crash inside a DataLoader worker."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from msf_fast import eval as evaluation
from pipelines.recipe import two_view_recipe

FAST = ["--resolution", "32", "--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]


def write_folder(root, bad: bool) -> dict[str, str]:
    """2 classes x 4 small PNGs (one of them a PNG named .jpg, which is an image); with `bad`, a text file named
    .jpg in class a and a truncated JPEG in class b. Returns {name: path} of the bad files."""
    rng = np.random.default_rng(0)
    for label, name in enumerate("ab"):
        os.makedirs(os.path.join(root, name))
        for i in range(4):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            pixels[..., label] //= 3
            file_name = "png_named.jpg" if i == 3 else f"{i}.png"
            Image.fromarray(pixels).save(os.path.join(root, name, file_name), format="PNG")
    if not bad:
        return {}
    text = os.path.join(root, "a", "notes.jpg")
    with open(text, "w") as file:
        file.write("not an image, only named like one\n")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    truncated = os.path.join(root, "b", "cut.jpg")
    with open(truncated, "wb") as file:
        file.write(buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10])
    return {"text": text, "truncated": truncated}


@pytest.fixture
def folders(tmp_path):
    bad = write_folder(str(tmp_path / "train"), bad=True)
    write_folder(str(tmp_path / "val"), bad=False)
    return str(tmp_path / "train"), str(tmp_path / "val"), bad


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    from pipelines import torchvision_backend
    monkeypatch.setattr(torchvision_backend, "_NOTED", set())


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note: skipped")]


def test_the_listing_leaves_out_a_text_file_named_jpg_and_names_it(folders, capsys):
    from pipelines.subsets import dataset_labels, sample_names
    from pipelines.torchvision_backend import image_folder
    train, _, bad = folders
    images = image_folder(train)
    assert len(images) == 9 and bad["text"] not in [path for path, _ in images.samples]
    assert notes(capsys.readouterr().err) == [
        f"note: skipped {bad['text']}: not an image (format not recognised); not listed"]
    # every reader of the folder sees the same samples (a subset file's names match the features' rows)
    assert len(dataset_labels(train)) == 9 and "a/notes.jpg" not in sample_names(train)
    assert "a/png_named.jpg" in sample_names(train)  # an image whatever its extension says


@pytest.mark.parametrize("workers", [0, 1])
def test_the_training_loader_replaces_a_truncated_jpeg_and_names_it(folders, workers, capsys):
    from pipelines.torchvision_backend import TorchvisionTwoViewLoader
    train, _, bad = folders
    loader = TorchvisionTwoViewLoader(train, two_view_recipe("w/s", 16), batch_size=3, workers=workers)
    assert len(loader) == 3  # 9 images listed: the text file is not
    for _ in range(2):  # the note comes once, not every epoch
        batches = list(loader.iterate(epoch=0))
        assert [len(labels) for _, _, labels in batches] == [3, 3, 3]
        assert all(torch.isfinite(online).all() and torch.isfinite(target).all() for online, target, _ in batches)
    text_note, truncated_note = notes(capsys.readouterr().err)
    assert text_note == f"note: skipped {bad['text']}: not an image (format not recognised); not listed"
    assert truncated_note.startswith(f"note: skipped {bad['truncated']}: truncated (image file is truncated (")
    assert truncated_note.endswith("; the next image of the listing takes its place in the batch")


def test_eval_knn_names_the_files_in_one_line_each_and_scores_the_rest(folders, backbone, tmp_path, capsys):
    train, val, bad = folders
    code = evaluation.main(["knn", "--ckpt", backbone, "--train", train, "--val", val, "--k", "1",
                            "--out", str(tmp_path / "out"), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.err.strip().splitlines()
    assert lines[0] == f"note: skipped {bad['text']}: not an image (format not recognised); not listed"
    assert lines[1].startswith(f"note: skipped {bad['truncated']}: truncated (")
    assert lines[1].endswith("); left out of the evaluation") and len(lines) == 2
    result = json.loads(captured.out)
    assert (result["train_images"], result["val_images"]) == (8, 8)


def test_eval_semi_subsets_name_the_images_their_features_came_from(folders, backbone, tmp_path, capsys):
    # a file left out at decoding leaves no feature row: the rows after it belong to the next files of the listing
    train, val, bad = folders
    out = tmp_path / "out"
    code = evaluation.main(["semi", "--ckpt", backbone, "--train", train, "--val", val, "--fractions", "1",
                            "--epochs", "1", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "subset_1_seed0.txt").read_text().split() == [
        "a/0.png", "a/1.png", "a/2.png", "a/png_named.jpg", "b/0.png", "b/1.png", "b/2.png", "b/png_named.jpg"]
    assert json.loads(captured.out)["subsets"]["1"]["labelled_images"] == 8
