"""The FFCV backend: batch contract, recipe behaviour measured on the images, order, resume, threads, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from dataset_prep import write_beton  # noqa: E402
from pipelines.ffcv_backend import FFCVTwoViewLoader  # noqa: E402
from pipelines.recipe import two_view_recipe  # noqa: E402
from tests.image_cases import coordinate_images, flat_colour_images, write_image_folder  # noqa: E402
from tests.loader_checks import (RESOLUTION, check_contract_for_every_recipe, crop_areas,  # noqa: E402
                                 torchvision_crop_areas, train_one_small_epoch, unnormalize)


def make_store(root, images, write_mode="raw") -> str:
    source = write_image_folder(root, images)
    path = source + ".beton"
    assert write_beton.main([source, path, "--write-mode", write_mode, "--workers", "1", "--no-progress"]) == 0
    return path


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, "the FFCV backend must restore torch's thread count"


@pytest.fixture(scope="module")
def coordinate_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("coords") / "src", coordinate_images(32))


@pytest.fixture(scope="module")
def uniform_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("uniform") / "src", flat_colour_images())


def test_contract_for_every_recipe(coordinate_store):
    check_contract_for_every_recipe("ffcv", coordinate_store)


def test_crop_scale_and_views_differ(coordinate_store):
    recipe = two_view_recipe("w/w", RESOLUTION)  # no photometric change: pixel values are coordinates
    loader = FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=0)
    scales = []
    for epoch in range(8):
        for online, target, _ in loader.iterate(epoch):
            scales += [crop_areas(unnormalize(view, recipe)) for view in (online, target)]
            assert not torch.allclose(online, target)  # two independent crops
    scales = torch.cat(scales)
    reference = torchvision_crop_areas(recipe)  # the baseline's RandomResizedCrop, measured the same way
    assert scales.min() > 0.2 - 0.03 and scales.max() <= 1.0 + 1e-6
    assert abs(scales.mean().item() - reference.mean().item()) < 0.04, (scales.mean(), reference.mean())


def test_weak_target_view_carries_no_colour_change(uniform_store):
    recipe = two_view_recipe("w/s", RESOLUTION)
    loader = FFCVTwoViewLoader(uniform_store, recipe, batch_size=8, workers=1, seed=0)
    changed = []
    for epoch in range(4):
        for online, target, labels in loader.iterate(epoch):
            target_pixels = unnormalize(target, recipe)
            flat = target_pixels.amax((2, 3)) - target_pixels.amin((2, 3))
            assert flat.max() < 0.5, "the weak view of a flat image must stay flat (no blur/jitter/noise)"
            online_pixels = unnormalize(online, recipe)
            changed.append((online_pixels.mean((2, 3)) - target_pixels.mean((2, 3))).abs().amax(1) > 1.0)
    fraction = torch.cat(changed).float().mean().item()
    # strong: jitter p=0.8 or grayscale p=0.2 changes the colour: P(change) = 1 - 0.2 * 0.8 = 0.84
    assert 0.65 < fraction < 0.98


def test_order_is_seeded_and_resumable(coordinate_store):
    recipe = two_view_recipe("w/s", RESOLUTION)
    loader = FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=3)
    first = [labels.tolist() for _, _, labels in loader.iterate(2)]
    again = [labels.tolist() for _, _, labels in loader.iterate(2)]
    resumed = [labels.tolist() for _, _, labels in loader.iterate(2, skip_batches=2)]
    other_epoch = [labels.tolist() for _, _, labels in loader.iterate(3)]
    assert first == again and resumed == first[2:] and other_epoch != first


def test_training_steps_through_ffcv(coordinate_store, tmp_path):
    trainer, result = train_one_small_epoch(coordinate_store, tmp_path / "run")
    assert trainer.loader.backend == "ffcv"  # data.backend=auto picks it for this store
    assert trainer.step == 4 and np.isfinite(result.loss_by_epoch[1])
    from msf_fast.runlog import read_jsonl
    compiled = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["event"] == "loader"]
    assert len(compiled) == 1 and compiled[0]["backend"] == "ffcv" and compiled[0]["compile_seconds"] > 0


def _rank_labels(rank: int, world_size: int, store: str, port: int, out: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        loader = FFCVTwoViewLoader(store, two_view_recipe("w/s", RESOLUTION), batch_size=8, workers=1, seed=0,
                                   rank=rank, world_size=world_size)
        epochs = {epoch: [labels.tolist() for _, _, labels in loader.iterate(epoch)] for epoch in (0, 1)}
        with open(out, "w") as file:
            json.dump({"len": len(loader), "epochs": epochs}, file)
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_read_disjoint_shards(coordinate_store, tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outs = [str(tmp_path / f"rank{rank}.json") for rank in range(2)]
    mp.start_processes(_worker_entry, args=(2, coordinate_store, port, outs), nprocs=2, start_method="spawn")
    ranks = [json.load(open(out)) for out in outs]
    assert [r["len"] for r in ranks] == [2, 2]  # 32 samples / (8 per rank x 2 ranks)
    for epoch in ("0", "1"):
        per_rank = [sorted(sum(r["epochs"][epoch], [])) for r in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == list(range(32))
    assert ranks[0]["epochs"]["0"] != ranks[0]["epochs"]["1"]  # reshuffled every epoch


def _worker_entry(rank: int, world_size: int, store: str, port: int, outs: list[str]) -> None:
    _rank_labels(rank, world_size, store, port, outs[rank])


def test_eval_loader_reads_a_beton_like_the_folder_transform(coordinate_store, tmp_path):
    from pipelines import build_eval_loader

    recipe = two_view_recipe("w/s", RESOLUTION)
    from_store = list(build_eval_loader(coordinate_store, recipe, batch_size=10, workers=1))
    images = torch.cat([batch[0] for batch in from_store])
    labels = torch.cat([batch[1] for batch in from_store])
    assert images.shape == (32, 3, RESOLUTION, RESOLUTION) and labels.tolist() == list(range(32))
    assert images.is_contiguous(memory_format=torch.channels_last)
    source = str(coordinate_store)[:-len(".beton")]
    reference = torch.cat([batch[0] for batch in build_eval_loader(source, recipe, batch_size=32, workers=0)])
    # the same transform (torchvision's fractional box and filter): within a level (0.018 here) on every pixel
    assert (images - reference).abs().max() < 0.02


def test_beton_subsets_and_the_probe_loader(coordinate_store):
    from pipelines import build_eval_loader, build_probe_loader
    from pipelines.subsets import dataset_labels

    assert dataset_labels(coordinate_store).tolist() == list(range(32))  # read without decoding
    recipe = two_view_recipe("w/s", RESOLUTION)
    chosen = [3, 7, 8, 30]
    subset = list(build_eval_loader(coordinate_store, recipe, batch_size=3, workers=1, indices=chosen))
    assert torch.cat([labels for _, labels in subset]).tolist() == chosen

    probe = build_probe_loader(coordinate_store, recipe, batch_size=4, workers=1, seed=0, indices=chosen + [12])
    passes = [list(probe) for _ in range(2)]
    orders = [torch.cat([labels for _, labels in batches]).tolist() for batches in passes]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(chosen + [12])
    images = torch.cat([images for images, _ in passes[0]])
    assert images.shape == (5, 3, RESOLUTION, RESOLUTION) and images.is_contiguous(memory_format=torch.channels_last)
    # random resized crops at scale (0.08, 1): the red (x) and green (y) ramps span less than the whole image
    spans = crop_areas(unnormalize(images, recipe))
    assert (spans < 0.99).any() and (spans > 0.07).all()


def batches_of(loader, epoch: int, skip: int = 0) -> list:
    return [tuple(t.clone() for t in batch) for batch in loader.iterate(epoch, skip_batches=skip)]


def test_decode_once_batches_are_seeded_whatever_the_workers_and_resume_point(coordinate_store):
    recipe = two_view_recipe("w/s", RESOLUTION)
    one = FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=4)
    two = FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=2, seed=4)
    first, again = batches_of(one, 1), batches_of(two, 1)
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # crops and photometric ops alike
    for a, b in zip(first[2:], batches_of(one, 1, skip=2)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    other_seed = batches_of(FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=5), 1)
    assert not torch.equal(first[0][0], other_seed[0][0])


def test_the_background_thread_changes_no_batch(coordinate_store, monkeypatch):
    from pipelines import ffcv_backend

    recipe = two_view_recipe("w/s", RESOLUTION)
    loader = FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=2)
    ahead = batches_of(loader, 0)
    monkeypatch.setattr(ffcv_backend, "ahead", lambda batches: batches)  # the synchronous path
    for a, b in zip(ahead, batches_of(loader, 0)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_two_pass_decoder_stays_selectable(coordinate_store):
    recipe = two_view_recipe("w/w", RESOLUTION)
    loader = FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, seed=0, decoder="twice")
    online, target, labels = next(iter(loader.iterate(0)))
    assert online.shape == target.shape == (8, 3, RESOLUTION, RESOLUTION) and labels.shape == (8,)
    with pytest.raises(ValueError, match="FFCV decoder 'thrice'"):
        FFCVTwoViewLoader(coordinate_store, recipe, batch_size=8, workers=1, decoder="thrice")


def test_two_ffcv_runs_with_the_same_seed_are_identical(coordinate_store, tmp_path):
    from msf_fast.runlog import read_jsonl

    losses = []
    for run in ("a", "b"):
        train_one_small_epoch(coordinate_store, tmp_path / run)
        losses.append([r["loss"] for r in read_jsonl(tmp_path / run / "log.jsonl") if r["event"] == "epoch"])
    assert losses[0] == losses[1] and losses[0][-1] is not None
