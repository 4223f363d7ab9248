"""The photometric part of a view recipe as batched tensor ops, on whatever device the batch is on.

The FFCV backend decodes, random-resized-crops on the CPU as uint8; this module
does the rest of a `ViewRecipe` on the training device, per sample, without Python loops over
samples: colour jitter (per-sample factors and per-sample random order, as torchvision's
ColorJitter) -> grayscale -> Gaussian blur -> solarize -> horizontal flip -> normalize.

Semantics follow torchvision's functional ops on float images in [0, 1]:
adjust_brightness / adjust_contrast / adjust_saturation / adjust_hue, rgb_to_grayscale
(0.2989, 0.587, 0.114), gaussian_blur (reflect padding, weights exp(-0.5 (x / sigma)^2)
normalized), solarize (pixel >= threshold -> 1 - pixel), hflip.

Randomness: every parameter is drawn on the CPU from the `torch.Generator` passed in
(`draw_params`), so a seed gives the same parameters whatever the device, and the same number
of random values is drawn whatever the recipe. Work is done in float32; the output is NCHW in
channels-last memory, in the requested dtype.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision ColorJitter's op indices


@dataclass
class ViewParams:
    """Per-sample parameters of one view for a batch of n images (CPU tensors, length n).

    Factors of an op the recipe disables are the identity (1 for brightness/contrast/saturation,
    0 for hue); `order` is each sample's permutation of the 4 jitter ops (0 brightness,
    1 contrast, 2 saturation, 3 hue), as torchvision ColorJitter's `fn_idx`.
    """

    jitter: torch.Tensor      # bool (n,)
    brightness: torch.Tensor  # float32 (n,)
    contrast: torch.Tensor    # float32 (n,)
    saturation: torch.Tensor  # float32 (n,)
    hue: torch.Tensor         # float32 (n,), in [-0.5, 0.5]
    order: torch.Tensor       # int64 (n, 4)
    grayscale: torch.Tensor   # bool (n,)
    blur: torch.Tensor        # bool (n,)
    sigma: torch.Tensor       # float32 (n,)
    solarize: torch.Tensor    # bool (n,)
    flip: torch.Tensor        # bool (n,)

    def __len__(self) -> int:
        return len(self.flip)


def draw_params(view: ViewRecipe, n: int, generator: torch.Generator | None = None) -> ViewParams:
    """Draw n samples' parameters on the CPU from `generator` (torch's default one if None).

    Ranges as torchvision: brightness/contrast/saturation ~ U(max(0, 1 - x), 1 + x),
    hue ~ U(-h, h), sigma ~ U(*blur_sigma); each mask is True with the recipe's probability.
    Always draws the same 14 uniform numbers per sample, so the stream does not depend on the recipe.
    """
    u = torch.rand(n, 14, generator=generator)
    order = torch.argsort(u[:, 10:14], dim=1)  # a uniformly random permutation per sample

    def factor(strength: float, column: int) -> torch.Tensor:
        if strength == 0 or view.jitter_p == 0:
            return torch.ones(n)
        low, high = max(0.0, 1.0 - strength), 1.0 + strength
        return low + (high - low) * u[:, column]

    hue = (2 * u[:, 4] - 1) * view.hue if view.hue and view.jitter_p else torch.zeros(n)
    low, high = view.blur_sigma
    sigma = low + (high - low) * u[:, 7] if view.blur_p else torch.zeros(n)
    return ViewParams(
        jitter=u[:, 0] < view.jitter_p,
        brightness=factor(view.brightness, 1),
        contrast=factor(view.contrast, 2),
        saturation=factor(view.saturation, 3),
        hue=hue,
        order=order,
        grayscale=u[:, 5] < view.grayscale_p,
        blur=u[:, 6] < view.blur_p,
        sigma=sigma,
        solarize=u[:, 8] < view.solarize_p,
        flip=u[:, 9] < view.flip_p,
    )


def blur_radius(sigma: torch.Tensor | float, size: int | None = None) -> torch.Tensor:
    """Kernel radius for each sigma: r = ceil(3 sigma), at least 1, and at most size - 1 (the
    largest reflect padding an image side of `size` allows). Kernel size = 2 r + 1
    (sigma in [0.1, 2] gives sizes 3 .. 13)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    radius = torch.ceil(3 * sigma).long().clamp_(min=1)
    return radius.clamp_(max=size - 1) if size is not None else radius


def gaussian_kernels(sigma: torch.Tensor, radius: torch.Tensor, width: int) -> torch.Tensor:
    """(n, 2 * width + 1) float32 1-D kernels, each sample's own (exp(-0.5 (x / sigma)^2) on
    -r..r, normalized) zero-padded to the common width."""
    x = torch.arange(-width, width + 1, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (x / sigma[:, None].float()).pow(2))
    pdf = torch.where(x.abs() <= radius[:, None], pdf, torch.zeros(()))
    return pdf / pdf.sum(dim=1, keepdim=True)


def _to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Per-sample parameters (a CPU tensor) on `device`. To a GPU through pinned memory, without blocking the host:
    a copy from pageable memory first waits for all the work queued on the GPU, once per op and batch. (The pinned
    block is reused only once its copy has run: torch's caching host allocator records the copy's stream.)"""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


# ---- ops on a float32 (k, 3, H, W) contiguous tensor, in place; factors are (k,) on its device --

def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(k, 1, H, W) luma, computed exactly as torchvision's rgb_to_grayscale."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul_(_per_sample(factor)).clamp_(0, 1)


def adjust_contrast_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # mean of the grayscale image = the grayscale-weighted sum of the channel means
    channel_means = x.mean(dim=(2, 3))
    mean = (GRAY_WEIGHTS[0] * channel_means[:, 0] + GRAY_WEIGHTS[1] * channel_means[:, 1]
            + GRAY_WEIGHTS[2] * channel_means[:, 2])
    f = _per_sample(factor)
    return torch.addcmul(_per_sample(mean) * (1 - f), x, f, out=x).clamp_(0, 1)


def adjust_saturation_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor)
    gray = grayscale(x).mul_(1 - f)
    return torch.addcmul(gray, x, f, out=x).clamp_(0, 1)


HUE_CHUNK_CPU = 4  # samples per hue pass on CPU: keeps its 7 float planes in cache


def adjust_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    chunk = HUE_CHUNK_CPU if x.device.type == "cpu" else len(x)
    for start in range(0, len(x), chunk):
        _adjust_hue_(x[start:start + chunk], shift[start:start + chunk])
    return x


def _adjust_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue rotation through HSV, in closed form. With chroma c = max - min and the hue H in
    sextants (in [-1, 5]), HSV->RGB gives channel n (R: 5, G: 3, B: 1) = max - c * f(k),
    k = (n + H + 6 shift) mod 6, f(k) = clamp(min(k, 4 - k), 0, 1); equivalently
    max - 2c + c * clamp(|m|, 1, 2) with m = k - 2 wrapped to [-3, 3]. This is torchvision's
    rgb->hsv, shift mod 1, hsv->rgb up to float rounding (the map is continuous in H).
    Bool masks, torch.where and remainder are slow on CPU, so the sextant choice uses sign()
    (0 exactly where a channel is the max; ties go to r, then g, as torchvision)."""
    r, g, b = x.unbind(1)
    maxc, base, chroma, not_r, not_g, hue, tmp = torch.empty((7, *r.shape), device=x.device).unbind(0)
    torch.maximum(torch.maximum(r, g, out=maxc), b, out=maxc)
    minc = torch.minimum(torch.minimum(r, g, out=base), b, out=base)
    torch.sub(maxc, minc, out=chroma)
    torch.sub(maxc, r, out=not_r).sign_()
    torch.sub(maxc, g, out=not_g).sign_()
    # c * H: g - b where r is the max, else b - r + 2c where g is, else r - g + 4c
    torch.sub(b, r, out=hue).add_(chroma, alpha=2)                  # g's
    torch.sub(r, g, out=tmp).add_(chroma, alpha=4).sub_(hue)         # b's - g's
    hue.addcmul_(not_g, tmp)                                         # g's, else b's
    torch.sub(g, b, out=tmp)                                         # r's
    hue.sub_(tmp).mul_(not_r).add_(tmp)                              # r's, else the above
    hue.div_(torch.clamp_min(chroma, torch.finfo(torch.float32).tiny, out=tmp))  # c == 0: 0
    base.mul_(2).sub_(maxc)                                          # min -> max - 2c
    shift6 = 6 * shift.view(-1, 1, 1).to(torch.float32)
    m = not_r
    for channel, offset in enumerate((3.0, 1.0, -1.0)):  # n - 2
        torch.add(hue, shift6 + offset, out=m)  # in [-5, 11]
        m.sub_(torch.div(m, 6, out=not_g).round_(), alpha=6).abs_().clamp_(1, 2)
        torch.addcmul(base, chroma, m, out=x[:, channel])
    return x


def solarize_(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x >= threshold, 1 - x, x, out=x)


BLUR_CHUNK_CPU = 8  # samples per blur pass on CPU: keeps the padded planes in cache


def gaussian_blur_(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur in place, each sample with its own sigma (CPU tensor, (k,)) and
    kernel radius r = blur_radius(sigma, min(H, W)), i.e. kernel size 2 r + 1: reflect padding,
    then a horizontal and a vertical pass of multiply-adds of shifted views, with per-sample
    kernels zero-padded to the largest radius of the chunk (so each sample gets exactly its own
    kernel). Exact float32 on every device (no cuDNN/TF32); on CPU in chunks of BLUR_CHUNK_CPU
    samples, which is fastest when the samples come sorted by radius (apply_view does that)."""
    k, c, h, w = x.shape
    radius = blur_radius(sigma, min(h, w))
    chunk = BLUR_CHUNK_CPU if x.device.type == "cpu" else k
    for start in range(0, k, chunk):
        part, rad = x[start:start + chunk], radius[start:start + chunk]
        width = int(rad.max())
        taps = _to_device(gaussian_kernels(sigma[start:start + chunk], rad, width), x.device)
        taps = taps.view(-1, 1, 1, 1, 2 * width + 1)
        padded = F.pad(part, (width, width, 0, 0), mode="reflect")
        rows = torch.mul(padded[..., 0:w], taps[..., 0])
        for j in range(1, 2 * width + 1):
            rows.addcmul_(padded[..., j:j + w], taps[..., j])
        padded = F.pad(rows, (0, 0, width, width), mode="reflect")
        torch.mul(padded[..., 0:h, :], taps[..., 0], out=part)
        for j in range(1, 2 * width + 1):
            part.addcmul_(padded[..., j:j + h, :], taps[..., j])
    return x


JITTER_OPS = {BRIGHTNESS: adjust_brightness_, CONTRAST: adjust_contrast_,
              SATURATION: adjust_saturation_, HUE: adjust_hue_}


# ---- the view -----------------------------------------------------------------------------------

def _apply_to(x: torch.Tensor, mask: torch.Tensor, fn, key: torch.Tensor | None = None) -> None:
    """x[mask] = fn(x[mask], cpu_indices, device_indices), in place; fn may return its input or
    a new tensor. Nothing is done when the (CPU) mask is all False. With a (CPU) `key`, the
    selected samples reach fn sorted by it."""
    if not bool(mask.any()):
        return
    cpu = mask.nonzero().squeeze(1)
    if key is not None:
        cpu = cpu[torch.argsort(key[cpu], stable=True)]
    if len(cpu) == len(x) and bool((cpu == torch.arange(len(x))).all()):
        result = fn(x, cpu, None)
        if result is not x:
            x.copy_(result)
    else:
        index = _to_device(cpu, x.device)
        x.index_copy_(0, index, fn(x.index_select(0, index), cpu, index))


def _jitter_plan(view: ViewRecipe, params: ViewParams, by_step: bool) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """[(ops, mask)]: apply `ops` in turn to the samples of `mask`, the list in turn; together
    they give every jittered sample its enabled jitter ops in its own order. Ops with strength 0
    are skipped (as torchvision's ColorJitter does).

    by_step=False: one entry per distinct order (at most 24): each sample is gathered once, and
    each op runs once per order (best on CPU, where gathers cost memory traffic).
    by_step=True: for each position s, one entry per op: the samples whose s-th op it is
    (at most 16 entries: fewer, larger op calls; best where each op call has a fixed launch cost)."""
    enabled = [op for op, strength in ((BRIGHTNESS, view.brightness), (CONTRAST, view.contrast),
                                       (SATURATION, view.saturation), (HUE, view.hue)) if strength]
    if not enabled or view.jitter_p == 0 or not bool(params.jitter.any()):
        return []
    keep = torch.zeros(4, dtype=torch.bool)
    keep[enabled] = True
    sequences = params.order[keep[params.order]].view(len(params), len(enabled))  # enabled ops, in order
    if by_step:
        return [((op,), params.jitter & (sequences[:, step] == op))
                for step in range(len(enabled)) for op in enabled]
    codes = (sequences * torch.tensor([4 ** i for i in range(len(enabled))])).sum(1)
    codes = torch.where(params.jitter, codes, torch.full_like(codes, -1))
    plan = []
    for code in torch.unique(codes).tolist():
        if code >= 0:
            mask = codes == code
            plan.append((tuple(sequences[int(mask.nonzero()[0, 0])].tolist()), mask))
    return plan


def _workspace(workspace: torch.Tensor | None, shape, device) -> torch.Tensor:
    if (workspace is not None and workspace.shape == shape and workspace.device == device
            and workspace.dtype == torch.float32 and workspace.is_contiguous()):
        return workspace
    return torch.empty(shape, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=16)
def _per_channel(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(1, 3, 1, 1) float32 constants on `device`, made once: a blocking copy from pageable host memory every batch
    would wait for the GPU's queued work."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


@torch.no_grad()
def apply_view(images: torch.Tensor, params: ViewParams, view: ViewRecipe,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               dtype: torch.dtype = torch.float32, workspace: torch.Tensor | None = None,
               jitter_by_step: bool | None = None) -> torch.Tensor:
    """The photometric part of `view` with the given (CPU) params on a batch (N, 3, H, W):
    uint8 in 0..255 or float in [0, 1], any memory format, any device; the input is not
    modified. Returns a new (N, 3, H, W) `dtype` tensor in channels-last memory, normalized with
    mean/std.

    Order: flip (done first: it commutes with every other op), jitter (per sample, in its own
    order), grayscale, blur, solarize, normalize; all in float32 in an NCHW buffer, `workspace`
    when it is a float32 contiguous tensor of the batch's shape on its device (reusing one saves
    page-faulting a fresh buffer every call on CPU), else a new one. jitter_by_step: how the
    per-sample jitter order is batched (see _jitter_plan; same result either way); None picks
    by order on CPU, by step elsewhere. `params` are CPU tensors (`draw_params`)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (N, 3, H, W) batch, got {tuple(images.shape)}")
    if len(params) != len(images):
        raise ValueError(f"{len(params)} params for {len(images)} images")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got {images.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating output dtype, got {dtype}")
    device = images.device
    x = _workspace(workspace, images.shape, device)
    x.copy_(images)
    if images.dtype == torch.uint8:
        x.div_(255)
    if view.flip_p > 0:
        _apply_to(x, params.flip, lambda sub, cpu, index: sub.flip(3))

    factors = _to_device(torch.stack([params.brightness, params.contrast, params.saturation, params.hue],
                                     dim=1).float(), device)  # (N, 4), one transfer
    if jitter_by_step is None:
        jitter_by_step = device.type != "cpu"
    for ops, mask in _jitter_plan(view, params, jitter_by_step):
        def jitter(sub, cpu, index, ops=ops):
            group = factors if index is None else factors.index_select(0, index)
            for op in ops:
                JITTER_OPS[op](sub, group[:, op])
            return sub
        _apply_to(x, mask, jitter)

    if view.grayscale_p > 0:
        _apply_to(x, params.grayscale, lambda sub, cpu, index: grayscale(sub).expand_as(sub))
    if view.blur_p > 0:
        _apply_to(x, params.blur, lambda sub, cpu, index: gaussian_blur_(sub, params.sigma[cpu]),
                  key=params.sigma if device.type == "cpu" else None)
    if view.solarize_p > 0:
        _apply_to(x, params.solarize, lambda sub, cpu, index: solarize_(sub, view.solarize_threshold))

    x.sub_(_per_channel(tuple(mean), device))
    x.div_(_per_channel(tuple(std), device))
    return x.to(dtype=dtype, memory_format=torch.channels_last, copy=True)


class BatchedViewAugment(torch.nn.Module):
    """One view's photometric augmentation and flip on a batch.

    forward(images, generator=None, return_params=False) draws each sample's parameters from
    `generator` (CPU; torch's default when None) and returns the augmented batch, or
    (batch, ViewParams) with return_params=True. Keeps a float32 work buffer between calls.
    """

    def __init__(self, view: ViewRecipe, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.view, self.mean, self.std, self.dtype = view, tuple(mean), tuple(std), dtype
        self._workspace: torch.Tensor | None = None

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                return_params: bool = False):
        params = draw_params(self.view, len(images), generator)
        self._workspace = _workspace(self._workspace, images.shape, images.device)
        out = apply_view(images, params, self.view, self.mean, self.std, self.dtype, workspace=self._workspace)
        return (out, params) if return_params else out

    def extra_repr(self) -> str:
        return f"view={self.view}, dtype={self.dtype}"
