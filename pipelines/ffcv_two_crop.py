"""Two random-resized crops from one decode: a seeded FFCV decoder for the two views of MSF.

`TwoCropDecoder` is an FFCV (1.0.2) decoder `Operation` for an `RGBImageField`. For each sample it reads the
stored image once (a JPEG through libffcv's `imdecode`, or raw pixels: 'proportion' stores mix both), draws two
torchvision-style RandomResizedCrop boxes (view 0 = online, view 1 = target, each with its own scale and ratio
ranges) and resizes both into one `(B, 2, H, W, 3)` uint8 batch, in one pass over the batch (numba threads, one
sample per thread). `out[:, 0]` and `out[:, 1]` are the two views; splitting them copies nothing.

Randomness: a counter-based generator
-------------------------------------
Every random number is a pure function of (seed, epoch, dataset sample index, view, draw number): a chain of
splitmix64 mixers (`uniform`, the top 53 bits of the final 64-bit hash as a float in [0, 1)). The same code exists
twice, in pure Python (ints masked to 64 bits) and compiled by numba (uint64 arithmetic that wraps), and both give
the same bits. The crop sampler (`crop_params`, torchvision's `RandomResizedCrop.get_params`: 10 tries, then the
centre-crop fallback with the ratio clamp) is built from one source twice, over each generator. Draws 2t and 2t+1
are try t's area and log-aspect; draws 20 and 21 are the crop's row and column. So a sample's crops depend on
nothing else: not on the number of workers (numba threads), on the batch a sample lands in, on the order, on the
run, or on where an epoch was resumed.

How the epoch reaches the compiled code
---------------------------------------
FFCV compiles the pipeline once (seconds here; 15-40 s for big pipelines) and then calls the compiled stage with
only `batch_indices`, the field's metadata, the storage state and the operations' buffers
(`ffcv/loader/epoch_iterator.py` `run_pipeline`): nothing per epoch. Numba freezes every global or closure numpy
array into the compiled code as a constant, so a captured array that Python later changes is not seen. The decoder
therefore owns a small int64 array `[seed, epoch]` and bakes only its *address* (a plain integer) into the
generated code; at the start of every batch the compiled code copies the 16 bytes from that address with libffcv's
`my_memcpy`, called through its own ctypes declaration with integer (uint64) arguments. Python changes the values
with `set_epoch` / `seed`, which must happen before `iter(loader)`: the loader's epoch thread starts decoding
(batches_ahead) batches at once. The array lives as long as the decoder, and the decoder as long as the loader's
pipeline, so the address stays valid. (FFCV-SSL instead patches FFCV's epoch iterator to pass each stage a batch
counter, which restarts at 0 with every epoch's iterator, and reseeds numba's global generator per sample with
seed + position in batch + batch_size * counter: crops tied to batch positions, not to samples or epochs. Stock
1.0.2 passes no counter.)

The output size is read from the output buffer at run time, and FFCV sizes the buffers again for every epoch
(`Graph.allocate_memory` calls `declare_state_and_memory`), so changing `output_size` between epochs takes effect
at the next `iter(loader)` without recompiling (setting `loader.recompile = True` also works, at compile cost).

JPEG: reduced-size DCT decoding and region decoding
---------------------------------------------------
libffcv's `imdecode(..., scale_num, scale_denom, enable_crop, ...)` (libjpeg-turbo: `tjTransform` lossless crop,
then `tjDecompress2` at a scaled size, TJFLAG_FASTDCT) does both through ffcv 1.0.2's bindings:
- DCT scaling (`dct_scaling=True`, default): when both crops, scaled by n/8 (n in 1, 2, 4), stay at least as large
  as the output in both dimensions, the image is decoded at n/8 with the smallest such n; crop boxes are mapped to
  the scaled image (to the nearest scaled pixel: within half an output pixel). Only power-of-two factors: on a
  smooth 256x192 JPEG, 1/8, 1/4, 1/2 took 31, 38, 48 us against 71 us for the full decode, but 3/8 took 63 us and
  6/8, 7/8 took 150-194 us. It applies only when both crops are at least twice the output: never for a 256-px
  store at 112 px or more; for 500x375 images with scale (0.2, 1) crops, to 7 % of images at 160 px, 40 % at
  128 px, 65 % at 112 px. On 500x375 1/f-noise photos the 1/2 decode saved only 6-11 % of the decode (Huffman
  decoding dominates) but halved the two resizes (INTER_AREA from a 4x smaller image).
- Region decoding (`region_decode`, default off): only the union of the two crops (start aligned down to 16 pixels,
  the largest common MCU; 8 pixels of context after its end) is decoded, when it covers at most
  `region_max_fraction` of the image. The lossless `tjTransform` Huffman-decodes the image and re-encodes the
  region, so it costs more than it saves unless the region is small (a 128x96 region of a smooth 256x192 JPEG:
  55 us; the full image through the transform: 122 us; a plain full decode: 71 us; on 1/f-noise photos a region of
  <= 0.5 of the image took 1.5-1.7x the full decode). The union of two views' crops covers a median 76-80 % of the
  image, so it is left off. If libjpeg-turbo refuses a crop (an MCU wider than 16 pixels) or a scaled decode
  fails, the image is decoded whole instead.
With both off, a JPEG view equals full decode + crop + resize exactly.

Resizing
--------
`resize="antialias"` (default): `pipelines.antialias_resize`, torchvision's antialiased bilinear (the filter of the
baseline's RandomResizedCrop), to within one level; the crop box, scaled by n/8 onto a DCT-scaled decode, stays
exact (a fractional box). On 500x375 images it took 1/4-1/5 of the time of `resize="opencv"`: libffcv's
`resize_crop`, OpenCV INTER_AREA on the integer box (rounded to the scaled image), the former path, kept for
comparison (`bench loader --backend ffcv-opencv`).
"""
from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numba
import numpy as np

