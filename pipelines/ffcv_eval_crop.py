"""The evaluation views from a `.beton`, as torchvision makes them: an FFCV decoder for `FFCVEvalLoader`.

`EvalCropDecoder` writes one (H, W, 3) uint8 view per sample, resized with `pipelines.antialias_resize`
(torchvision's antialiased bilinear):
- centre (default): torchvision's Resize(eval_resize) + CenterCrop((H, W)). torchvision resizes the whole image
  and then crops, so the view is a fractional box of the stored image (`centre_box`), with filter taps allowed
  anywhere in the image. FFCV's stock CenterCropRGBImageDecoder crops the square of side
  int(H / eval_resize x shorter side) and resizes that with OpenCV INTER_AREA: 0.0100-0.0423 (median 0.0204)
  mean absolute difference from torchvision on tests/photo_cases.py's photos, mostly geometry; this one
  0.0032-0.0053 from torchvision on the same stored images;
- random (`scale`, `ratio` given): the linear probe's RandomResizedCrop and RandomHorizontalFlip (`flip_p`),
  torchvision's sampler over the seeded counter-based generator of `ffcv_two_crop` (seed, pass, sample; the flip
  is draw FLIP_DRAW): the probe's views repeat from run to run (FFCV's stock decoder and flip draw from numba's
  unseeded generator; its flip, as a separate op, also took 9 s more to compile). Call `set_epoch(pass)` before
  each pass.
JPEGs are decoded at n/8 of their size (n in 1, 2, 4) when the view's box stays at least twice the output size
there (`box_scale_num`); the box is scaled by n/8, exactly.
"""
from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

from pipelines.antialias_resize import c_resize_box, centre_box_nb
from pipelines.ffcv_two_crop import (COL_DRAW, DCT_NUMS, JPG_MODE, SeededDecoder, _lib, crop_params_nb, scaled_box,
                                     uniform_nb)

FLIP_DRAW = COL_DRAW + 1  # the draw after the crop's: whether a random view is mirrored


@numba.njit(nogil=True, cache=False)
def box_scale_num(height, width, out_h, out_w):
    """Smallest n in DCT_NUMS with the box (height x width source pixels), scaled by n/8, at least twice the
    output; else 8. Twice: decoded at 1/2 and then filtered at scale 1, a 600 x 512 photo's centre view was
    0.0103 away from torchvision's (0.0040 decoded whole): the scaled IDCT is a cruder filter than the triangle."""
    for n in DCT_NUMS:
        if height * n >= 16 * out_h and width * n >= 16 * out_w:
            return n
    return 8


class EvalCropDecoder(SeededDecoder):
    """FFCV decoder: each image -> one (H, W, 3) uint8 view, the centre view of torchvision's evaluation transform
    or (with scale and ratio) a seeded random resized crop."""

    def __init__(self, output_size, eval_resize: int = 256, scale=None, ratio=(3 / 4, 4 / 3), flip_p: float = 0.0,
                 seed: int = 0):
        super().__init__(output_size, seed)  # the state's epoch is the pass
        self.eval_resize = int(eval_resize)
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)

    def declare_state_and_memory(self, previous_state):
        height, width = self.output_size
        return self.view_memory(previous_state, (height, width, 3))

    def generate_code(self) -> Callable:
        from ffcv.pipeline.compiler import Compiler

        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        lib = _lib()
        memcpy, imdecode = lib.memcpy, lib.imdecode
        resize = c_resize_box()
        centre, sample, draw = centre_box_nb, crop_params_nb, uniform_nb
        plan_scale, crop_box = box_scale_num, scaled_box
        state_address = int(self._state.ctypes.data)
        random = self.scale is not None
        (scale_a, scale_b), (ratio_a, ratio_b) = self.scale or (0.0, 0.0), self.ratio
        resize_to = self.eval_resize
        flip_p, flip_draw = self.flip_p, FLIP_DRAW
        jpg = JPG_MODE

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            state = np.empty(2, np.int64)  # [seed, pass], as Python last set them
            memcpy(state_address, state.ctypes.data, 16)
            out_h, out_w = destination.shape[1], destination.shape[2]
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field['data_ptr'], storage_state)
                height = np.int64(field['height'])
                width = np.int64(field['width'])
                i, j, h, w = 0, 0, 1, 1
                if random:
                    i, j, h, w = sample(height, width, scale_a, scale_b, ratio_a, ratio_b, state[0], state[1],
                                        np.int64(source_ix), 0)
                    top, left, box_h, box_w = float(i), float(j), float(h), float(w)
                else:
                    top, left, box_h, box_w = centre(height, width, resize_to, out_h, out_w)
                n = 8
                if field['mode'] == jpg:
                    temp = temp_storage[dst_ix]
                    n = plan_scale(box_h, box_w, out_h, out_w)
                    if imdecode(image_data.ctypes.data, image_data.size, height, width, temp.ctypes.data, height,
                                width, 0, 0, n, 8, False, False) != 0 and n != 8:
                        n = 8  # a refused scaled decode: the whole image
                        imdecode(image_data.ctypes.data, image_data.size, height, width, temp.ctypes.data,
                                 height, width, 0, 0, 1, 1, False, False)
                    rows, cols = (height * n + 7) // 8, (width * n + 7) // 8
                    image = temp[:rows * cols * 3].reshape(rows, cols, 3)
                else:
                    rows, cols = height, width
                    image = image_data.reshape(height, width, 3)
                view = destination[dst_ix]
                if random:  # torchvision crops first: taps stay within the crop
                    y, x, bh, bw, ct, cl, cb, cr = crop_box(i, j, h, w, 0, 0, n)
                else:  # torchvision resizes the whole image: taps anywhere in it
                    f = n / 8.0
                    y, x, bh, bw, ct, cl, cb, cr = top * f, left * f, box_h * f, box_w * f, 0, 0, rows, cols
                resize(image.ctypes.data, rows, cols, y, x, bh, bw, ct, cl, cb, cr, view.ctypes.data, out_h, out_w)
                if random and draw(state[0], state[1], np.int64(source_ix), 0, flip_draw) < flip_p:
                    for row in range(out_h):
                        for col in range(out_w // 2):
                            for c in range(3):
                                pixel = view[row, col, c]
                                view[row, col, c] = view[row, out_w - 1 - col, c]
                                view[row, out_w - 1 - col, c] = pixel
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode
