"""Invalid configurations fail at start with one line naming the parameter."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msf_fast.config import ConfigError, load_config
from train_imagenet import PROG as TRAIN

ROOT = Path(__file__).resolve().parents[1]


def base(tmp_path):
    (tmp_path / "train" / "some_class").mkdir(parents=True, exist_ok=True)
    (tmp_path / "train" / "some_class" / "0.jpg").touch()  # the config checks for an image file, not its pixels
    return [f"--data.train_path={tmp_path / 'train'}", "--train.batch_size=64", "--msf.bank_size=1024"]


@pytest.mark.parametrize("override, named", [
    ("--msf.bank_size=1000", "msf.bank_size"),
    ("--msf.topk=2048", "msf.topk"),
    ("--model.arch=vgg16", "model.arch"),
    ("--train.batch_size=0", "train.batch_size"),
    ("--data.resolution=-32", "data.resolution"),
    ("--data.train_path=/nonexistent/imagenet", "data.train_path"),
    ("--data.recipe=x/y", "data.recipe"),
    ("--train.channels_last=maybe", "train.channels_last"),
    ("--msf.momentum=1.5", "msf.momentum"),
    ("--eval.knn_val_per_class=-1", "eval.knn_val_per_class"),
    ("--logging.snapshot_every=-2", "logging.snapshot_every"),
])
def test_invalid_values_name_the_parameter(tmp_path, override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(base(tmp_path) + [override])


def test_missing_train_path(tmp_path):
    with pytest.raises(ConfigError, match="data.train_path"):
        load_config(["--train.batch_size=64", "--msf.bank_size=1024"])


def test_yaml_recipe_and_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("msf:\n  topk: 3\ntrain:\n  epochs: 7\n")
    cfg = load_config(base(tmp_path) + ["--config-file", str(recipe), "--train.epochs=9"])
    assert (cfg.msf.topk, cfg.train.epochs, cfg.model.arch) == (3, 9, "resnet50")


def test_yaml_typo_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("msf:\n  top_k: 3\n")
    with pytest.raises(ConfigError, match="msf.top_k"):
        load_config(base(tmp_path) + ["--config-file", str(recipe)])


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")))
def test_shipped_recipes_parse(tmp_path, recipe):
    cfg = load_config(["--config-file", str(recipe), *base(tmp_path)[:1]])
    assert cfg.msf.bank_size % cfg.train.batch_size == 0


def test_entry_point_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), *base(tmp_path), "--msf.bank_size=1000"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "msf.bank_size=1000" in result.stderr


def test_entry_point_reports_a_folder_without_images(tmp_path):
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    result = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), *base(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{TRAIN}: error: data.train_path={tmp_path / 'train'}: 1 class folder without image files: empty_class "
        "(empty); torchvision's ImageFolder (the trainer's loader) refuses them too: remove them or add images"]


def test_the_checks_answer_before_torch_loads(tmp_path):
    """A mistake answers at once: the config's checks (the data, the run folder, the checkpoint to resume) load
    neither torch nor torchvision, 4-6 s of a start on a slow CPU. Stand-ins for both on the path fail the test if
    anything imports them."""
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("torch", "torchvision"):
        (fake / f"{name}.py").write_text(f"raise ImportError('{name} was imported by the config checks')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake}:{ROOT}"}
    run = [*base(tmp_path), f"--logging.folder={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, "-c", "import sys; from msf_fast.config import load_config; "
                           "print(load_config(sys.argv[1:]).data.workers)", *run],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0 and int(done.stdout) >= 1, done.stderr

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("{}\n")
    done = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), *run], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert done.returncode == 2 and done.stderr.startswith(f"{TRAIN}: error: logging.folder={tmp_path / 'run'} holds "
                                                           "a run"), done.stderr

    for resume, what in ((fake, "a folder, not a checkpoint file"), (fake / "torch.py", "a text file")):
        done = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), *run, f"--train.resume={resume}"],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        assert done.returncode == 2 and done.stderr.startswith(f"{TRAIN}: error: train.resume={resume}: {what}"), \
            done.stderr


def test_workers_default_to_the_cores_available(tmp_path):
    from dataset_prep.progress import available_cores

    cfg = load_config(base(tmp_path))  # an ImageFolder: torchvision DataLoader processes
    assert cfg.data.workers == min(8, available_cores())
    assert load_config(base(tmp_path) + ["--data.workers=3"]).data.workers == 3
    with pytest.raises(ConfigError, match="data.workers='many': expected 'auto' or an integer >= 0"):
        load_config(base(tmp_path) + ["--data.workers=many"])


@pytest.mark.parametrize("given, device, rows", [
    ([], "cpu", 65_536),  # the faster chunk on a CPU (bench bank)
    ([], "cuda", 262_144),  # on an H200, bf16 and float32 banks alike
    (["--msf.bank_chunk=4096"], "cpu", 4096),
])
def test_the_bank_search_chunk_follows_the_device_unless_given(tmp_path, monkeypatch, given, device, rows):
    import torch

    import msf_fast.trainer as trainer
    cfg = load_config(base(tmp_path) + ["--model.arch=resnet18"] + given)
    # the model is built on the CPU: only the device's type picks the chunk
    monkeypatch.setattr(trainer.MSF, "to", lambda model, *args, **kwargs: model)
    assert trainer.build_model(cfg, torch.device(device)).bank.chunk_size == rows
