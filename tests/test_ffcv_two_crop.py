"""The one-decode two-crop FFCV decoder: seeded generator, torchvision's crop sampler, crops checked pixel for pixel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

_threads = torch.get_num_threads()
pytest.importorskip("ffcv")  # `import ffcv` sets torch's threads to 1: put them back
torch.set_num_threads(_threads)

from dataset_prep import write_beton  # noqa: E402
from pipelines import ffcv_two_crop as tc  # noqa: E402 (imports FFCV, keeping torch's thread count)
from pipelines.antialias_resize import resize_crop  # noqa: E402
from pipelines.recipe import PROBE_VIEW, WEAK, two_view_recipe  # noqa: E402
from tests.image_cases import coordinate_images, smooth_image, write_image_folder  # noqa: E402
from tests.photo_cases import odd_shape_images, write_photo_folder, write_raw_beton  # noqa: E402
from tests.loader_checks import RESOLUTION, crop_areas, torchvision_crop_areas  # noqa: E402

VIEWS = (PROBE_VIEW, WEAK)  # online (scale 0.08-1), target (scale 0.2-1): each view keeps its own ranges
SAMPLES = 32


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # every FFCV Loader sets torch's threads to its worker count


def make_store(root, images, write_mode, *options) -> str:
    source = write_image_folder(root, images) if images is not None else str(root)
    path = source + ".beton"
    assert write_beton.main([source, path, "--write-mode", write_mode, "--workers", "1", "--no-progress",
                             *options]) == 0
    return path


@pytest.fixture(scope="module")
def coordinate_sources():
    return coordinate_images(SAMPLES)  # sample k is class k: the label is the sample index


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory, coordinate_sources):
    return make_store(tmp_path_factory.mktemp("raw") / "src", coordinate_sources, "raw")


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory):
    """JPEG-stored smooth photos of four sizes (landscape, portrait, elongated, square)."""
    rng = np.random.default_rng(0)
    sizes = [(160, 120), (120, 160), (200, 96), (144, 144)]
    images = {f"c{k:02d}": [smooth_image(rng, *sizes[k % 4])] for k in range(16)}
    return make_store(tmp_path_factory.mktemp("photos") / "src", images, "jpg")


def epoch_crops(path, epoch, seed=0, workers=1, order_seed=0, size=RESOLUTION, views=VIEWS, loader_box=None,
                decoder=None, **options) -> dict[int, np.ndarray]:
    """{sample index: (2, size, size, 3) uint8} for one epoch of a Loader with the two-crop decoder."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import ToTensor

    if decoder is None:
        decoder = tc.TwoCropDecoder((size, size), views=views, seed=seed, **options)
        loader = Loader(path, batch_size=8, num_workers=workers, order=OrderOption.RANDOM, seed=order_seed,
                        drop_last=False,
                        pipelines={"views": PipelineSpec("image", decoder=decoder, transforms=[ToTensor()]),
                                   "image": None, "label": [IntDecoder(), ToTensor()]})
        if loader_box is not None:
            loader_box.extend([loader, decoder])
    else:
        loader = loader_box[0]
    decoder.set_epoch(epoch)
    crops = {}
    for batch in loader:
        named = dict(zip(loader.pipeline_specs, batch))
        views_batch, labels = named["views"], named["label"]
        assert views_batch.dtype == torch.uint8 and views_batch.shape[1:] == (2, *decoder.output_size, 3)
        for sample, index in zip(views_batch.numpy(), labels.view(-1).tolist()):
            crops[index] = sample.copy()
    return crops


def reference_views(image: np.ndarray, index: int, epoch: int, seed: int, size: int, views=VIEWS,
                    resize="antialias") -> np.ndarray:
    """The oracle: the pure-Python crop boxes cut from the full image and resized (antialias_resize.resize_crop,
    or libffcv's OpenCV resize_crop for the former path)."""
    from ffcv.libffcv import resize_crop as opencv_resize_crop

    out = np.zeros((2, size, size, 3), np.uint8)
    image = np.ascontiguousarray(image)
    for v, (i, j, h, w) in enumerate(tc.two_crop_params(*image.shape[:2], views, seed, epoch, index)):
        if resize == "antialias":
            resize_crop(image, i, j, h, w, out[v])
        else:
            opencv_resize_crop(image, i, i + h, j, j + w, out[v])
    return out


def stored_jpegs(path) -> list[np.ndarray]:
    """Every sample of a JPEG store decoded whole by libffcv's imdecode (the decoder's own path, no shortcut)."""
    from ffcv.libffcv import imdecode
    from ffcv.reader import Reader

    reader = Reader(path)
    meta = reader.metadata["f0"]
    data = np.memmap(path, "uint8", mode="r")
    size_at = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    images = []
    for field in meta:
        assert field["mode"] == 0  # jpg
        ptr = int(field["data_ptr"])
        size = size_at[ptr]
        height, width = int(field["height"]), int(field["width"])
        image = np.zeros((height, width, 3), np.uint8)
        assert imdecode(np.asarray(data[ptr:ptr + size]), image, height, width, height, width, 0, 0, 1, 1,
                        False, False) == 0
        images.append(image)
    return images


# --- the generator and the sampler ------------------------------------------------------------------------------

def test_generator_is_identical_in_numba_and_python():
    rng = np.random.default_rng(0)
    keys = rng.integers(-2**63, 2**63 - 1, size=(500, 5), dtype=np.int64).tolist()
    keys += [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [2**63 - 1, -1, 1281166, 1, 21], [-7, 199, 5, 0, 3]]
    python = [tc.uniform(*key) for key in keys]
    compiled = [tc.uniform_nb(*key) for key in keys]
    assert python == compiled  # bit for bit
    values = np.array(python)
    assert values.min() >= 0.0 and values.max() < 1.0 and len(set(python)) == len(python)
    draws = np.array([tc.uniform(3, 1, k, 0, 0) for k in range(4000)])
    assert abs(draws.mean() - 0.5) < 0.02 and abs(draws.var() - 1 / 12) < 0.01


def test_crop_sampler_is_identical_in_numba_and_python_including_the_fallback():
    rng = np.random.default_rng(1)
    shapes = [(192, 256), (375, 500), (128, 128), (1000, 10), (10, 1000), (3, 500), (600, 40), (1, 1), (2, 3)]
    ranges = [((0.2, 1.0), (3 / 4, 4 / 3)), ((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 0.5), (1.0, 1.0)),
              ((0.9, 1.0), (0.25, 4.0))]
    fallbacks = 0
    for case in range(3000):
        height, width = shapes[case % len(shapes)]
        scale, ratio = ranges[case // len(shapes) % len(ranges)]
        seed, epoch, index, view = (int(v) for v in rng.integers(0, 2**31, 4))
        view %= 2
        python = tc.crop_params(height, width, scale, ratio, seed, epoch, index, view)
        compiled = tc.crop_params_nb(height, width, *scale, *ratio, seed, epoch, index, view)
        assert python == tuple(compiled), (height, width, scale, ratio, seed, epoch, index, view)
        i, j, h, w = python
        assert 0 <= i <= height - h and 0 <= j <= width - w and h > 0 and w > 0
        fallbacks += (height, width) in ((1000, 10), (10, 1000))
    assert fallbacks > 100
    # torchvision's fallback for an image no try fits: the centre crop, its aspect clamped to the ratio range
    assert tc.crop_params(1000, 10, (0.2, 1.0), (3 / 4, 4 / 3), 0, 0, 0, 0) == ((1000 - 13) // 2, 0, 13, 10)
    assert tc.crop_params(10, 1000, (0.2, 1.0), (3 / 4, 4 / 3), 0, 0, 0, 0) == (0, (1000 - 13) // 2, 10, 13)


def test_crop_areas_match_torchvision_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    for height, width, scale in ((128, 128, (0.2, 1.0)), (375, 500, (0.08, 1.0)), (500, 200, (0.2, 1.0))):
        ours, theirs = [], []
        image = torch.empty(3, height, width)
        for index in range(3000):
            i, _, h, w = tc.crop_params(height, width, scale, (3 / 4, 4 / 3), 0, 0, index, 0)
            ours.append((h * w / (height * width), w / h, (i + h / 2) / height))
            i, _, h, w = RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
            theirs.append((h * w / (height * width), w / h, (i + h / 2) / height))
        ours, theirs = np.array(ours), np.array(theirs)
        for column in range(3):  # area fraction, aspect, vertical centre: mean and quartiles agree
            for q in (0.25, 0.5, 0.75):
                assert abs(np.quantile(ours[:, column], q) - np.quantile(theirs[:, column], q)) < 0.03
            assert abs(ours[:, column].mean() - theirs[:, column].mean()) < 0.02


def test_dct_scale_and_region_planning():
    # the smallest n in (1, 2, 4) with every crop side * n / 8 >= the output side, else 8 (no scaling)
    assert tc.dct_scale_num(200, 200, 130, 300, 32, 32) == 2
    assert tc.dct_scale_num(300, 300, 300, 300, 32, 32) == 1
    assert tc.dct_scale_num(300, 300, 300, 300, 40, 40) == 2
    assert tc.dct_scale_num(300, 300, 300, 300, 80, 80) == 4
    assert tc.dct_scale_num(100, 300, 300, 300, 224, 224) == 8  # a crop smaller than the output
    top, left, rows, cols, cropped = tc.decode_region(40, 50, 30, 20, 45, 60, 10, 40, 192, 256, 1.0)
    assert cropped and (top, left) == (32, 48) and top + rows == 40 + 30 + 8 and left + cols == 60 + 40 + 8
    assert not tc.decode_region(0, 0, 192, 256, 10, 10, 20, 20, 192, 256, 1.0)[4]  # the whole image
    assert not tc.decode_region(40, 50, 30, 20, 45, 60, 10, 40, 192, 256, 0.01)[4]  # region too large


# --- the decoder in FFCV Loaders --------------------------------------------------------------------------------

def test_raw_store_views_equal_the_oracle_for_any_workers_order_and_run(raw_store, coordinate_sources):
    images = [arrays[0] for _, arrays in sorted(coordinate_sources.items())]
    one = epoch_crops(raw_store, epoch=2, seed=7, workers=1, order_seed=0)
    assert sorted(one) == list(range(SAMPLES))
    for index, views in one.items():
        assert np.array_equal(views, reference_views(images[index], index, 2, 7, RESOLUTION)), index
    assert any(not np.array_equal(v[0], v[1]) for v in one.values())  # two different crops per image
    # another worker count and another sample order (batches composed differently, as in a resumed epoch)
    two = epoch_crops(raw_store, epoch=2, seed=7, workers=2, order_seed=5)
    assert all(np.array_equal(one[k], two[k]) for k in one)
    other_epoch = epoch_crops(raw_store, epoch=3, seed=7)
    other_seed = epoch_crops(raw_store, epoch=2, seed=8)
    for other in (other_epoch, other_seed):
        assert sum(np.array_equal(one[k], other[k]) for k in one) < 3


def test_same_seed_same_crops_in_two_loaders_and_epochs_change_without_recompiling(raw_store, coordinate_sources):
    images = [arrays[0] for _, arrays in sorted(coordinate_sources.items())]
    box: list = []
    first = epoch_crops(raw_store, epoch=0, seed=3, loader_box=box)
    loader, decoder = box
    code = loader.code
    again = epoch_crops(raw_store, epoch=0, seed=3)  # a second Loader
    assert all(np.array_equal(first[k], again[k]) for k in first)
    later = epoch_crops(raw_store, epoch=1, decoder=decoder, loader_box=box)  # the same Loader, next epoch
    assert sum(np.array_equal(first[k], later[k]) for k in first) < 3
    # progressive resizing: a new output size at the next epoch, no recompilation
    decoder.output_size = (24, 24)
    resized = epoch_crops(raw_store, epoch=1, decoder=decoder, loader_box=box)
    assert loader.code is code
    for index, views in resized.items():
        assert views.shape == (2, 24, 24, 3)
        assert np.array_equal(views, reference_views(images[index], index, 1, 3, 24)), index
    replay = epoch_crops(raw_store, epoch=0, decoder=decoder, loader_box=box)  # an epoch replayed (resume)
    decoder.output_size = (RESOLUTION, RESOLUTION)
    assert all(np.array_equal(replay[k], reference_views(images[k], k, 0, 3, 24)) for k in replay)


def test_crop_scale_statistics_through_the_loader_match_torchvision(raw_store):
    recipe = two_view_recipe("w/w", RESOLUTION)
    box: list = []
    areas = []
    for epoch in range(8):
        crops = epoch_crops(raw_store, epoch=epoch, views=(recipe.online, recipe.target),
                            decoder=box[1] if box else None, loader_box=box)
        batch = torch.from_numpy(np.stack(list(crops.values()))).float()  # (n, 2, H, W, 3)
        for view in range(2):
            areas.append(crop_areas(batch[:, view].permute(0, 3, 1, 2)))
    areas = torch.cat(areas)
    reference = torchvision_crop_areas(recipe)  # the baseline's RandomResizedCrop, measured the same way
    assert areas.min() > 0.2 - 0.03 and areas.max() <= 1.0 + 1e-6
    assert abs(areas.mean().item() - reference.mean().item()) < 0.04, (areas.mean(), reference.mean())


def test_jpeg_store_views_match_a_full_decode_reference(photo_store):
    images = stored_jpegs(photo_store)
    # no shortcut: full decode + crop + resize, exactly the reference
    exact = epoch_crops(photo_store, epoch=1, seed=2, dct_scaling=False, region_decode=False)
    assert sorted(exact) == list(range(len(images)))
    for index, views in exact.items():
        assert np.array_equal(views, reference_views(images[index], index, 1, 2, RESOLUTION)), index
    # reduced-size DCT decoding (1/2, 1/4, 1/8) and region decoding: close to the reference
    scaled_any = False
    shortcut = epoch_crops(photo_store, epoch=1, seed=2, workers=2, region_decode=True, region_max_fraction=1.0)
    for index, views in shortcut.items():
        reference = reference_views(images[index], index, 1, 2, RESOLUTION)
        difference = np.abs(views.astype(int) - reference)
        assert difference.mean() < 1.5 and difference.max() <= 16, (index, difference.mean(), difference.max())
        boxes = tc.two_crop_params(*images[index].shape[:2], VIEWS, 2, 1, index)
        scaled_any |= tc.dct_scale_num(boxes[0][2], boxes[0][3], boxes[1][2], boxes[1][3], RESOLUTION,
                                       RESOLUTION) < 8
    assert scaled_any  # the test really exercised the scaled decode


def test_the_former_opencv_resize_stays_selectable(raw_store, coordinate_sources):
    images = [arrays[0] for _, arrays in sorted(coordinate_sources.items())]
    views = epoch_crops(raw_store, epoch=1, seed=4, resize="opencv")
    for index, pair in views.items():
        assert np.array_equal(pair, reference_views(images[index], index, 1, 4, RESOLUTION, resize="opencv")), index
    with pytest.raises(ValueError, match="resize 'cubic'"):
        tc.TwoCropDecoder((8, 8), views=VIEWS, resize="cubic")


@pytest.fixture(scope="module")
def real_photo_store(tmp_path_factory):
    """Real photos (JPEG, PNG, grayscale, CMYK; 180 x 240 to 600 x 512) in a proportion store (JPEG or raw
    pixels) at full size."""
    root = tmp_path_factory.mktemp("real") / "photos"
    write_photo_folder(root)
    return make_store(root, None, "proportion", "--max-resolution", "1000")


def stored_images(path) -> list[tuple[np.ndarray, int]]:
    """(image, mode) of every sample as stored: raw pixels, or the stored JPEG decoded by Pillow."""
    import io

    from ffcv.reader import Reader
    from PIL import Image

    reader = Reader(path)
    data = np.memmap(path, "uint8", mode="r")
    size_at = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    images = []
    for field in reader.metadata["f0"]:
        ptr, height, width = int(field["data_ptr"]), int(field["height"]), int(field["width"])
        stored = np.asarray(data[ptr:ptr + size_at[ptr]])
        if field["mode"] == tc.JPG_MODE:
            images.append((np.asarray(Image.open(io.BytesIO(stored.tobytes())).convert("RGB")), tc.JPG_MODE))
        else:
            images.append((stored[:height * width * 3].reshape(height, width, 3), int(field["mode"])))
    return images


def test_views_of_real_photos_match_torchvision_resized_crop(real_photo_store):
    """Both decode-once views, from JPEG (DCT-scaled where the plan says so) or raw pixels, against torchvision's
    resized_crop(antialias=True) on the same stored image at the same boxes: the issue's bound is 0.01 (0-1)."""
    import torchvision.transforms.v2.functional as F

    size = 128  # small views of large crops: the 1/2 and 1/4 DCT-scaled decodes are exercised too
    crops = epoch_crops(real_photo_store, epoch=0, seed=1, size=size)
    modes, scaled = set(), 0
    for index, (image, mode) in enumerate(stored_images(real_photo_store)):
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        boxes = tc.two_crop_params(*image.shape[:2], VIEWS, 1, 0, index)
        for view, (i, j, h, w) in enumerate(boxes):
            reference = F.resized_crop(tensor, i, j, h, w, [size, size], antialias=True).permute(1, 2, 0).numpy()
            difference = np.abs(crops[index][view].astype(int) - reference).mean() / 255
            print(f"sample {index} ({'JPEG' if mode == tc.JPG_MODE else 'raw'}) view {view} {(i, j, h, w)}: "
                  f"{difference:.4f}")  # the README's figures (pytest -s)
            assert difference < 0.01, (index, view, (i, j, h, w), difference)
        modes.add(mode == tc.JPG_MODE)
        scaled += tc.dct_scale_num(boxes[0][2], boxes[0][3], boxes[1][2], boxes[1][3], size, size) < 8
    assert modes == {True, False} and scaled > 0


def test_any_image_shape_gives_the_oracles_views(tmp_path):
    """1 x 1, 4000 x 20, 20 x 4000 ...: both views, as the oracle makes them, without a crash."""
    images = odd_shape_images()
    path = write_raw_beton(str(tmp_path / "odd.beton"), images)
    pairs = epoch_crops(path, epoch=0, seed=0, size=32)
    for index, image in enumerate(images):
        assert np.array_equal(pairs[index], reference_views(image, index, 0, 0, 32)), image.shape
