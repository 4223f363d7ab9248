"""The DALI backend on the CPU: batch contract, sharding and the last batch, recipe statistics, seeding, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from dataset_prep import write_tfrecord  # noqa: E402
from pipelines import build_eval_loader  # noqa: E402
from pipelines.dali_backend import DALITwoViewLoader, DALIUnavailable, import_dali  # noqa: E402
from pipelines.recipe import RECIPE_NAMES, TwoViewRecipe, ViewRecipe, two_view_recipe  # noqa: E402
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


YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])  # DALI's hsv space


def test_jitter_parameters_follow_the_recipe_on_flat_colours(tmp_path):
    """The CPU graph applies jitter to every sample with identity parameters where its coin says no; on flat colours
    (no clipping) the parameters can be read back: luma ratio = brightness ~ U(0.6, 1.4), the hue rotation about the
    gray axis in degrees ~ U(-36, 36), chroma ratio / brightness = contrast x saturation in [0.36, 1.96]."""
    rng = np.random.default_rng(1)
    colours = [rng.permutation([140, 115, 100]) + rng.integers(-10, 10, 3) for _ in range(64)]
    store = make_store(tmp_path, {f"c{i:02d}": [np.full((32, 32, 3), c, np.uint8)] for i, c in enumerate(colours)})
    jitter_only = ViewRecipe(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, flip_p=0.0)
    recipe = TwoViewRecipe(target=ViewRecipe(flip_p=0.0), online=jitter_only, resolution=RESOLUTION)
    loader = DALITwoViewLoader(store, recipe, batch_size=16, workers=1, seed=0)
    before, after = [], []
    for epoch in range(4):
        for online, target, _ in loader.iterate(epoch):
            target_pixels = unnormalize(target, recipe)
            assert (target_pixels.amax((2, 3)) - target_pixels.amin((2, 3))).max() < 2.0
            before.append(target_pixels.mean((2, 3)).double())
            after.append(unnormalize(online, recipe).mean((2, 3)).double())
    before, after = torch.cat(before).numpy(), torch.cat(after).numpy()
    changed = np.abs(after - before).max(1) > 1.0
    assert abs(changed.mean() - 0.8) < 3 * (0.8 * 0.2 / len(changed)) ** 0.5 + 0.02
    unclipped = changed & (after.min(1) > 1) & (after.max(1) < 254)
    assert unclipped.sum() > 0.9 * changed.sum()
    yiq_before, yiq_after = before[unclipped] @ YIQ.T, after[unclipped] @ YIQ.T
    brightness = yiq_after[:, 0] / yiq_before[:, 0]
    assert brightness.min() > 0.6 - 0.02 and brightness.max() < 1.4 + 0.02
    assert abs(brightness.mean() - 1.0) < 0.06 and 0.18 < brightness.std() < 0.28  # U(0.6, 1.4): std 0.23
    hue = np.degrees(np.arctan2(yiq_after[:, 2], yiq_after[:, 1]) - np.arctan2(yiq_before[:, 2], yiq_before[:, 1]))
    hue = (hue + 180) % 360 - 180
    assert np.abs(hue).max() < 36 + 3 and 16 < hue.std() < 25  # U(-36, 36) degrees: std 20.8
    chroma = np.hypot(*yiq_after[:, 1:].T) / np.hypot(*yiq_before[:, 1:].T) / brightness
    assert chroma.min() > 0.36 - 0.06 and chroma.max() < 1.96 + 0.1 and abs(chroma.mean() - 1.0) < 0.08


def reflect_101_gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """The reference: DALI's kernel (window 2*ceil(3 sigma)+1, normalized), separable, reflect-101 border."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma * sigma))
    taps /= taps.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="reflect")
        out = sum(w * np.take(padded, range(i, i + image.shape[axis]), axis=axis) for i, w in enumerate(taps))
    return out