from pipelines.antialias_resize import c_resize_box

MASK64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_ROOT = 0x6A09E667F3BCC909  # the chain's starting value
_INV53 = 1.0 / 9007199254740992.0  # 2**-53
TRIES = 10
ROW_DRAW, COL_DRAW = 2 * TRIES, 2 * TRIES + 1
ALIGN = 16  # region offsets are aligned to the largest common JPEG MCU (4:2:0)
DCT_NUMS = (1, 2, 4)  # scale factors n/8 worth using (libjpeg-turbo's fast scaled IDCTs)
JPG_MODE = 0  # ffcv.fields.rgb_image.IMAGE_MODES['jpg']
RESIZES = ("antialias", "opencv")


# ---------------------------------------------------------------------------------------------------------------
# The counter-based generator, pure Python (the oracle)
# ---------------------------------------------------------------------------------------------------------------

def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * _MIX1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & MASK64
    return z ^ (z >> 31)


def _absorb(h: int, x: int) -> int:
    return _mix(h ^ _mix((x + _GOLDEN) & MASK64))


def stream_key(seed: int, epoch: int, index: int, view: int) -> int:
    """The 64-bit key of one sample's view in one epoch (negative inputs wrap as two's complement)."""
    h = _ROOT
    for x in (seed, epoch, index, view):
        h = _absorb(h, x & MASK64)
    return h


def draw(key: int, number: int) -> float:
    """Draw `number` of a stream: a float in [0, 1) (53 random bits)."""
    return (_absorb(key, number & MASK64) >> 11) * _INV53


def uniform(seed: int, epoch: int, index: int, view: int, number: int) -> float:
    """The generator as one pure function: (seed, epoch, sample index, view, draw number) -> [0, 1)."""
    return draw(stream_key(seed, epoch, index, view), number)


# ---------------------------------------------------------------------------------------------------------------
# The same generator in numba (uint64 arithmetic wraps; every operand is uint64 so numba never goes to float)
# ---------------------------------------------------------------------------------------------------------------

_U_GOLDEN, _U_MIX1, _U_MIX2, _U_ROOT = (np.uint64(c) for c in (_GOLDEN, _MIX1, _MIX2, _ROOT))
_U11, _U27, _U30, _U31 = (np.uint64(c) for c in (11, 27, 30, 31))


