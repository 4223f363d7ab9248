"""The DALI backend on the CPU: batch contract, sharding and the last batch, recipe statistics, seeding, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from dataset_prep import write_tfrecord  # noqa: E402
from pipelines import build_eval_loader  # noqa: E402
from pipelines.dali_backend import DALITwoViewLoader, DALIUnavailable, import_dali  # noqa: E402
from pipelines.recipe import two_view_recipe  # noqa: E402
from tests.image_cases import coordinate_images, flat_colour_images, write_image_folder  # noqa: E402
from tests.loader_checks import (RESOLUTION, check_contract_for_every_recipe, crop_areas,  # noqa: E402
                                 torchvision_crop_areas, train_one_small_epoch, unnormalize)


def make_store(root, images, *options) -> str:
    source = write_image_folder(root / "src", images)
    out = str(root / "store")
    assert write_tfrecord.main([source, out, "--workers", "1", "--no-progress", "--jpeg-quality", "95",
                                *options]) == 0
    return out


@pytest.fixture(scope="module")
def coordinate_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("coords"), coordinate_images(32), "--shards", "2")


@pytest.fixture(scope="module")
def flat_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("flat"), flat_colour_images())


def test_contract_for_every_recipe(coordinate_store):
    check_contract_for_every_recipe("dali", coordinate_store)


def test_two_shards_no_repeats_and_the_remainder_dropped(tmp_path):
    store = make_store(tmp_path, coordinate_images(37), "--shards", "3")
    recipe = two_view_recipe("w/w", RESOLUTION)
    ranks = [DALITwoViewLoader(store, recipe, batch_size=4, workers=1, seed=0, rank=r, world_size=2)
             for r in range(2)]
    assert [len(r) for r in ranks] == [4, 4]  # 37 // (4 x 2): the same step count on both ranks
    for epoch in range(2):
        seen = [torch.cat([labels for _, _, labels in rank.iterate(epoch)]).tolist() for rank in ranks]
        for labels in seen:
            assert len(labels) == 16 and len(set(labels)) == 16  # no sample twice within an epoch
        assert not set(seen[0]) & set(seen[1])  # the ranks read disjoint shards
    everything = torch.cat([labels for _, labels in build_eval_loader(store, recipe, batch_size=10, workers=1)]).tolist()
    assert sorted(everything) == list(range(37))  # evaluation: every sample exactly once


def test_crop_scale_flip_and_views_differ(coordinate_store):
    recipe = two_view_recipe("w/w", RESOLUTION)
    loader = DALITwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=0)
    areas, flips = [], []
    for epoch in range(6):
        for online, target, _ in loader.iterate(epoch):
            assert not torch.allclose(online, target)
            for view in (online, target):
                pixels = unnormalize(view, recipe)
                areas.append(crop_areas(pixels))
                flips.append(pixels[:, 0, :, 0].mean(1) > pixels[:, 0, :, -1].mean(1))  # red falls to the right
    areas, flips = torch.cat(areas), torch.cat(flips).float()
    reference = torchvision_crop_areas(recipe)
    assert areas.min() > 0.2 - 0.03 and areas.max() <= 1.0 + 0.02
    assert abs(areas.mean().item() - reference.mean().item()) < 0.04
    sigma = (0.25 / len(flips)) ** 0.5
    assert abs(flips.mean().item() - 0.5) < 3 * sigma


def test_strong_view_statistics_and_a_plain_weak_target(flat_store):
    recipe = two_view_recipe("w/s", RESOLUTION)
    loader = DALITwoViewLoader(flat_store, recipe, batch_size=8, workers=1, seed=0)
    changed, gray = [], []
    for epoch in range(8):
        for online, target, _ in loader.iterate(epoch):
            target_pixels = unnormalize(target, recipe)
            assert (target_pixels.amax((2, 3)) - target_pixels.amin((2, 3))).max() < 2.0  # still flat
            online_colour = unnormalize(online, recipe).mean((2, 3))
            changed.append((online_colour - target_pixels.mean((2, 3))).abs().amax(1) > 2.0)
            gray.append((online_colour.amax(1) - online_colour.amin(1)) < 2.0)
    changed, gray = torch.cat(changed).float(), torch.cat(gray).float()
    n = len(gray)
    # grayscale p = 0.2 (jitter's saturation >= 0.6 never makes these colours gray)
    assert abs(gray.mean().item() - 0.2) < 3 * (0.2 * 0.8 / n) ** 0.5
    # colour changes unless neither jitter (p = 0.8) nor grayscale (p = 0.2) happened: 1 - 0.2 * 0.8 = 0.84
    assert abs(changed.mean().item() - 0.84) < 3 * (0.84 * 0.16 / n) ** 0.5 + 0.03


def test_epochs_are_seeded_and_resumable(coordinate_store):
    recipe = two_view_recipe("w/s", RESOLUTION)
    loader = DALITwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=5)
    first = list(loader.iterate(2))
    again = list(loader.iterate(2))
    resumed = list(loader.iterate(2, skip_batches=1))
    for (a_online, a_target, a_labels), (b_online, b_target, b_labels) in zip(first, again):
        assert torch.equal(a_labels, b_labels) and torch.equal(a_online, b_online) and torch.equal(a_target, b_target)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[1:], resumed))
    assert [b[2].tolist() for b in loader.iterate(3)] != [b[2].tolist() for b in first]


def test_training_steps_through_dali(coordinate_store, tmp_path):
    trainer, result = train_one_small_epoch(coordinate_store, tmp_path / "run")
    assert trainer.loader.backend == "dali"  # data.backend=auto picks it for this store
    assert trainer.step == 4 and np.isfinite(result.loss_by_epoch[1])


def test_missing_dali_is_one_clear_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(DALIUnavailable, match=r"pip install -e '\.\[dali\]'"):
        import_dali()


@pytest.mark.cuda
def test_mixed_decoding_on_the_gpu(coordinate_store):
    recipe = two_view_recipe("w/s", RESOLUTION)
    loader = DALITwoViewLoader(coordinate_store, recipe, batch_size=8, workers=2, seed=0, device="cuda")
    assert loader.decoder_device == "mixed"
    online, target, labels = next(iter(loader.iterate(0)))
    assert online.is_cuda and target.is_cuda and online.shape == (8, 3, RESOLUTION, RESOLUTION)


def test_half_precision_output(coordinate_store):
    recipe = two_view_recipe("w/w", RESOLUTION)
    full = DALITwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=1)
    half = DALITwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=1, dtype=torch.bfloat16)
    (a, _, labels_a), (b, _, labels_b) = next(iter(full.iterate(0))), next(iter(half.iterate(0)))
    assert b.dtype == torch.bfloat16 and b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(labels_a, labels_b) and (a - b.float()).abs().max() < 0.02  # float16 then bfloat16 rounding


def test_store_labels_subsets_and_the_probe_loader(coordinate_store):
    from pipelines import build_probe_loader
    from pipelines.subsets import dataset_labels

    recipe = two_view_recipe("w/s", RESOLUTION)
    labels = dataset_labels(coordinate_store)  # labels.npy, written beside the shards
    in_store_order = torch.cat([batch_labels for _, batch_labels in build_eval_loader(coordinate_store, recipe, batch_size=8, workers=1)])
    assert labels.tolist() == in_store_order.tolist() and sorted(labels.tolist()) == list(range(32))

    chosen = [0, 5, 15, 16, 17, 31]  # across both shards (16 records each)
    subset = list(build_eval_loader(coordinate_store, recipe, batch_size=4, workers=1, indices=chosen))
    assert torch.cat([batch_labels for _, batch_labels in subset]).tolist() == labels[chosen].tolist()
    full = torch.cat([images for images, _ in build_eval_loader(coordinate_store, recipe, batch_size=32, workers=1)])
    torch.testing.assert_close(torch.cat([images for images, _ in subset]), full[chosen])

    probe = build_probe_loader(coordinate_store, recipe, batch_size=4, workers=1, seed=0, indices=chosen)
    passes = [torch.cat([batch_labels for _, batch_labels in probe]).tolist() for _ in range(2)]
    assert sorted(passes[0]) == sorted(passes[1]) == sorted(labels[chosen].tolist())
    images = torch.cat([images for images, _ in probe])
    assert images.shape == (6, 3, RESOLUTION, RESOLUTION)
    spans = crop_areas(unnormalize(images, recipe))  # random resized crops at scale (0.08, 1)
    assert (spans < 0.99).any() and (spans > 0.06).all()


def test_augmented_linear_probe_and_semi_read_a_store(coordinate_store, tmp_path):
    import json

    from msf_fast import eval as evaluation
    from msf_fast import export
    from msf_fast.model import MSF

    torch.manual_seed(0)
    checkpoint = tmp_path / "backbone.pth"
    torch.save(export.backbone_state_dict(MSF("resnet18", bank_size=32, topk=5, small_input=True)), checkpoint)
    common = ["--ckpt", str(checkpoint), "--train", coordinate_store, "--val", coordinate_store, "--resolution",
              str(RESOLUTION), "--workers", "1", "--batch-size", "16", "--device", "cpu", "--no-progress",
              "--epochs", "2", "--mode", "augmented"]
    assert evaluation.main(["linear", *common, "--out", str(tmp_path / "linear")]) == 0
    assert json.loads((tmp_path / "linear" / "linear.json").read_text())["labelled_images"] == 32
    assert evaluation.main(["semi", *common, "--fractions", "0.5", "--out", str(tmp_path / "semi")]) == 0
    semi = json.loads((tmp_path / "semi" / "semi.json").read_text())
    assert semi["subsets"]["0.5"]["labelled_images"] == 32  # one image per class: at least one is kept
    listed = (tmp_path / "semi" / "subset_0.5_seed0.txt").read_text().split()
    assert sorted(map(int, listed)) == list(range(32))  # a store's subsets are listed by index