def test_cpu_blur_is_dalis_gaussian_blur():
    """The CPU graph's blur (two fn.filter passes with per-sample kernels) is fn.gaussian_blur, border included."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines.dali_backend import _gaussian_blur

    rng = np.random.default_rng(0)
    sigmas = [0.1, 0.34, 0.5, 0.97, 1.0, 1.5, 2.0]
    images = [rng.integers(0, 256, (20 + i, 30 - i, 3), dtype=np.uint8) for i in range(len(sigmas))]

    @pipeline_def
    def blurs():
        pixels = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        sigma = fn.external_source(source=lambda: [np.float32(s) for s in sigmas], batch=True)
        return (_gaussian_blur(fn.cast(pixels, dtype=types.FLOAT), sigma, max(sigmas)),
                fn.gaussian_blur(pixels, sigma=sigma, dtype=types.FLOAT))

    pipe = blurs(batch_size=len(sigmas), num_threads=1, device_id=None)
    pipe.build()
    ours, dalis = pipe.run()
    for image, sigma, a, b in zip(images, sigmas, ours, dalis):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=2e-3)
        np.testing.assert_allclose(np.array(a), reflect_101_gaussian_blur(image, sigma), atol=2e-3)


def test_blur_rate_and_sigma_range(tmp_path):
    """Whole-image crops (no resize) of noise: the strong view is the weak one, or its Gaussian blur with
    sigma ~ U(0.1, 2) for half of the samples."""
    rng = np.random.default_rng(2)
    store = make_store(tmp_path, {f"n{i:02d}": [rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)]
                                  for i in range(32)})
    whole = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0}
    recipe = TwoViewRecipe(target=ViewRecipe(**whole), online=ViewRecipe(blur_p=0.5, **whole),
                           resolution=RESOLUTION)
    loader = DALITwoViewLoader(store, recipe, batch_size=16, workers=1, seed=0)
    def error(plain, sigma, blurred):
        return np.abs(reflect_101_gaussian_blur(plain, sigma) - blurred).mean()

    def fit_sigma(plain, blurred):
        """Golden-section search within each span of sigma that keeps one window (ceil(3 sigma) constant)."""
        best = (np.inf, 0.0)
        for radius in range(1, 7):
            low, high = max(0.1, (radius - 1) / 3 + 1e-6), radius / 3
            for _ in range(20):
                a, b = high - 0.618 * (high - low), low + 0.618 * (high - low)
                if error(plain, a, blurred) < error(plain, b, blurred):
                    high = b
                else:
                    low = a
            best = min(best, (error(plain, (low + high) / 2, blurred), (low + high) / 2))
        return best

    fitted = []
    for epoch in range(4):
        for online, target, _ in loader.iterate(epoch):
            for blurred, plain in zip(unnormalize(online, recipe).double().numpy(),
                                      unnormalize(target, recipe).double().numpy()):
                blurred, plain = blurred.transpose(1, 2, 0), plain.transpose(1, 2, 0)
                if np.abs(blurred - plain).max() < 1e-3:
                    fitted.append(0.0)
                    continue
                residual, sigma = fit_sigma(plain, blurred)
                assert residual < 0.3  # a Gaussian blur (DALI's window rule, up to rounding), sigma in (0.1, 2)
                fitted.append(sigma)
    fitted = np.array(fitted)
    assert abs((fitted > 0).mean() - 0.5) < 3 * (0.25 / len(fitted)) ** 0.5
    wide = (fitted >= 1.05).mean()  # sigma in [1.05, 2]: half of the blurred samples
    assert abs(wide - 0.25) < 3 * (0.25 * 0.75 / len(fitted)) ** 0.5


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


def test_the_gpu_graph_is_defined_for_every_recipe(coordinate_store):
    """The mixed (GPU) graph, defined without a GPU: DALI checks each op's devices and arguments while the graph is
    defined (a per-sample argument computed on the GPU, the contrast centre, must be moved to the CPU for
    fn.brightness_contrast). Running it needs CUDA: test_mixed_decoding_on_the_gpu."""
    from pipelines.dali_backend import build_pipeline, read_tfrecord_store

    store = read_tfrecord_store(coordinate_store)
    for name in RECIPE_NAMES:
        for half in (False, True):
            build_pipeline(store, two_view_recipe(name, RESOLUTION), 8, 1, 0, 0, 1, "mixed", 0, half=half)


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
