"""The augmentation recipe of MSF, stated once; every backend (torchvision, FFCV, DALI) builds from it.

A two-view recipe is named "T/O": the target view's augmentation, then the online view's
(w = weak, s = strong). The paper's default is "w/s": the target sees the weak view.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewRecipe:
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5  # fraction of the pixel range


WEAK = ViewRecipe()
STRONG = ViewRecipe(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                    grayscale_p=0.2, blur_p=0.5)
VIEWS = {"w": WEAK, "s": STRONG}
# The linear probe's training augmentation (the paper's protocol: RandomResizedCrop at the default scale, flip).
PROBE_VIEW = ViewRecipe(crop_scale=(0.08, 1.0))


@dataclass(frozen=True)
class TwoViewRecipe:
    target: ViewRecipe
    online: ViewRecipe
    resolution: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def eval_resize(self) -> int:
        """Short side before the centre crop at evaluation: 256 for 224, the same ratio elsewhere."""
        return round(self.resolution * 256 / 224)


RECIPE_NAMES = ("w/s", "w/w", "s/w", "s/s")


def two_view_recipe(name: str, resolution: int) -> TwoViewRecipe:
    if name not in RECIPE_NAMES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPE_NAMES)}")
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    target, online = name.split("/")
    return TwoViewRecipe(target=VIEWS[target], online=VIEWS[online], resolution=resolution)
