"""Crop + antialiased resize of uint8 RGB images (HWC), compiled by numba: torchvision's kernel, vectorised.

`resize_box(src, top, left, height, width, clip..., dst)` fills `dst` (out_h, out_w, 3) from the box of `src`
whose top-left corner is (top, left) and whose size is (height, width), in source pixels, as floats: a box may
start and end between pixels. That is what the evaluation transform needs (torchvision resizes the whole image and
then crops, so its crop is a fractional box of the source) and what a JPEG decoded at n/8 of its size gives (a box
scaled by n/8). Filter taps never leave the clip rows and columns: torchvision's `resized_crop` crops first, so for
a crop the clip is the crop itself; for the evaluation view it is the whole image.

The filter is torchvision's (and Pillow's) antialiased bilinear: for an output pixel whose centre falls at source
coordinate c (scale s = box size / output size), the taps are the source pixels j with centres within
support = max(s, 1) of c, weighted by the triangle 1 - |j + 0.5 - c| / support and normalised to sum 1, separably
in each axis. Arithmetic is float32 throughout (torchvision rounds to uint8 between its two passes: the two differ
by at most one level, on few pixels).

How it is fast
--------------
The vertical pass is plain: each output row is a weighted sum of whole source rows, vectorised along the row.
The horizontal pass is the hard one: every output pixel reads its own run of source pixels, which vectorises only
through gathers, and gathers ran slower than scalar code on the Xeon measured (as on many CPUs). So the output is
made in blocks of ROWS (8) rows: the vertical pass's rows are interleaved (pixel, channel, row), after which one
output pixel's taps for all 8 rows and 3 channels are contiguous runs of LANES (24) floats, summed with 8-float
vectors (LLVM turns the interleaving into register permutes). Each output pixel's last taps (one to four: a
filter is as wide as it needs, not rounded up) are summed and converted to uint8 in one step, and the block's
rows are put back in place by 8 x 8 byte transposes. Of one 330x300 -> 224x224 view's ~56 us on a Zen 5 core: the
vertical pass 16, the interleave 15, the horizontal pass 17, the transposes 4.5, the weights 3.3.

Two numba habits decide the speed of such loops:
- array indices are cast to unsigned (`U`): numba wraps negative signed indices, and that select turned LLVM's
  contiguous loads into gathers;
- LLVM vectorised the 24-float sums only in some shapes (a constant trip count was unrolled into scalar code, a
  run-time one left to a scalar remainder), so `_sum_taps` writes them as LLVM vector operations itself.
`python -m msf_fast.bench resize` measures it against OpenCV and torch. The functions are cached on disk (numba
`cache=True`): they took ~8 s to compile, in every process that resizes.
"""
from __future__ import annotations

import ctypes
import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

ROWS = 8  # output rows per block: the horizontal pass runs over ROWS x 3 interleaved floats
CHANNELS = 3
LANES = ROWS * CHANNELS
VECTOR = 8  # floats per LLVM vector in _sum_taps (one AVX register; LLVM splits it where registers are narrower)
U = np.uint64  # array indices as unsigned: numba then skips its negative-index wraparound


@numba.njit(nogil=True, cache=True)
def axis_taps(start, length, lo, hi, out_size):
    """(first, count, weights) of one axis: output i reads source indices first[i] .. first[i] + count[i] - 1 with
    weights[i, :count[i]] (float32, summing to 1; zeros after, up to the widest count). The box
    [start, start + length) maps onto out_size outputs; taps stay within [lo, hi) (hi > lo)."""
    scale = length / out_size
    support = max(scale, 1.0)
    first = np.empty(out_size, np.int64)
    count = np.empty(out_size, np.int64)
    widest = 1
    for i in range(out_size):
        center = start + (i + 0.5) * scale
        a = max(int(math.floor(center - support + 0.5)), lo)
        b = min(int(math.floor(center + support + 0.5)), hi)
        if b <= a:  # a box outside the clip (or of no size): the nearest pixel
            a = min(max(int(math.floor(center)), lo), hi - 1)
            b = a + 1
        first[i] = a
        count[i] = b - a
        widest = max(widest, b - a)
    weights = np.zeros((out_size, widest), np.float32)
    inverse = 1.0 / support
    for i in range(out_size):
        offset = first[i] + 0.5 - (start + (i + 0.5) * scale)  # tap k sits at offset + k from the centre
        total = 0.0
        for k in range(count[i]):
            w = max(0.0, 1.0 - abs(offset + k) * inverse)
            weights[i, k] = w
            total += w
        for k in range(count[i]):
            weights[i, k] = weights[i, k] / total if total > 0.0 else 1.0 / count[i]
    return first, count, weights


@numba.njit(nogil=True, cache=True, fastmath=True)
def _weighted_sum(out, at, data, base, step, weights, taps, n, bias):
    """out[at + t] = bias + sum over k < taps of weights[k] * data[base + k * step + t], for t < n; four taps a
    pass over out."""
    k = 0
    while k < taps:
        b0 = base + k * step
        w0 = weights[k]
        if taps - k >= 4:
            b1, b2, b3 = b0 + step, b0 + 2 * step, b0 + 3 * step
            w1, w2, w3 = weights[k + 1], weights[k + 2], weights[k + 3]
            for t in range(n):
                value = (w0 * np.float32(data[U(b0 + t)]) + w1 * np.float32(data[U(b1 + t)])
                         + w2 * np.float32(data[U(b2 + t)]) + w3 * np.float32(data[U(b3 + t)]))
                out[U(at + t)] = value + (bias if k == 0 else out[U(at + t)])
            k += 4
        elif taps - k >= 2:
            b1 = b0 + step
            w1 = weights[k + 1]
            for t in range(n):
                value = w0 * np.float32(data[U(b0 + t)]) + w1 * np.float32(data[U(b1 + t)])
                out[U(at + t)] = value + (bias if k == 0 else out[U(at + t)])
            k += 2
        else:
            for t in range(n):
                out[U(at + t)] = w0 * np.float32(data[U(b0 + t)]) + (bias if k == 0 else out[U(at + t)])
            k += 1


def _make_sum_taps(taps: int, finish: bool):
    """An intrinsic: total[j] = (out[at + j] if accumulate else 0.5) + sum over t < taps of
    weights[w + t] * data[base + t * LANES + j], for j < LANES, as LLVM vector operations (float32 arrays); stored
    to out[at + j] (float32), or with `finish` to pixels[at + j] as uint8 (truncated: totals lie in [0.5, 256))."""

    @intrinsic
    def sum_taps(typingctx, out, at, data, base, weights, w, accumulate, pixels):
        def codegen(context, builder, signature, args):
            out_v, at_v, data_v, base_v, weights_v, w_v, accumulate_v, pixels_v = args
            out_array = context.make_array(signature.args[0])(context, builder, out_v)
            data_array = context.make_array(signature.args[2])(context, builder, data_v)
            weight_array = context.make_array(signature.args[4])(context, builder, weights_v)
            pixel_array = context.make_array(signature.args[7])(context, builder, pixels_v)
            vector = ir.VectorType(ir.FloatType(), VECTOR)
            lane = ir.IntType(32)

            def pointer(array, index, kind=vector):
                return builder.bitcast(builder.gep(array.data, [index]), kind.as_pointer())

            def splat(value):
                one = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(lane, 0))
                return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                              ir.Constant(ir.VectorType(lane, VECTOR), [0] * VECTOR))

            index = at_v.type
            factors = [splat(builder.load(builder.gep(weight_array.data, [builder.add(w_v, ir.Constant(index, t))])))
                       for t in range(taps)]
            half = splat(ir.Constant(ir.FloatType(), 0.5))
            for chunk in range(0, LANES, VECTOR):
                position = builder.add(at_v, ir.Constant(index, chunk))
                target = pointer(out_array, position)
                total = builder.select(accumulate_v, builder.load(target, align=4), half)
                for t in range(taps):
                    source = pointer(data_array, builder.add(base_v, ir.Constant(index, t * LANES + chunk)))
                    product = builder.fmul(factors[t], builder.load(source, align=4), flags=("contract",))
                    total = builder.fadd(total, product, flags=("contract",))
                if finish:
                    whole = builder.fptosi(total, ir.VectorType(lane, VECTOR))
                    bytes_ = builder.trunc(whole, ir.VectorType(ir.IntType(8), VECTOR))
                    builder.store(bytes_, pointer(pixel_array, position, ir.VectorType(ir.IntType(8), VECTOR)),
                                  align=1)
                else:
                    builder.store(total, target, align=4)
            return context.get_dummy_value()

        return types.void(out, at, data, base, weights, w, accumulate, pixels), codegen

    return sum_taps


