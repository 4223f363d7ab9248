"""Progressive resizing (ffcv-imagenet style): the schedule, every backend's set_resolution, and the trainer."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from msf_fast.config import ConfigError, load_config
from msf_fast.schedule import progressive_resolution
from msf_fast.trainer import Trainer
from pipelines import build_train_loader
from pipelines.recipe import two_view_recipe
from tests.image_cases import coordinate_images, write_image_folder


def test_schedule_ramps_in_steps_of_32():
    sizes = [progressive_resolution(epoch, 160, 224, start_ramp=2, end_ramp=8) for epoch in range(10)]
    assert sizes == [160, 160, 160, 160, 192, 192, 192, 224, 224, 224]  # e.g. epoch 4: 181 px -> 192
    assert {progressive_resolution(epoch, 0, 224, 2, 8) for epoch in range(10)} == {224}


def stores(tmp_path) -> dict[str, str]:
    source = write_image_folder(tmp_path / "src", coordinate_images(16, size=64))
    found = {"torch": source}
    if importlib.util.find_spec("ffcv"):
        from dataset_prep import write_beton
        assert write_beton.main([source, str(tmp_path / "s.beton"), "--workers", "1", "--no-progress"]) == 0
        found["ffcv"] = str(tmp_path / "s.beton")
    if importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali"):
        from dataset_prep import write_tfrecord
        assert write_tfrecord.main([source, str(tmp_path / "tfr"), "--workers", "1", "--no-progress"]) == 0
        found["dali"] = str(tmp_path / "tfr")
    return found


def test_every_backend_changes_its_crop_size_between_epochs(tmp_path):
    threads = torch.get_num_threads()
    for backend, store in stores(tmp_path).items():
        loader = build_train_loader(backend, store, two_view_recipe("w/s", 32), batch_size=8, workers=1, seed=0)
        sizes = []
        for epoch, resolution in enumerate((16, 32, 16)):
            loader.set_resolution(resolution)
            for online, target, _ in loader.iterate(epoch):
                assert online.shape[-2:] == target.shape[-2:] == (resolution, resolution), backend
                assert online.is_contiguous(memory_format=torch.channels_last)
                sizes.append(resolution)
        assert sizes == [16, 16, 32, 32, 16, 16], backend
    torch.set_num_threads(threads)


def test_trainer_follows_the_schedule(tiny_imagefolder, tmp_path):
    args = [f"--data.train_path={tiny_imagefolder / 'train'}", "--data.backend=torch", "--model.arch=resnet18",
            "--model.small_input=1", "--data.resolution=32", "--data.min_resolution=16", "--data.start_ramp=0",
            "--data.end_ramp=2", "--train.batch_size=32", "--msf.bank_size=64", "--train.epochs=3",
            "--data.workers=0", f"--logging.folder={tmp_path}", "--logging.progress=0", "--eval.knn_final=0",
            "--train.threads=1"]
    threads = torch.get_num_threads()
    try:
        Trainer(load_config(args)).train()
    finally:
        torch.set_num_threads(threads)
    epochs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in epochs if r["event"] == "epoch"] == [16, 32, 32]  # 16 + 0.5 * 16 -> 32-px steps
    with pytest.raises(ConfigError, match="start_ramp"):
        load_config(args[:-1] + ["--data.end_ramp=0"])