@numba.njit(cache=False)
def _mix_nb(z):
    z = (z ^ (z >> _U30)) * _U_MIX1
    z = (z ^ (z >> _U27)) * _U_MIX2
    return z ^ (z >> _U31)


@numba.njit(cache=False)
def _absorb_nb(h, x):
    return _mix_nb(h ^ _mix_nb(x + _U_GOLDEN))


@numba.njit(cache=False)
def stream_key_nb(seed, epoch, index, view):
    h = _U_ROOT
    h = _absorb_nb(h, np.uint64(np.int64(seed)))
    h = _absorb_nb(h, np.uint64(np.int64(epoch)))
    h = _absorb_nb(h, np.uint64(np.int64(index)))
    h = _absorb_nb(h, np.uint64(np.int64(view)))
    return h


@numba.njit(cache=False)
def draw_nb(key, number):
    return np.float64(_absorb_nb(key, np.uint64(np.int64(number))) >> _U11) * _INV53


@numba.njit(cache=False)
def uniform_nb(seed, epoch, index, view, number):
    return draw_nb(stream_key_nb(seed, epoch, index, view), number)


# ---------------------------------------------------------------------------------------------------------------
# The crop sampler: torchvision's RandomResizedCrop.get_params, one source, built over either generator
# ---------------------------------------------------------------------------------------------------------------

def _make_sampler(key_fn: Callable, draw_fn: Callable) -> Callable:
    def sample(height, width, scale_a, scale_b, ratio_a, ratio_b, seed, epoch, index, view):
        key = key_fn(seed, epoch, index, view)
        area = height * width
        log_a = math.log(ratio_a)
        log_b = math.log(ratio_b)
        for t in range(TRIES):
            target_area = area * (scale_a + (scale_b - scale_a) * draw_fn(key, 2 * t))
            aspect = math.exp(log_a + (log_b - log_a) * draw_fn(key, 2 * t + 1))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                i = min(int(draw_fn(key, ROW_DRAW) * (height - h + 1)), height - h)
                j = min(int(draw_fn(key, COL_DRAW) * (width - w + 1)), width - w)
                return i, j, h, w
        # torchvision's fallback: the centre crop, its aspect clamped to the ratio range
        in_ratio = width / height
        if in_ratio < min(ratio_a, ratio_b):
            w = width
            h = round(w / min(ratio_a, ratio_b))
        elif in_ratio > max(ratio_a, ratio_b):
            h = height
            w = round(h * max(ratio_a, ratio_b))
        else:
            w = width
            h = height
        return (height - h) // 2, (width - w) // 2, h, w

    return sample


_crop_params_py = _make_sampler(stream_key, draw)
crop_params_nb = numba.njit(cache=False)(_make_sampler(stream_key_nb, draw_nb))
crop_params_nb.__doc__ = "crop_params compiled by numba: the same arguments, unpacked (scale and ratio as 4 floats)."


def crop_params(height: int, width: int, scale: Sequence[float], ratio: Sequence[float], seed: int, epoch: int,
                index: int, view: int) -> tuple[int, int, int, int]:
    """Pure-Python crop box (i, j, h, w) of view `view` of sample `index` in `epoch`: the decoder's, bit for bit."""
    return _crop_params_py(int(height), int(width), float(scale[0]), float(scale[1]), float(ratio[0]),
                           float(ratio[1]), int(seed), int(epoch), int(index), int(view))


def view_ranges(views) -> tuple[tuple[tuple[float, float], tuple[float, float]], ...]:
    """((scale, ratio), (scale, ratio)) from two ViewRecipe-like objects (crop_scale, crop_ratio) or pairs."""
    ranges = []
    for view in views:
        if hasattr(view, "crop_scale"):
            scale, ratio = view.crop_scale, view.crop_ratio
        else:
            scale, ratio = view
        ranges.append(((float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))))
    if len(ranges) != 2:
        raise ValueError(f"TwoCropDecoder needs exactly two views, got {len(ranges)}")
    return tuple(ranges)


def two_crop_params(height: int, width: int, views, seed: int, epoch: int, index: int) -> list:
    """Both views' boxes [(i, j, h, w), (i, j, h, w)] of one sample (view 0 = online, view 1 = target)."""
    return [crop_params(height, width, scale, ratio, seed, epoch, index, v)
            for v, (scale, ratio) in enumerate(view_ranges(views))]