_sum_four_taps = _make_sum_taps(4, False)
_finish_one_tap, _finish_two_taps, _finish_three_taps, _finish_four_taps = (_make_sum_taps(taps, True)
                                                                            for taps in range(1, 5))


@intrinsic
def _transpose_block(typingctx, scratch, k, rows, at, stride):
    """rows[at + r * stride + k + j] = scratch[ROWS * (k + j) + r] for r, j < ROWS: one 8 x 8 byte transpose, as
    one 64-byte load, shuffles and eight 8-byte stores (a loop of byte copies ran 3x slower)."""

    def codegen(context, builder, signature, args):
        scratch_v, k_v, rows_v, at_v, stride_v = args
        scratch_array = context.make_array(signature.args[0])(context, builder, scratch_v)
        rows_array = context.make_array(signature.args[2])(context, builder, rows_v)
        byte, lane = ir.IntType(8), ir.IntType(32)
        block = ir.VectorType(byte, ROWS * ROWS)
        eight = ir.VectorType(byte, ROWS)
        index = k_v.type
        start = builder.mul(k_v, ir.Constant(index, ROWS))
        source = builder.bitcast(builder.gep(scratch_array.data, [start]), block.as_pointer())
        values = builder.load(source, align=1)
        for r in range(ROWS):
            picked = builder.shuffle_vector(values, ir.Constant(block, ir.Undefined),
                                            ir.Constant(ir.VectorType(lane, ROWS), [ROWS * j + r for j in range(ROWS)]))
            offset = builder.add(builder.add(at_v, builder.mul(stride_v, ir.Constant(index, r))), k_v)
            target = builder.bitcast(builder.gep(rows_array.data, [offset]), eight.as_pointer())
            builder.store(picked, target, align=1)
        return context.get_dummy_value()

    return types.void(scratch, k, rows, at, stride), codegen


@numba.njit(nogil=True, cache=True)
def _horizontal(mid, first, weights, first_col, out, scratch):
    """scratch[LANES * x + j] = uint8(0.5 + sum over output pixel x's taps k of weights[x, k] *
    mid[LANES * (tap pixel) + j]): the taps four at a time, the last one to four converted on the way out (weights
    are zero past each pixel's own taps); `out` holds the float partial sums of filters wider than four."""
    width = weights.shape[1]
    flat = weights.reshape(-1)
    for x in range(first.shape[0]):
        at = x * LANES
        base = (first[x] - first_col) * LANES
        k = 0
        while width - k > 4:
            _sum_four_taps(out, at, mid, base + k * LANES, flat, x * width + k, k > 0, scratch)
            k += 4
        rest = width - k
        if rest == 4:
            _finish_four_taps(out, at, mid, base + k * LANES, flat, x * width + k, k > 0, scratch)
        elif rest == 3:
            _finish_three_taps(out, at, mid, base + k * LANES, flat, x * width + k, k > 0, scratch)
        elif rest == 2:
            _finish_two_taps(out, at, mid, base + k * LANES, flat, x * width + k, k > 0, scratch)
        else:
            _finish_one_tap(out, at, mid, base + k * LANES, flat, x * width + k, k > 0, scratch)


@numba.njit(nogil=True, cache=True, fastmath=True)
def _interleave(rows, n, mid):
    """mid[ROWS * t + r] = rows[r * n + t]: the block's rows interleaved (LLVM vectorises this 8-way pattern with
    register permutes; as a loop over r it did not)."""
    for t in range(n):
        mid[U(8 * t)] = rows[U(t)]
        mid[U(8 * t + 1)] = rows[U(n + t)]
        mid[U(8 * t + 2)] = rows[U(2 * n + t)]
        mid[U(8 * t + 3)] = rows[U(3 * n + t)]
        mid[U(8 * t + 4)] = rows[U(4 * n + t)]
        mid[U(8 * t + 5)] = rows[U(5 * n + t)]
        mid[U(8 * t + 6)] = rows[U(6 * n + t)]
        mid[U(8 * t + 7)] = rows[U(7 * n + t)]


@numba.njit(nogil=True, cache=True)
def _deinterleave(scratch, n, rows, at, stride):
    """rows[at + r * stride + t] = scratch[ROWS * t + r] for t < n, r < ROWS: the block's rows back in place."""
    t = 0
    while t + 8 <= n:
        _transpose_block(scratch, t, rows, at, stride)
        t += 8
    for t in range(t, n):
        for r in range(ROWS):
            rows[U(at + r * stride + t)] = scratch[U(ROWS * t + r)]


@numba.njit(nogil=True, cache=True)
def resize_box(src, top, left, height, width, clip_top, clip_left, clip_bottom, clip_right, dst):
    """dst (out_h, out_w, 3) uint8, C-contiguous <- the box (top, left, height, width) of src (H, W, 3) uint8,
    C-contiguous, antialiased; taps within rows [clip_top, clip_bottom) and columns [clip_left, clip_right)
    (clamped to the image, at least one pixel). Any sizes >= 1, any box (one outside the clip reads its edge)."""
    src_h, src_w = src.shape[0], src.shape[1]
    out_h, out_w = dst.shape[0], dst.shape[1]
    r0 = min(max(clip_top, 0), src_h - 1)
    r1 = min(max(clip_bottom, r0 + 1), src_h)
    c0 = min(max(clip_left, 0), src_w - 1)
    c1 = min(max(clip_right, c0 + 1), src_w)
    ys, y_count, wy = axis_taps(top, max(height, 1e-6), r0, r1, out_h)
    xs, x_count, wx = axis_taps(left, max(width, 1e-6), c0, c1, out_w)
    first_col = xs[0]
    cols = xs[out_w - 1] + x_count[out_w - 1] - first_col  # source columns the output reads
    n = cols * CHANNELS
    flat = src.reshape(-1)
    row_bytes = src_w * CHANNELS
    vertical = np.empty(ROWS * n, np.float32)
    # + weights' width in pixels: a pixel's taps may run past the last column read (zero weights on finite values)
    mid = np.zeros((cols + wx.shape[1]) * LANES, np.float32)
    out = np.empty(out_w * LANES, np.float32)
    row = out_w * CHANNELS
    scratch = np.empty(ROWS * row, np.uint8)  # the block's output, interleaved as `out`
    last = np.empty(ROWS * row, np.uint8)  # a last block of fewer than ROWS rows goes here first
    pixels = dst.reshape(-1)
    for i0 in range(0, out_h, ROWS):
        for r in range(ROWS):
            i = min(i0 + r, out_h - 1)  # the last block repeats the last row
            _weighted_sum(vertical, r * n, flat, ys[i] * row_bytes + first_col * CHANNELS, row_bytes, wy[i],
                          y_count[i], n, np.float32(0.0))
        _interleave(vertical, n, mid)
        _horizontal(mid, xs, wx, first_col, out, scratch)
        if i0 + ROWS <= out_h:
            _deinterleave(scratch, row, pixels, i0 * row, row)
        else:
            _deinterleave(scratch, row, last, 0, row)
            for t in range((out_h - i0) * row):
                pixels[U(i0 * row + t)] = last[U(t)]


@numba.njit(nogil=True, cache=True)
def resize_crop(src, top, left, height, width, dst):
    """torchvision's resized_crop(src, top, left, height, width, dst's size, antialias=True): an integer crop."""
    resize_box(src, float(top), float(left), float(height), float(width), top, left, top + height, left + width,
               dst)


_C_RESIZE_BOX = None


def c_resize_box():
    """resize_box as a C function (a ctypes object numba-compiled code can call), compiled once per process:
    (src address, src_h, src_w, top, left, height, width, clip_top, clip_left, clip_bottom, clip_right,
    dst address, out_h, out_w). FFCV's pipelines call it so: a numba function they called directly had its code
    linked into theirs and optimised again for every Loader (seconds each)."""
    global _C_RESIZE_BOX
    if _C_RESIZE_BOX is None:
        pointer, size, scalar = types.CPointer(types.uint8), types.int64, types.float64
        signature = types.void(pointer, size, size, scalar, scalar, scalar, scalar, size, size, size, size, pointer,
                               size, size)

        def resize(src, src_h, src_w, top, left, height, width, clip_top, clip_left, clip_bottom, clip_right, dst,
                   out_h, out_w):
            resize_box(numba.carray(src, (src_h, src_w, CHANNELS)), top, left, height, width, clip_top, clip_left,
                       clip_bottom, clip_right, numba.carray(dst, (out_h, out_w, CHANNELS)))

        compiled = numba.cfunc(signature, nopython=True, cache=True)(resize)
        address, size_t, real = ctypes.c_uint64, ctypes.c_int64, ctypes.c_double
        prototype = ctypes.CFUNCTYPE(None, address, size_t, size_t, real, real, real, real, size_t, size_t, size_t,
                                     size_t, address, size_t, size_t)
        _C_RESIZE_BOX = (compiled, prototype(compiled.address))  # the cfunc object keeps the code alive
    return _C_RESIZE_BOX[1]


def centre_box(height: int, width: int, resize: int, out_h: int, out_w: int) -> tuple[float, float, float, float]:
    """(top, left, box height, box width) in source pixels of torchvision's Resize(resize) (shorter side) +
    CenterCrop((out_h, out_w)) on a height x width image (its fractional box in the original)."""
    return centre_box_nb(height, width, resize, out_h, out_w)


@numba.njit(nogil=True, cache=True)
def centre_box_nb(height, width, resize, out_h, out_w):
    if height <= width:
        new_h, new_w = resize, int(resize * width / height)
    else:
        new_h, new_w = int(resize * height / width), resize
    new_h = max(new_h, 1)
    new_w = max(new_w, 1)
    scale_y = height / new_h
    scale_x = width / new_w
    crop_top = int(round((new_h - out_h) / 2.0))
    crop_left = int(round((new_w - out_w) / 2.0))
    return crop_top * scale_y, crop_left * scale_x, out_h * scale_y, out_w * scale_x


def compile_ahead() -> None:
    """Compile every function numba caches here once, so that later processes load them (0.5 s) instead of
    compiling them (8 s) each: `make setup` calls it, before a test run or the demo starts several at once."""
    source, view = np.zeros((4, 4, CHANNELS), np.uint8), np.empty((2, 2, CHANNELS), np.uint8)
    resize_crop(source, 0, 0, 4, 4, view)
    centre_box(4, 4, 4, 2, 2)
    c_resize_box()
