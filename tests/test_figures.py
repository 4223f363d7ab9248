"""The representation figures (tsne, neighbours, clusters): PNGs of the documented pixel size linked from
report.md, the same seeded choice of images every time and for every checkpoint, k-means purity, and a query
that is never its own neighbour when it comes from the gallery."""
from __future__ import annotations

import json
import shutil
import sys
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from msf_fast import eval as evaluation
from msf_fast import export
from msf_fast.eval.figures.analyses import cluster_purity, kmeans
from msf_fast.eval.figures.drawing import (MARGIN, QUERY, clusters_figure_size, neighbours_figure_size, row_top,
                                           tsne_figure_size)
from msf_fast.eval.figures.streaming import ClassSampler, IndexSampler, RandomSampler, make_thumbnails, select_images
from msf_fast.model import MSF
from msf_fast.eval import PROG as EVAL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = MSF("resnet18", bank_size=32, topk=5, small_input=True)
        torch.save(export.backbone_state_dict(model), folder / f"epoch{seed}.pth")
        paths.append(str(folder / f"epoch{seed}.pth"))
    return paths


def run(command, checkpoints, data, out, capsys, *options) -> tuple[int, dict | None, str]:
    """(exit code, the printed JSON result, stderr)."""
    code = evaluation.main([command, "--ckpt", *checkpoints, "--data", str(data), "--resolution", "32",
                            "--workers", "0", "--batch-size", "32", "--device", "cpu", "--no-progress", "--out", str(out),
                            "--thumb", "16", *options])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else None, captured.err


def assert_figure(out, name: str, result: dict, size: tuple[int, int]) -> None:
    png = out / "report" / f"{name}.png"
    assert result["png"] == str(png)
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert Image.open(png).size == size
    assert not [p for p in png.parent.iterdir() if "partial" in p.name]
    assert f"](./{name}.png)" in (out / "report" / f"{name}.md").read_text()
    assert f"](report/{name}.png)" in (out / "report.md").read_text()
    assert json.loads((out / f"{name}.json").read_text()) == result


def first_images(classes, per_class: int, images_per_class: int = 24) -> list[int]:
    """File-order positions of the first images of these classes in tiny_imagefolder's train split."""
    return sorted(images_per_class * c + i for c in classes for i in range(per_class))


def test_tsne_draws_the_first_images_of_seeded_random_classes(tiny_imagefolder, checkpoints, tmp_path, capsys):
    code, result, _ = run("tsne", checkpoints, tiny_imagefolder / "train", tmp_path / "a", capsys,
                       "--classes", "3", "--per-class", "6")
    assert code == 0
    assert_figure(tmp_path / "a", "tsne", result, tsne_figure_size(panels=2, classes=3))
    assert result["labels"] == ["epoch0", "epoch1"] and result["images"] == 18
    assert len(result["classes"]) == 3 and set(result["classes"]) <= {0, 1, 2, 3}
    assert result["class_names"] == [f"class_{c}" for c in result["classes"]]  # the legend names the classes
    assert result["indices"] == first_images(result["classes"], 6)

    code, again, _ = run("tsne", checkpoints, tiny_imagefolder / "train", tmp_path / "b", capsys,
                      "--classes", "3", "--per-class", "6")
    assert code == 0
    assert (again["classes"], again["indices"]) == (result["classes"], result["indices"])


def test_more_classes_than_the_data_has_is_a_one_line_error(tiny_imagefolder, checkpoints, tmp_path, capsys):
    code, _, error = run("tsne", checkpoints, tiny_imagefolder / "train", tmp_path, capsys, "--classes", "5")
    assert code == 2
    expected = f"{EVAL} tsne: error: --classes 5: {tiny_imagefolder / 'train'} has only 4 classes"
    assert error.strip().splitlines() == [expected]


def test_umap_without_the_package_says_how_to_install_it(tiny_imagefolder, checkpoints, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    code, _, error = run("tsne", checkpoints, tiny_imagefolder / "train", tmp_path, capsys, "--method", "umap")
    assert code == 2
    assert "pip install umap-learn" in error


def test_neighbours_of_gallery_queries_exclude_the_query(tiny_imagefolder, checkpoints, tmp_path, capsys):
    train = tiny_imagefolder / "train"
    code, result, _ = run("neighbours", checkpoints, train, tmp_path / "own", capsys, "--queries", "3", "--k", "4")
    assert code == 0
    assert_figure(tmp_path / "own", "neighbours", result, neighbours_figure_size(2, queries=3, k=4, thumb=16))
    assert result["gallery_images"] == 96 and len(result["queries"]) == 3
    assert result["query_labels"] == [index // 24 for index in result["queries"]]
    for per_query in result["neighbours"]:
        for query, found in zip(result["queries"], per_query):
            assert len(set(found)) == 4 and query not in found and all(0 <= i < 96 for i in found)
    assert all(0.0 <= share <= 1.0 for share in result["same_class_share"])
    pixels = np.asarray(Image.open(result["png"]).convert("RGB"))
    for row in range(3):  # the query column is framed in blue
        top = row_top(0, row, rows=3, thumb=16)
        assert tuple(pixels[top, MARGIN]) == QUERY and tuple(pixels[top + 15, MARGIN + 15]) == QUERY

    # The same images under another path are a separate query set: then each query finds itself first.
    copy = tmp_path / "copy"
    shutil.copytree(train, copy)
    code, separate, _ = run("neighbours", checkpoints, train, tmp_path / "copy_out", capsys, "--queries", "3", "--k",
                         "4", "--queries-from", str(copy))
    assert code == 0
    assert separate["queries"] == result["queries"]
    for per_query in separate["neighbours"]:
        assert [found[0] for found in per_query] == separate["queries"]


def test_clusters_report_purity_per_checkpoint(tiny_imagefolder, checkpoints, tmp_path, capsys):
    code, result, _ = run("clusters", checkpoints, tiny_imagefolder / "train", tmp_path / "a", capsys,
                       "--clusters", "4", "--rows", "3", "--per-row", "4", "--per-class", "10")
    assert code == 0
    assert_figure(tmp_path / "a", "clusters", result, clusters_figure_size(2, rows=3, per_row=4, thumb=16))
    assert (result["images"], result["classes"], result["clusters"]) == (40, 4, 4)
    assert len(result["purity"]) == 2 and all(0.25 <= purity <= 1.0 for purity in result["purity"])
    assert [len(shown) for shown in result["shown_clusters"]] == [3, 3]

    code, capped, _ = run("clusters", checkpoints, tiny_imagefolder / "train", tmp_path / "b", capsys,
                       "--per-class", "1")
    assert code == 0
    assert (capped["images"], capped["clusters"]) == (4, 2)  # at most half the images: purity can mean something
    assert_figure(tmp_path / "b", "clusters", capped, clusters_figure_size(2, rows=2, per_row=8, thumb=16))


def separated_features(clusters: int, per_cluster: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, 16, generator=generator), dim=1)
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    features = centres[labels] + 0.02 * torch.randn(len(labels), 16, generator=generator)
    return torch.nn.functional.normalize(features, dim=1).numpy(), labels.numpy()


@pytest.mark.parametrize("faiss_importable", [True, False])
def test_kmeans_of_separated_clusters_is_pure(faiss_importable, monkeypatch):
    if faiss_importable:
        pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[faiss]')")
    else:
        monkeypatch.setitem(sys.modules, "faiss", None)
    features, labels = separated_features(4, 25)
    for clusters in (4, 8):
        assignments, backend = kmeans(features, clusters, seed=0)
        assert backend == ("faiss" if faiss_importable else "sklearn")
        assert len(np.unique(assignments)) <= clusters and cluster_purity(assignments, labels) == 1.0
    shuffled = np.random.default_rng(0).permutation(labels)
    assert cluster_purity(kmeans(features, 4, seed=0)[0], shuffled) < 0.6


def test_cluster_purity_is_the_majority_share():
    assert cluster_purity(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 1])) == pytest.approx(5 / 6)


def fake_loader(labels: list[int], batch_size: int, seed: int = 0):
    """(images, labels) batches of random normalised 8x8 images, the same images whatever the batch size."""
    images = torch.randn(len(labels), 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    targets = torch.tensor(labels)
    return [(images[i:i + batch_size], targets[i:i + batch_size]) for i in range(0, len(labels), batch_size)]


def stream_labels(classes: int = 20, per_class: int = 6) -> list[int]:
    return np.random.default_rng(7).permutation(np.repeat(np.arange(classes), per_class)).tolist()


def test_class_sampler_keeps_the_first_images_of_seeded_classes_whatever_the_batching():
    labels = stream_labels()
    thumbnail = partial(make_thumbnails, mean=MEAN, std=STD, size=4)
    chosen = []
    for batch_size in (7, 13, 120):
        sampler = ClassSampler(5, 3, seed=0)
        selection = select_images(fake_loader(labels, batch_size), sampler, [], torch.device("cpu"), thumbnail)
        classes = sorted(sampler.members)
        first = sorted(i for c in classes for i in [j for j, label in enumerate(labels) if label == c][:3])
        assert len(classes) == 5 and selection.indices == first
        assert selection.labels.tolist() == [labels[i] for i in first]
        assert selection.thumbnails.shape == (15, 4, 4, 3) and selection.thumbnails.dtype == torch.uint8
        chosen.append(classes)
    assert chosen[0] == chosen[1] == chosen[2]
    others = [sorted(select_classes(labels, seed)) for seed in range(1, 4)]
    assert any(other != chosen[0] for other in others)


def select_classes(labels: list[int], seed: int) -> list[int]:
    sampler = ClassSampler(5, 3, seed=seed)
    select_images(fake_loader(labels, 16), sampler, [], torch.device("cpu"))
    return list(sampler.members)


def test_random_sampler_draws_the_same_images_whatever_the_batching():
    labels = [0] * 200
    drawn = []
    for batch_size in (7, 64):
        selection = select_images(fake_loader(labels, batch_size), RandomSampler(6, seed=3), [],
                                  torch.device("cpu"))
        assert len(selection.indices) == 6 and selection.images_read == 200
        drawn.append(selection.indices)
    assert drawn[0] == drawn[1]
    assert select_images(fake_loader(labels, 64), RandomSampler(6, seed=4), [],
                         torch.device("cpu")).indices != drawn[0]


def test_index_sampler_stops_after_the_last_wanted_image():
    selection = select_images(fake_loader(list(range(100)), 10), IndexSampler([3, 17]), [], torch.device("cpu"))
    assert selection.indices == [3, 17] and selection.labels.tolist() == [3, 17]
    assert selection.images_read == 20


def test_thumbnails_undo_the_normalisation():
    colour = torch.tensor([0.2, 0.6, 1.0])
    normalised = ((colour - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).expand(2, 3, 12, 12)
    thumbnails = make_thumbnails(normalised, MEAN, STD, size=5)
    assert thumbnails.shape == (2, 5, 5, 3)
    assert (thumbnails == torch.tensor([51, 153, 255], dtype=torch.uint8)).all()