# ---------------------------------------------------------------------------------------------------------------
# Decode planning (integer-only helpers, compiled; `.py_func` runs them in Python)
# ---------------------------------------------------------------------------------------------------------------

@numba.njit(cache=False)
def dct_scale_num(h0, w0, h1, w1, out_h, out_w):
    """Smallest n in DCT_NUMS with both crops, scaled by n/8, at least the output size; else 8 (no scaling)."""
    for n in DCT_NUMS:
        if (h0 * n >= 8 * out_h and w0 * n >= 8 * out_w and h1 * n >= 8 * out_h and w1 * n >= 8 * out_w):
            return n
    return 8


@numba.njit(cache=False)
def decode_region(i0, j0, h0, w0, i1, j1, h1, w1, height, width, max_fraction):
    """(top, left, rows, cols, cropped): the region of the image to decode. The union of the two boxes, its start
    aligned down to ALIGN pixels and 8 pixels of context added after its end (within the image); the whole image
    when that region is larger than max_fraction of it."""
    top = (min(i0, i1) // ALIGN) * ALIGN
    left = (min(j0, j1) // ALIGN) * ALIGN
    bottom = min(height, max(i0 + h0, i1 + h1) + 8)
    right = min(width, max(j0 + w0, j1 + w1) + 8)
    rows = bottom - top
    cols = right - left
    if rows * cols > max_fraction * height * width or (rows == height and cols == width):
        return 0, 0, height, width, False
    return top, left, rows, cols, True


@numba.njit(cache=False)
def scaled_span(start, size, n, limit):
    """[a, b) of a box edge range [start, start + size) in an image decoded at n/8 (nearest scaled pixel)."""
    a = min((start * n + 4) // 8, limit - 1)
    b = min(((start + size) * n + 4) // 8, limit)
    return a, max(b, a + 1)


@numba.njit(nogil=True, cache=False)
def scaled_box(i, j, h, w, top, left, n):
    """The stored image's crop (i, j, h, w) on its region from (top, left) decoded at n/8: the fractional box
    (top, left, height, width) and the clip (rows and columns its taps stay within: the crop's own)."""
    f = n / 8.0
    y0, x0 = (i - top) * f, (j - left) * f
    y1, x1 = (i + h - top) * f, (j + w - left) * f
    return (y0, x0, y1 - y0, x1 - x0, int(math.floor(y0)), int(math.floor(x0)), int(math.ceil(y1)),
            int(math.ceil(x1)))


# ---------------------------------------------------------------------------------------------------------------
# libffcv's C functions, and the [seed, epoch] array read through its address inside compiled code
# ---------------------------------------------------------------------------------------------------------------

class _LibFFCV:
    """libffcv's C functions declared again with integer (address) arguments, called directly from compiled code.

    The stock decoders compile ffcv.libffcv's Python wrappers into new numba dispatchers in every `generate_code`
    (FFCV calls it again every epoch); when an old Loader is garbage-collected, numba 0.68 prints
    "Exception ignored ... KeyError" from those dispatchers' finalizers (seen with the stock
    RandomResizedCropRGBImageDecoder too). Plain ctypes calls make no dispatcher, so this decoder prints none."""

    def __init__(self):
        import ffcv._libffcv

        library = ctypes.CDLL(ffcv._libffcv.__file__)
        # library[name] makes a new function object: ffcv's own declarations (void* arguments) stay as they are
        self.memcpy = library["my_memcpy"]  # (source, destination, bytes)
        self.memcpy.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64]
        self.memcpy.restype = None
        u32 = ctypes.c_uint32
        self.imdecode = library["imdecode"]  # (source, size, height, width, destination, crop_height, crop_width,
        #                                       offset_x, offset_y, scale_num, scale_denom, enable_crop, hflip)
        self.imdecode.argtypes = [ctypes.c_uint64, ctypes.c_uint64, u32, u32, ctypes.c_uint64, u32, u32, u32, u32,
                                  u32, u32, ctypes.c_bool, ctypes.c_bool]
        self.imdecode.restype = ctypes.c_int
        self.resize = library["resize"]  # (0, source, rows, cols, row0, row1, col0, col1, destination, rows, cols)
        self.resize.argtypes = 11 * [ctypes.c_int64]
        self.resize.restype = None


_LIB: _LibFFCV | None = None


def _lib() -> _LibFFCV:
    global _LIB
    if _LIB is None:
        _LIB = _LibFFCV()
    return _LIB


# ---------------------------------------------------------------------------------------------------------------
# The FFCV decoder
# ---------------------------------------------------------------------------------------------------------------

def _decoder_base():
    """FFCV's plain image decoder class, imported without letting `import ffcv` change torch's thread count."""
    import torch

    threads = torch.get_num_threads()
    try:
        from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    finally:
        torch.set_num_threads(threads)
    return SimpleRGBImageDecoder


try:  # FFCV is optional: the generator and the sampler work without it
    _Base = _decoder_base()
except ImportError:  # pragma: no cover - exercised only without ffcv
    _Base = object


class SeededDecoder(_Base):  # a SimpleRGBImageDecoder, so it is also taken as the first op of a pipeline list
    """An FFCV image decoder of seeded views: its compiled code reads [seed, epoch] from a fixed address, so a new
    epoch (or pass) needs no recompilation. Subclasses generate the code and say their output's shape."""

    def __init__(self, output_size, seed: int = 0):
        if _Base is object:
            raise ImportError(f"{type(self).__name__} needs FFCV")
        super().__init__()
        self.output_size = tuple(int(s) for s in output_size)
        self._state = np.zeros(2, np.int64)  # [seed, epoch]: read by the compiled code through its address
        self.seed = seed

    @property
    def seed(self) -> int:
        return int(self._state[0])

    @seed.setter
    def seed(self, value: int) -> None:
        self._state[0] = np.int64(int(value))

    @property
    def epoch(self) -> int:
        return int(self._state[1])

    def set_epoch(self, epoch: int) -> None:
        """The epoch (or pass) of the views that the next `iter(loader)` decodes (call it before that)."""
        self._state[1] = np.int64(int(epoch))

    def view_memory(self, previous_state, shape: tuple):
        """FFCV's state and allocations for a uint8 output of `shape` per sample, and a scratch buffer that holds
        the largest stored image decoded."""
        from ffcv.pipeline.allocation_query import AllocationQuery

        height, width = self.output_size
        if height <= 0 or width <= 0:
            raise ValueError(f"output_size must be positive, got {self.output_size}")
        largest = np.uint64(self.metadata["width"].max()) * np.uint64(self.metadata["height"].max())
        uint8 = np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=uint8),
                (AllocationQuery(shape, uint8), AllocationQuery((largest * np.uint64(3),), uint8)))


class TwoCropDecoder(SeededDecoder):
    """FFCV decoder: each image decoded once, two seeded random-resized crops -> (B, 2, H, W, 3) uint8.

    output_size: (H, W) of both views; may change between epochs (takes effect at the next `iter(loader)`).
    views: (online, target) as ViewRecipe-like objects (crop_scale, crop_ratio) or ((scale), (ratio)) pairs.
    seed: the crops' seed (any int). Call `set_epoch(epoch)` before each `iter(loader)`.
    dct_scaling / region_decode / region_max_fraction: the JPEG shortcuts (module docstring).
    resize: "antialias" (torchvision's filter) or "opencv" (INTER_AREA, the former path); read when FFCV generates
    the pipeline's code (when the Loader is made, or at an epoch with `loader.recompile = True`).
    """

    def __init__(self, output_size, views, seed: int = 0, dct_scaling: bool = True, region_decode: bool = False,
                 region_max_fraction: float = 0.3, resize: str = "antialias"):
        super().__init__(output_size, seed)
        self.views = view_ranges(views)
        self.dct_scaling = bool(dct_scaling)
        self.region_decode = bool(region_decode)
        self.region_max_fraction = float(region_max_fraction)
        if resize not in RESIZES:
            raise ValueError(f"resize {resize!r}: expected one of {', '.join(RESIZES)}")
        self.resize = resize

    def declare_state_and_memory(self, previous_state):
        height, width = self.output_size
        return self.view_memory(previous_state, (2, height, width, 3))

    def generate_code(self) -> Callable:
        from ffcv.pipeline.compiler import Compiler

        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        lib = _lib()
        memcpy = lib.memcpy
        imdecode = lib.imdecode
        opencv_resize = lib.resize
        antialias = self.resize == "antialias"
        resize = c_resize_box() if antialias else None
        box = scaled_box
        sample = crop_params_nb
        plan_scale = dct_scale_num
        plan_region = decode_region
        span = scaled_span
        state_address = int(self._state.ctypes.data)
        (s0a, s0b), (r0a, r0b) = self.views[0]
        (s1a, s1b), (r1a, r1b) = self.views[1]
        use_scaling = self.dct_scaling
        use_region = self.region_decode
        max_fraction = self.region_max_fraction
        jpg = JPG_MODE

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            state = np.empty(2, np.int64)  # [seed, epoch], as Python last set them
            memcpy(state_address, state.ctypes.data, 16)
            seed = state[0]
            epoch = state[1]
            out_h = destination.shape[2]
            out_w = destination.shape[3]
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field['data_ptr'], storage_state)
                height = np.int64(field['height'])
                width = np.int64(field['width'])
                index = np.int64(source_ix)
                i0, j0, h0, w0 = sample(height, width, s0a, s0b, r0a, r0b, seed, epoch, index, 0)
                i1, j1, h1, w1 = sample(height, width, s1a, s1b, r1a, r1b, seed, epoch, index, 1)
                if field['mode'] == jpg:
                    temp = temp_storage[dst_ix]
                    n = 8
                    if use_scaling:
                        n = plan_scale(h0, w0, h1, w1, out_h, out_w)
                    top, left, rows, cols, cropped = 0, 0, height, width, False
                    if use_region:
                        top, left, rows, cols, cropped = plan_region(i0, j0, h0, w0, i1, j1, h1, w1, height, width,
                                                                     max_fraction)
                    result = imdecode(image_data.ctypes.data, image_data.size, height, width, temp.ctypes.data,
                                      rows, cols, left, top, n, 8, cropped, False)
                    if result != 0 and (cropped or n != 8):  # refused crop or scale: decode the whole image
                        top, left, rows, cols, cropped, n = 0, 0, height, width, False, 8
                        imdecode(image_data.ctypes.data, image_data.size, height, width, temp.ctypes.data,
                                 height, width, 0, 0, 1, 1, False, False)
                    scaled_rows = (rows * n + 7) // 8
                    scaled_cols = (cols * n + 7) // 8
                    image = temp[:scaled_rows * scaled_cols * 3].reshape(scaled_rows, scaled_cols, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                    top, left, n = 0, 0, 8
                view0 = destination[dst_ix, 0]
                view1 = destination[dst_ix, 1]
                if antialias:
                    rows, cols = image.shape[0], image.shape[1]
                    y, x, h, w, ct, cl, cb, cr = box(i0, j0, h0, w0, top, left, n)
                    resize(image.ctypes.data, rows, cols, y, x, h, w, ct, cl, cb, cr, view0.ctypes.data, out_h, out_w)
                    y, x, h, w, ct, cl, cb, cr = box(i1, j1, h1, w1, top, left, n)
                    resize(image.ctypes.data, rows, cols, y, x, h, w, ct, cl, cb, cr, view1.ctypes.data, out_h, out_w)
                else:
                    rows, cols = image.shape[0], image.shape[1]
                    a0, b0 = span(i0 - top, h0, n, rows)
                    c0, d0 = span(j0 - left, w0, n, cols)
                    a1, b1 = span(i1 - top, h1, n, rows)
                    c1, d1 = span(j1 - left, w1, n, cols)
                    opencv_resize(0, image.ctypes.data, rows, cols, a0, b0, c0, d0, view0.ctypes.data, out_h, out_w)
                    opencv_resize(0, image.ctypes.data, rows, cols, a1, b1, c1, d1, view1.ctypes.data, out_h, out_w)
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode
