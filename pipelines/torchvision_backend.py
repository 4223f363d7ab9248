"""The baseline backend: torchvision ImageFolder + PIL transforms + DataLoader workers.

It reproduces the original MSF loader (same transforms, same order, PIL Gaussian blur) and is
the reference for the faster backends' correctness and speed, and their fallback.

A file that is no image is skipped with a note naming it, as the store writers skip it: one that is not an image
at all (empty, text, an unknown format) is left out of the listing when the folder is listed, so every reader of
the folder sees the same samples; one that fails later, when decoded (a truncated JPEG), is replaced in its
training batch by the next image of the listing, and left out of an evaluation pass.
"""
from __future__ import annotations

import dataclasses
import os
import random
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision import datasets, transforms

from dataset_prep.images import decode_failure, file_problem
from dataset_prep.progress import ignore_stops, stops_deferred
from dataset_prep.wording import plural
from pipelines.contract import FirstBatchClock
from pipelines.recipe import TwoViewRecipe, ViewRecipe
from pipelines.sampling import epoch_order, per_sample_seed, rank_batches
from pipelines.worker_sockets import check_worker_processes

# torch warns, at every DataLoader it makes and again when it starts the workers, with two 4-line messages; one
# note of ours per process says it instead
warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)


def leave_stopping_to_the_parent(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT: a scheduler signals the whole process group (SLURM on
    preemption), and a worker killed by it made the trainer fail with a traceback instead of finishing its step and
    saving; a terminal's Ctrl-C also reaches the whole group, and each worker, which inherits the trainer's handler,
    printed the trainer's "stopping after this step" line again. The parent stops them; a worker whose parent is
    gone ends by itself (torch's watchdog)."""
    ignore_stops()  # held across the fork by started_batches


def started_batches(loader: DataLoader):
    """The loader's iterator, its worker processes forked with Ctrl-C and SIGTERM held: a second Ctrl-C (the one
    that stops at once) that came during a fork was raised in an at-fork handler of the logging module, printed as
    "Exception ignored" and lost; the run went on to its end."""
    with stops_deferred():
        return iter(loader)


class RandomGaussianBlur:
    """PIL Gaussian blur with sigma ~ U(sigma_min, sigma_max), as in the original code."""

    def __init__(self, sigma: tuple[float, float]):
        self.sigma = sigma

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self):
        return f"RandomGaussianBlur(sigma={self.sigma})"


class Solarize:
    def __init__(self, threshold: float):
        self.threshold = round(threshold * 255)

    def __call__(self, image):
        return ImageOps.solarize(image, self.threshold)


def view_transform(view: ViewRecipe, recipe: TwoViewRecipe) -> transforms.Compose:
    ops = [transforms.RandomResizedCrop(recipe.resolution, scale=view.crop_scale, ratio=view.crop_ratio)]
    if view.jitter_p > 0:
        jitter = transforms.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)
        ops.append(transforms.RandomApply([jitter], p=view.jitter_p))
    if view.grayscale_p > 0:
        ops.append(transforms.RandomGrayscale(p=view.grayscale_p))
    if view.blur_p > 0:
        ops.append(transforms.RandomApply([RandomGaussianBlur(view.blur_sigma)], p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(transforms.RandomApply([Solarize(view.solarize_threshold)], p=view.solarize_p))
    if view.flip_p > 0:
        ops.append(transforms.RandomHorizontalFlip(p=view.flip_p))
    ops += [transforms.ToTensor(), transforms.Normalize(recipe.mean, recipe.std)]
    return transforms.Compose(ops)


class UnreadableImage(Exception):
    """A listed file that does not decode: its path and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_rgb(path: str) -> Image.Image:
    """torchvision's default loader (PIL, converted to RGB), its failures an UnreadableImage naming the file."""
    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on damaged data
        raise UnreadableImage(path, decode_failure(path, error)) from None


_NOTED: set[str] = set()  # files already named in a note by this process


def note_skipped(path: str, reason: str, consequence: str) -> None:
    """One line on stderr naming a skipped file, once per file and process (rank 0 only under torchrun)."""
    if path in _NOTED or os.environ.get("RANK", "0") != "0":
        return
    _NOTED.add(path)
    print(f"note: skipped {path}: {reason}; {consequence}", file=sys.stderr, flush=True)


def files_that_are_no_images(paths: list[str], threads: int = 8) -> dict[str, str]:
    """{path: reason} of the files whose first bytes are no image (`file_problem`), read by a few threads."""
    chunks = [paths[start:start + 4096] for start in range(0, len(paths), 4096)]
    found = {}
    with ThreadPoolExecutor(min(threads, max(1, len(chunks)))) as pool:
        for chunk, reasons in zip(chunks, pool.map(lambda chunk: [file_problem(p) for p in chunk], chunks)):
            found.update((path, reason) for path, reason in zip(chunk, reasons) if reason)
    return found


def image_folder(root: str, transform=None) -> datasets.ImageFolder:
    """torchvision's ImageFolder, with the folder named in its errors, without the files that are no image (each
    named in a note), and decoding failures raised as UnreadableImage."""
    try:
        images = datasets.ImageFolder(root, transform, loader=read_rgb)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{root}: {error}") from None
    problems = files_that_are_no_images([path for path, _ in images.samples])
    if problems:
        for path, reason in problems.items():
            note_skipped(path, reason, "not listed")
        images.samples = images.imgs = [sample for sample in images.samples if sample[0] not in problems]
        images.targets = [label for _, label in images.samples]
    return images


def eval_transform(recipe: TwoViewRecipe) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(recipe.eval_resize),
        transforms.CenterCrop(recipe.resolution),
        transforms.ToTensor(),
        transforms.Normalize(recipe.mean, recipe.std),
    ])


class TwoViewImageFolder(Dataset):
    """ImageFolder yielding (online_view, target_view, label), each sample's randomness seeded by
    (seed, epoch, index) so that an epoch is reproducible whatever the worker count or resume point."""

    def __init__(self, root: str, recipe: TwoViewRecipe, seed: int = 0):
        self.images = image_folder(root)
        self.set_recipe(recipe)
        self.seed = seed
        self.epoch = 0

    def set_recipe(self, recipe: TwoViewRecipe) -> None:
        self.recipe = recipe
        self.online_transform = view_transform(recipe.online, recipe)
        self.target_transform = view_transform(recipe.target, recipe)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        """(online, target, label, skipped path, its reason): a file that failed to decode and whose place the next
        image of the listing took ('', '' when none), for the loader to note."""
        image, label, failure = self._readable(index)
        seed = per_sample_seed(self.seed, self.epoch, index)
        if get_worker_info() is None:  # in the main process: leave the caller's RNG streams alone
            python_state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                online, target = self._two_views(image, seed)
            random.setstate(python_state)
        else:
            online, target = self._two_views(image, seed)
        return online, target, label, failure.path if failure else "", failure.reason if failure else ""

    def _readable(self, index: int):
        """The sample at `index`, or, when its file does not decode, the next one of the listing that does (so the
        batch keeps its size and the epoch its batches), and the failure (None when none)."""
        failure = None
        for offset in range(len(self.images)):
            try:
                image, label = self.images[(index + offset) % len(self.images)]
                return image, label, failure
            except UnreadableImage as error:
                failure = failure or error
        raise ValueError(f"{self.images.root}: no image decodes ({failure})")

    def _two_views(self, image, seed):
        torch.manual_seed(seed)
        random.seed(seed)
        return self.online_transform(image), self.target_transform(image)


class TorchvisionTwoViewLoader:
    """Batches of (online_view, target_view, label), NCHW float32 in channels-last memory."""

    backend = "torch"

    def __init__(self, root: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False):
        check_worker_processes(workers)
        self.dataset = TwoViewImageFolder(root, recipe, seed)
        self.batch_size, self.workers, self.seed = batch_size, workers, seed
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        self.classes = list(self.dataset.images.classes)
        self.num_classes, self.num_samples = len(self.classes), len(self.dataset)
        self.compile_seconds: float | None = None
        if len(self) == 0:
            raise ValueError(f"{root}: {len(self.dataset)} images make no full batch of "
                             f"{batch_size} x {plural(world_size, 'rank')}")

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)

    def set_resolution(self, resolution: int) -> None:
        self.dataset.set_recipe(dataclasses.replace(self.dataset.recipe, resolution=resolution))

    def iterate(self, epoch: int, skip_batches: int = 0):
        clock = FirstBatchClock(self)
        self.dataset.epoch = epoch
        batches = rank_batches(len(self.dataset), self.batch_size, epoch, self.seed,
                               self.rank, self.world_size)[skip_batches:]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.pin_memory, prefetch_factor=4 if self.workers else None,
                            worker_init_fn=leave_stopping_to_the_parent)
        for online, target, labels, skipped, reasons in started_batches(loader):
            clock.batch_arrived()
            for path, reason in zip(skipped, reasons):
                if path:
                    note_skipped(path, reason, "the next image of the listing takes its place in the batch")
            yield (online.contiguous(memory_format=torch.channels_last),
                   target.contiguous(memory_format=torch.channels_last), labels)


class ReadableSamples(Dataset):
    """The samples of `images` at `order`, each as (image, label, index, skipped path, its reason): a file that
    fails to decode gives a blank image and its path, for the loader to leave out."""

    def __init__(self, images: datasets.ImageFolder, order: list[int], blank: torch.Tensor):
        self.images, self.order, self.blank = images, order, blank

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int):
        index = self.order[position]
        try:
            image, label = self.images[index]
            return image, label, index, "", ""
        except UnreadableImage as error:
            return self.blank, -1, index, error.path, error.reason


class TorchvisionImageLoader:
    """(images, labels) of an ImageFolder (or of its `indices`, or of a seeded balanced subset of `per_class`
    images per class): the evaluation transform in file order, or with `view` (a ViewRecipe) random crops in a
    new order seeded by (`shuffle_seed`, pass) on every pass. NCHW float32 in channels-last memory.
    A file that fails to decode is left out of the pass, named in a note; `left_out` maps its index to why."""

    def __init__(self, root: str, recipe: TwoViewRecipe, *, batch_size: int, workers: int = 2, indices=None,
                 view: ViewRecipe | None = None, shuffle_seed: int | None = None, per_class: int = 0, seed: int = 0):
        check_worker_processes(workers)
        transform = eval_transform(recipe) if view is None else view_transform(view, recipe)
        self.dataset = image_folder(root, transform)
        self.classes = list(self.dataset.classes)
        if per_class:
            from pipelines.subsets import balanced_subset
            indices = balanced_subset(np.asarray(self.dataset.targets), seed=seed, per_class=per_class)
        self.indices = (torch.arange(len(self.dataset)) if indices is None
                        else torch.as_tensor(np.asarray(indices, dtype=np.int64)))
        self.num_samples = len(self.indices)
        self.batch_size, self.workers, self.shuffle_seed = batch_size, workers, shuffle_seed
        self.passes = 0
        self.blank = torch.zeros(3, recipe.resolution, recipe.resolution)
        self.left_out: dict[int, str] = {}

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        order = self.indices
        if self.shuffle_seed is not None:
            order = order[epoch_order(self.num_samples, self.passes, self.shuffle_seed)]
        self.passes += 1
        loader = DataLoader(ReadableSamples(self.dataset, order.tolist(), self.blank), batch_size=self.batch_size,
                            num_workers=self.workers, worker_init_fn=leave_stopping_to_the_parent)
        for images, labels, indices, skipped, reasons in started_batches(loader):
            failed = [row for row, path in enumerate(skipped) if path]
            if failed:
                for row in failed:
                    note_skipped(skipped[row], reasons[row], "left out of the evaluation")
                    self.left_out[int(indices[row])] = reasons[row]
                kept = torch.tensor([bool(not path) for path in skipped])
                images, labels = images[kept], labels[kept]
                if not len(labels):
                    continue
            yield images.contiguous(memory_format=torch.channels_last), labels
