"""Synthetic demo dataset for quick MSF smoke/demo runs on CPU.

Draft - design parameters still being tuned.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------
# Glyph classes as signed-distance functions on tile coordinates (u, v) in
# [-1, 1]^2 (v points down, as in image rows).  Negative inside the glyph.
# Every glyph is symmetric under u -> -u because RandomHorizontalFlip is part
# of both MSF views: a class that changes under a flip would be unlearnable.
# --------------------------------------------------------------------------


def _box(u, v, hw, hh):
    """SDF of an axis-aligned box with half-width hw and half-height hh."""
    du = np.abs(u) - hw
    dv = np.abs(v) - hh
    outside = np.hypot(np.maximum(du, 0), np.maximum(dv, 0))
    inside = np.minimum(np.maximum(du, dv), 0)
    return outside + inside


def _tri(u, v, up):
    """Approximate SDF of an isosceles triangle pointing up (or down)."""
    if not up:
        v = -v
    # apex at (0, -0.6), base from (-0.6, 0.5) to (0.6, 0.5)
    n = np.array([1.1, 0.6]) / np.hypot(1.1, 0.6)  # normal of the right edge
    side = np.abs(u) * n[0] + (v + 0.6) * n[1] - 0.0
    side = np.abs(u) * n[0] - (v + 0.6) * n[1] * -1  # placeholder, replaced below
    # edge through (0,-0.6) and (0.6,0.5): direction (0.6,1.1), outward normal (1.1,-0.6)
    e = (np.abs(u) * 1.1 - (v + 0.6) * 0.6) / np.hypot(1.1, 0.6)
    base = v - 0.5
    return np.maximum(e, base)


_T = 0.16  # stroke half-thickness in tile units
_L = 0.62  # glyph half-extent in tile units

GLYPHS = {
    "plus": lambda u, v: np.minimum(_box(u, v, _T, _L), _box(u, v, _L, _T)),
    "cross": lambda u, v: np.minimum(
        _box((u + v) / np.sqrt(2), (v - u) / np.sqrt(2), _T, _L * 1.2),
        _box((u + v) / np.sqrt(2), (v - u) / np.sqrt(2), _L * 1.2, _T),
    ),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.5) - _T,
    "disc": lambda u, v: np.hypot(u, v) - 0.45,
    "square": lambda u, v: np.abs(_box(u, v, 0.5, 0.5)) - _T,
    "tri_up": lambda u, v: _tri(u, v, True),
    "tri_down": lambda u, v: _tri(u, v, False),
    "hbar": lambda u, v: _box(u, v, _L * 1.2, _T),
    "vbar": lambda u, v: _box(u, v, _T, _L * 1.2),
    "tee": lambda u, v: np.minimum(_box(u, v + 0.45, _L, _T), _box(u, v, _T, _L)),
}
CLASS_NAMES = list(GLYPHS)


def _colour_field(rng, h, w, grid, sat):
    """Smooth random RGB field: random colours on a coarse grid, upsampled."""
    g = rng.uniform(0, 255, size=(grid, grid, 3))
    grey = g.mean(axis=2, keepdims=True)
    g = grey + sat * (g - grey)
    small = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)


def render_image(rng, cls, *, size_range=(40, 96), grid=(2, 4), sat=1.0,
                 amp=(0.15, 0.3), periods=(3.0, 5.0), jitter=0.0, polarity='random'):
    h, w = rng.integers(size_range[0], size_range[1] + 1, size=2)
    field = _colour_field(rng, h, w, int(rng.integers(grid[0], grid[1] + 1)), sat)
    p = min(h, w) / rng.uniform(*periods)  # glyph period in pixels
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ox, oy = rng.uniform(0, p, size=2)
    cx = np.floor((xs + ox) / p)
    cy = np.floor((ys + oy) / p)
    u = ((xs + ox) / p - cx) * 2 - 1
    v = ((ys + oy) / p - cy) * 2 - 1
    d = GLYPHS[cls](u, v)
    # ~1 px anti-aliased edge: d is in tile units, 1 px = 2/p tile units
    mask = np.clip(0.5 - d * p / 2, 0, 1)[..., None]
    a = rng.uniform(*amp) * {'random': rng.choice([-1.0, 1.0]), 'dark': -1.0, 'bright': 1.0}[polarity]
    img = field + a * 255 * mask
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def generate_demo_dataset(root, train_per_class, val_per_class, seed=0, n_classes=10,
                          quality=90, **render_kw):
    root = Path(root)
    names = CLASS_NAMES[:n_classes]
    counts = {}
    for split_id, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for ci, cls in enumerate(names):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, split_id, ci, i])
                render_image(rng, cls, **render_kw).save(d / f"{i:05d}.jpg", quality=quality)
            counts[f"{split}/{cls}"] = n
    return {"root": str(root), "classes": names, "train": train_per_class * len(names),
            "val": val_per_class * len(names)}
