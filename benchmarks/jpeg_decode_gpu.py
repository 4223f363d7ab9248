"""Where the JPEG decode of a 512-px store could run: libjpeg-turbo on one CPU core, or nvJPEG on the GPU.

    python benchmarks/jpeg_decode_gpu.py [--images 256] [--batch 64] [--repeats 5] [--device auto|cpu|cuda|cuda:N]

The images are the synthetic 500x375 (and 375x500) q90 photos of `bench loader`'s 512-px figures, encoded in
memory. It prints JSON lines (and a table on stderr), each in microseconds per image: on one CPU core,
torchvision's decode (libjpeg-turbo); on the GPU, torchvision's batched nvJPEG decode, with the host CPU time it
costs (all the process's threads), then the two 224-px views cropped and resized on the GPU (antialiased bilinear,
as torchvision's RandomResizedCrop), one image at a time. The host CPU time per image on the GPU path is what a
512-px store's decode would cost the loader's cores if it moved to the GPU.
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import decode_jpeg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file from anywhere
from dataset_prep.argument_parser import OneLineParser, positive_int  # noqa: E402
from dataset_prep.synthetic_photos import photo  # noqa: E402
from msf_fast.bench.timing import add_device_argument  # noqa: E402
from msf_fast.devices import device_option  # noqa: E402
from msf_fast.errors import UserError  # noqa: E402


def encoded_photos(count: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(count):
        width, height = (500, 375) if rng.random() < 0.75 else (375, 500)
        buffer = io.BytesIO()
        Image.fromarray(photo(rng, width, height)).save(buffer, format="JPEG", quality=90)
        encoded.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    return encoded


def random_box(generator: torch.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box, scale (0.2, 1), ratio (3/4, 4/3): top, left, height, width."""
    area = height * width
    for _ in range(10):
        target = area * (0.2 + 0.8 * torch.rand(1, generator=generator).item())
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(1, generator=generator).item()
        w = round(math.sqrt(target * math.exp(log_ratio)))
        h = round(math.sqrt(target / math.exp(log_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def two_views(images: list[torch.Tensor], generator: torch.Generator, size: int) -> torch.Tensor:
    views = []
    for image in images:
        for _ in range(2):
            top, left, h, w = random_box(generator, image.shape[1], image.shape[2])
            crop = image[None, :, top:top + h, left:left + w].float()
            views.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(views).round_().clamp_(0, 255).to(torch.uint8)


def timed(function, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall seconds of one call, and the process CPU seconds of one call (all its threads)."""
    walls, cpu_start = [], time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - start)
    return float(np.median(walls)), (time.process_time() - cpu_start) / repeats


def main(argv=None) -> int:
    parser = OneLineParser(prog="benchmarks/jpeg_decode_gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=positive_int, default=256, help="photos decoded per pass (default 256)")
    parser.add_argument("--batch", type=positive_int, default=64, help="images per nvJPEG call (default 64)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed passes, median reported (default 5)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    try:
        device = device_option(args.device)
    except UserError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    encoded = encoded_photos(args.images)
    kb = sum(len(data) for data in encoded) / len(encoded) / 1024
    rows = []

    def record(variant: str, where: str, timing: tuple[float, float], **extra) -> None:
        wall, cpu = timing
        rows.append({"bench": "jpeg_decode", "variant": variant, "where": where, "images": len(encoded),
                     "us_per_image": round(1e6 * wall / len(encoded), 1),
                     "cpu_us_per_image": round(1e6 * cpu / len(encoded), 1), **extra})

    def cpu_decode():
        for data in encoded:
            decode_jpeg(data)
    cpu_decode()  # warm-up
    wall, _ = timed(cpu_decode, torch.device("cpu"), args.repeats)
    # one thread decodes, so its CPU time is its wall time (the process's also counts a few ms of other threads)
    record("cpu", "cpu, 1 core (libjpeg-turbo)", (wall, wall), mean_kb=round(kb, 1))

    if device.type == "cuda":
        batches = [encoded[i:i + args.batch] for i in range(0, len(encoded), args.batch)]
        for batch in batches[:2]:
            decode_jpeg(batch, device=device)  # warm-up: nvJPEG handles and buffers
        torch.cuda.synchronize(device)

        def gpu_decode():
            for batch in batches:
                decode_jpeg(batch, device=device)
        record("nvjpeg", f"cuda nvJPEG, batches of {args.batch}", timed(gpu_decode, device, args.repeats),
               gpu=torch.cuda.get_device_name(device))
        decoded = [image for batch in batches for image in decode_jpeg(batch, device=device)]
        generator = torch.Generator().manual_seed(0)
        two_views(decoded[:8], generator, 224)
        record("gpu-views", "cuda two 224-px views (crop + antialiased resize)",
               timed(lambda: two_views(decoded, generator, 224), device, args.repeats))
    for row in rows:
        print(json.dumps(row))
        print(f"{row['where']:<52} {row['us_per_image']:8.1f} us/image   host CPU {row['cpu_us_per_image']:8.1f} "
              "us/image", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("benchmarks/jpeg_decode_gpu.py: interrupted", file=sys.stderr)
        sys.exit(130)
