"""Synthetic demo dataset for quick MSF demo runs on a CPU.

Each image is a periodic tiling of a small black glyph (the class: plus, cross,
ring, disc, ...) over a smooth random colour field (the nuisance).

Why this design
---------------
* The class must be something random-init features miss but augmentation
  invariance reveals.  Global-average-pooled features of a randomly
  initialised ResNet are dominated by colour, so a colour nuisance pushes
  random-init k-NN down (~0.25 with 10 classes, chance 0.10).
* The nuisance must NOT identify an image more easily than its class, or the
  MSF neighbour pull clusters images by the nuisance.  A single random colour
  per image fails that way (both views share it).  Here the colour varies
  smoothly *within* the image (a few random colours on a coarse grid,
  upsampled), so two RandomResizedCrops of one image see different colours,
  and ColorJitter/RandomGrayscale further break colour matching, while the
  glyph is the same in every crop.
* The glyph tiling covers the whole image, so any crop with scale 0.2-1 and
  aspect 3/4-4/3 still shows a few glyphs; the period is relative to the image
  side, so the varied image sizes do not change what a crop looks like.
* Every glyph is symmetric under a horizontal flip (RandomHorizontalFlip is in
  both views; a flip-dependent class could not be learned).  Vertical
  asymmetry is fine, so "tri_up" and "tri_down" are distinct classes.

Output layout (torchvision ImageFolder)::

    root/train/<class>/00000.jpg ...
    root/val/<class>/00000.jpg ...

Images are RGB JPEGs with independently drawn sides in ``size_range``.  Every
image is drawn from its own generator seeded by (seed, split, class, index),
so the output is byte-identical for a given seed and independent of the order
of generation or of ``train_per_class``/``val_per_class`` for the images that
both runs contain.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_prep.staging import OutputError, StagedPath, sigterm_as_ctrl_c

# --------------------------------------------------------------------------
# Glyphs: signed-distance functions on tile coordinates (u, v) in [-1, 1]^2,
# v pointing down as image rows do; negative inside the glyph.  Using SDFs
# gives a cheap, resolution-independent anti-aliased edge.
# --------------------------------------------------------------------------

_T = 0.16  # stroke half-thickness, tile units
_L = 0.62  # glyph half-extent, tile units


def _box(u, v, hw, hh):
    """SDF of an axis-aligned box with half-width ``hw`` and half-height ``hh``."""
    du = np.abs(u) - hw
    dv = np.abs(v) - hh
    outside = np.hypot(np.maximum(du, 0), np.maximum(dv, 0))
    inside = np.minimum(np.maximum(du, dv), 0)
    return outside + inside


def _triangle(u, v, up):
    """Approximate SDF of an isosceles triangle (apex up or down).

    Apex at (0, -0.6), base from (-0.6, 0.5) to (0.6, 0.5).  The max of the
    half-plane distances is exact inside and near the edges, which is all the
    anti-aliasing needs.
    """
    if not up:
        v = -v
    # side through the apex and (0.6, 0.5): outward normal (1.1, -0.6)
    side = (np.abs(u) * 1.1 - (v + 0.6) * 0.6) / np.hypot(1.1, 0.6)
    return np.maximum(side, v - 0.5)


def _rot45(u, v):
    return (u + v) / np.sqrt(2), (v - u) / np.sqrt(2)


GLYPHS = {
    "cross": lambda u, v: np.minimum(_box(*_rot45(u, v), _T, _L * 1.2),
                                     _box(*_rot45(u, v), _L * 1.2, _T)),
    "disc": lambda u, v: np.hypot(u, v) - 0.45,
    "hbar": lambda u, v: _box(u, v, _L * 1.2, _T),
    "plus": lambda u, v: np.minimum(_box(u, v, _T, _L), _box(u, v, _L, _T)),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.5) - _T,
    "square": lambda u, v: np.abs(_box(u, v, 0.5, 0.5)) - _T,
    "tee": lambda u, v: np.minimum(_box(u, v + 0.45, _L, _T), _box(u, v, _T, _L)),
    "tri_down": lambda u, v: _triangle(u, v, up=False),
    "tri_up": lambda u, v: _triangle(u, v, up=True),
    "vbar": lambda u, v: _box(u, v, _T, _L * 1.2),
}
CLASS_NAMES = sorted(GLYPHS)  # ImageFolder order


def _colour_field(rng, h, w, grid, saturation, contrast):
    """Smooth random RGB field: random colours on a ``grid`` x ``grid`` lattice,
    bicubically upsampled to (h, w), then desaturated and contrast-reduced
    around mid-grey."""
    g = rng.uniform(0, 255, size=(grid, grid, 3))
    grey = g.mean(axis=2, keepdims=True)
    g = grey + saturation * (g - grey)
    small = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))
    field = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)
    return 128 + contrast * (field - 128)


def render_image(rng, cls, *, size_range=(40, 96), grid=(2, 4), saturation=1.0,
                 contrast=0.5, amplitude=(0.6, 0.8), glyphs_per_side=(2.0, 3.5)):
    """Render one image of class ``cls`` with generator ``rng``; returns a PIL RGB image.

    ``amplitude`` is how much (fraction of 255) the glyph darkens the field;
    ``glyphs_per_side`` is how many glyph periods fit along the shorter side.
    The defaults were tuned so that random-init k-NN is low (~0.25) while a
    few minutes of MSF training on a CPU lifts it well above (see report).
    """
    h, w = (int(s) for s in rng.integers(size_range[0], size_range[1] + 1, size=2))
    field = _colour_field(rng, h, w, int(rng.integers(grid[0], grid[1] + 1)),
                          saturation, contrast)

    period = min(h, w) / rng.uniform(*glyphs_per_side)  # pixels
    ox, oy = rng.uniform(0, period, size=2)              # random lattice phase
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = (xs + ox) / period, (ys + oy) / period
    u = (fx - np.floor(fx)) * 2 - 1
    v = (fy - np.floor(fy)) * 2 - 1
    dist = GLYPHS[cls](u, v)
    # 1 px = 2 / period tile units -> about one pixel of anti-aliased edge
    mask = np.clip(0.5 - dist * period / 2, 0, 1)[..., None]

    img = field - rng.uniform(*amplitude) * 255 * mask
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


MARKER = "summary.json"  # written by msf_fast.demo when the images are complete
DEMO_IMAGE = re.compile(r"\d{5}\.jpg")


class NotDemoData(OutputError):
    """A folder the demo data would replace holds something else (a user's dataset given as the demo's folder)."""


def not_demo_images(split: Path) -> str | None:
    """What in `split` the demo did not write (None when it holds only class folders of demo images)."""
    if not split.is_dir():
        return "a file"
    for folder in split.iterdir():
        if not folder.is_dir() or folder.name not in CLASS_NAMES:
            return repr(folder.name)
        for image in folder.iterdir():
            if not DEMO_IMAGE.fullmatch(image.name):
                return repr(f"{folder.name}/{image.name}")
    return None


def check_replaceable(root: Path) -> None:
    """NotDemoData when `root`'s train/ or val/ hold anything the demo did not write."""
    for split in ("train", "val"):
        foreign = not_demo_images(root / split) if (root / split).exists() else None
        if foreign:
            raise NotDemoData(f"{root / split} holds {foreign}, not the demo's images: the demo data would replace "
                              "it; give another folder")


def generate_demo_dataset(root, train_per_class, val_per_class, seed=0, *,
                          n_classes=10, jpeg_quality=90, overwrite=True, **render_kw):
    """Write the demo dataset under ``root`` (ImageFolder layout) and return a summary.

    ``root/train`` and ``root/val`` are deleted first when ``overwrite`` is
    true (so no stale images survive a smaller regeneration), otherwise their
    existence is an error.  Extra keyword arguments go to ``render_image``.
    """
    if not 1 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"n_classes must be in 1..{len(CLASS_NAMES)}")
    root = Path(root)
    names = CLASS_NAMES[:n_classes]
    splits = (("train", train_per_class), ("val", val_per_class))
    for split, _ in splits:
        if (root / split).exists() and not overwrite:
            raise FileExistsError(root / split)
    check_replaceable(root)  # before anything is deleted
    (root / MARKER).unlink(missing_ok=True)  # it describes the images about to be replaced
    root.mkdir(parents=True, exist_ok=True)
    # each split is written under a hidden name and takes its place whole (replacing the old one): a Ctrl-C or
    # SIGTERM while the images are drawn leaves no half-written split that a run could be pointed at
    with sigterm_as_ctrl_c():
        for split_id, (split, n) in enumerate(splits):
            with StagedPath(str(root / split), is_dir=True) as staged:
                for class_id, cls in enumerate(names):
                    out = Path(staged.temporary) / cls
                    out.mkdir()
                    for i in range(n):
                        rng = np.random.default_rng([seed, split_id, class_id, i])
                        render_image(rng, cls, **render_kw).save(out / f"{i:05d}.jpg", quality=jpeg_quality)

    return {
        "root": str(root),
        "classes": names,
        "train_images": train_per_class * len(names),
        "val_images": val_per_class * len(names),
        "seed": seed,
    }
