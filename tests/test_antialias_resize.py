"""The antialiased crop + resize against torchvision's own, on real photos and on every awkward shape."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from pipelines.antialias_resize import axis_taps, centre_box, resize_box, resize_crop
from tests.photo_cases import sample_photos


@pytest.fixture(scope="module")
def photos():
    return sample_photos()


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def torchvision_centre(image: np.ndarray, resize: int, size: tuple[int, int]) -> np.ndarray:
    return hwc(F.center_crop(F.resize(chw(image), resize, antialias=True), list(size)))


def ours_centre(image: np.ndarray, resize: int, size: tuple[int, int]) -> np.ndarray:
    out = np.zeros((*size, 3), np.uint8)
    height, width = image.shape[:2]
    resize_box(np.ascontiguousarray(image), *centre_box(height, width, resize, *size), 0, 0, height, width, out)
    return out


def test_crops_match_torchvision_resized_crop(photos):
    rng = np.random.default_rng(0)
    sizes = [(224, 224), (64, 96), (300, 300), (1, 1), (17, 224)]
    for name, image in photos.items():
        height, width = image.shape[:2]
        for case in range(15):
            h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
            i, j = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            size = sizes[case % len(sizes)]
            out = np.zeros((*size, 3), np.uint8)
            resize_crop(image, i, j, h, w, out)
            reference = hwc(F.resized_crop(chw(image), i, j, h, w, list(size), antialias=True))
            # torchvision rounds to uint8 between its two passes, we do not: one level at most
            assert np.abs(out.astype(int) - reference).max() <= 1, (name, (i, j, h, w), size)


@pytest.mark.parametrize("taps", range(1, 14))
def test_every_filter_width_matches_torchvision(taps, photos):
    """The horizontal pass sums four taps at a time and the last one to four on the way out to uint8: every filter
    width, from one tap (a one-pixel-wide image) to 13 (shrinking ~6x), on 13 rows (a last block of 5)."""
    image = photos["flower"][:61, :1] if taps == 1 else photos["flower"][:61]
    height, width = image.shape[:2]
    out_w = next(w for w in range(width, 0, -1) if axis_taps(0.0, float(width), 0, width, w)[1].max() == taps)
    out = np.zeros((13, out_w, 3), np.uint8)
    resize_crop(np.ascontiguousarray(image), 0, 0, height, width, out)
    reference = hwc(F.resized_crop(chw(image), 0, 0, height, width, [13, out_w], antialias=True))
    assert np.abs(out.astype(int) - reference).max() <= 1, out_w


def test_centre_view_matches_resize_then_centre_crop(photos):
    for name, image in photos.items():
        for resize, size in ((256, (224, 224)), (292, (256, 256)), (146, (128, 96))):
            difference = np.abs(ours_centre(image, resize, size).astype(int) - torchvision_centre(image, resize, size))
            assert difference.max() <= 1 and difference.mean() < 0.5, (name, resize, size)
    # the box is fractional: 375 x 500 -> 256 x 341, crop rows 16..240 of 256 = source rows 23.4375..351.5625
    assert centre_box(375, 500, 256, 224, 224) == pytest.approx((23.4375, 85.0440, 328.125, 328.4457), abs=1e-4)


@pytest.mark.parametrize("shape", [(1, 1), (4000, 20), (20, 4000), (1, 7), (3, 2), (256, 256)])
def test_any_image_shape_gives_torchvisions_centre_view(shape):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    difference = np.abs(ours_centre(image, 256, (224, 224)).astype(int) - torchvision_centre(image, 256, (224, 224)))
    assert difference.max() <= 1


def test_boxes_outside_the_clip_and_empty_boxes_read_the_edge():
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, :, 0] = np.arange(40, dtype=np.uint8)[None, :] * 5
    out = np.zeros((8, 8, 3), np.uint8)
    for box in ((-50.0, -50.0, 10.0, 10.0), (100.0, 100.0, 5.0, 5.0), (5.0, 5.0, 0.0, 0.0), (10.0, 39.5, 3.0, 40.0)):
        resize_box(image, *box, 0, 0, 30, 40, out)  # no crash, values between the image's
        assert image[..., 0].min() <= out[..., 0].min() and out[..., 0].max() <= image[..., 0].max()
    resize_box(image, 100.0, 100.0, 5.0, 5.0, 0, 0, 30, 40, out)
    assert (out[..., 0] == image[-1, -1, 0]).all()  # below and right of the image: its last pixel
    resize_box(image, 0.0, 0.0, 30.0, 40.0, 5, 30, 6, 31, out)  # a one-pixel clip: that pixel everywhere
    assert (out == image[5, 30]).all()


def test_a_flat_colour_stays_exact():
    image = np.empty((97, 131, 3), np.uint8)
    image[...] = (255, 0, 37)
    out = np.zeros((224, 224, 3), np.uint8)
    for box in ((0.0, 0.0, 97.0, 131.0), (3.3, 7.9, 50.2, 20.1), (0.0, 0.0, 1.0, 1.0)):
        resize_box(image, *box, 0, 0, 97, 131, out)
        assert (out == (255, 0, 37)).all()


def test_a_box_scaled_onto_a_half_size_decode_gives_the_same_view(photos):
    """The JPEG decoder's n/8 scaled decode: the box scaled by n/8 on the smaller image (its pixel centres sit at
    the centres of 2 x 2 source blocks) gives nearly the view of the full-size image."""
    image = photos["china"]
    half = np.asarray(Image.fromarray(image).reduce(2))  # 2 x 2 box averages, as a DCT-scaled decode makes
    for i, j, h, w in ((10, 20, 400, 600), (100, 150, 250, 300), (0, 0, 427, 640)):
        full, scaled = np.zeros((96, 96, 3), np.uint8), np.zeros((96, 96, 3), np.uint8)
        resize_crop(image, i, j, h, w, full)
        resize_box(half, i / 2, j / 2, h / 2, w / 2, i // 2, j // 2, -(-(i + h) // 2), -(-(j + w) // 2), scaled)
        assert np.abs(full.astype(int) - scaled).mean() / 255 < 0.01


def test_compile_ahead_compiles_every_cached_function(tmp_path):
    """make setup compiles the resize once so that the processes of a test run or a demo load it from numba's cache
    (0.5 s each) instead of compiling it side by side (5-8 s each): a cached function that compile_ahead missed
    would be compiled again in every process that calls it. Checked in a fresh interpreter with an empty cache."""
    import os
    import subprocess
    import sys
    check = ("import numba, pipelines.antialias_resize as module\n"
             "module.compile_ahead()\n"
             "cached = {name: f for name, f in vars(module).items() if isinstance(f, numba.core.dispatcher.Dispatcher)"
             " and type(f._cache).__name__ != 'NullCache'}\n"
             "assert len(cached) >= 8, sorted(cached)\n"
             "missed = sorted(name for name, f in cached.items() if not f.signatures)\n"
             "assert not missed and module._C_RESIZE_BOX is not None, missed\n"
             "print(len(cached))\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    index_files = list(tmp_path.rglob("*.nbi"))
    assert len(index_files) == int(done.stdout) + 1, index_files  # and the C function's
