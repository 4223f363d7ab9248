"""What a data path is, and what is wrong with it: found at start, in one line that names the path and the fix."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_prep import write_tfrecord
from dataset_prep.stores import beton_problem, describe_path, tfrecord_problem
from msf_fast.config import ConfigError, load_config
from tests.image_cases import make_clean_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_clean_source(str(tmp_path_factory.mktemp("src") / "clean"), per_class=4)


@pytest.fixture
def tfrecord_store(source, tmp_path):
    out = str(tmp_path / "store")
    assert write_tfrecord.main([source, out, "--shards", "2", "--workers", "1", "--no-progress"]) == 0
    return out


def test_paths_that_are_no_dataset_say_what_they_are(source, tfrecord_store, tmp_path):
    assert describe_path(str(tmp_path / "missing")) == "it does not exist"
    jpeg = next(Path(source).rglob("*.JPEG"))
    assert describe_path(str(jpeg)).startswith("an image file")
    shard = next(Path(tfrecord_store).glob("*.tfrecord"))
    assert describe_path(str(shard)).startswith("a single TFRecord shard")
    (tmp_path / "empty").mkdir()
    assert describe_path(str(tmp_path / "empty")) == "an empty folder"
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(jpeg.read_bytes())
    assert describe_path(str(flat)).startswith("a folder without class folders")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-0.tfrecord").write_bytes(shard.read_bytes())
    assert describe_path(str(shards)).startswith("TFRecord shards without the writer's manifest.json")
    assert describe_path(source) == "an ImageFolder"


def test_a_damaged_tfrecord_store_is_found(tfrecord_store):
    assert tfrecord_problem(tfrecord_store) is None
    index = sorted(Path(tfrecord_store).glob("*.idx"))[0]
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:-1]) + "\n")
    assert f"index {index.name} does not match shard" in tfrecord_problem(tfrecord_store)
    index.unlink()
    assert f"has no index {index.name}" in tfrecord_problem(tfrecord_store)
    assert "python -m dataset_prep.write_tfrecord" in tfrecord_problem(tfrecord_store)


def test_a_truncated_or_foreign_beton_is_found(source, tmp_path):
    pytest.importorskip("ffcv")
    from dataset_prep import write_beton

    store = str(tmp_path / "s.beton")
    assert write_beton.main([source, store, "--workers", "1", "--no-progress"]) == 0
    assert beton_problem(store) is None
    renamed = tmp_path / "s_without_suffix"
    renamed.write_bytes(Path(store).read_bytes())
    assert describe_path(str(renamed)) == f"an FFCV store without the .beton suffix: rename it to {renamed}.beton"
    with open(store, "r+b") as handle:
        handle.truncate(os.path.getsize(store) - 100)
    assert beton_problem(store).startswith("truncated")
    (tmp_path / "fake.beton").write_bytes(b"\x00" * 64)
    assert beton_problem(str(tmp_path / "fake.beton")).startswith("not an FFCV .beton")


def test_the_trainer_refuses_bad_data_before_it_starts(source, tfrecord_store, tmp_path):
    def error_of(*options):
        with pytest.raises(ConfigError) as caught:
            load_config([*options, "--train.batch_size=4", "--msf.bank_size=16"])
        return str(caught.value)

    assert error_of(f"--data.train_path={tmp_path / 'nope'}") == (
        f"data.train_path={tmp_path / 'nope'}: expected an ImageFolder, a .beton or a TFRecord store; it does "
        "not exist")
    # FFCV asked for a TFRecord store: the hint converts the store's source folder, which write_beton can read
    message = error_of(f"--data.train_path={tfrecord_store}", "--data.backend=ffcv")
    assert f"python -m dataset_prep.write_beton {os.path.abspath(source)} OUT.beton" in message
    next(Path(tfrecord_store).glob("*.idx")).unlink()
    assert "has no index" in error_of(f"--data.train_path={source}", f"--data.val_path={tfrecord_store}")
    done = subprocess.run([sys.executable, "train_imagenet.py", f"--data.train_path={tfrecord_store}",
                           "--train.batch_size=4", "--msf.bank_size=16", f"--logging.folder={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "has no index" in done.stderr and not (tmp_path / "run").exists()


def test_an_unknown_option_is_one_line_with_the_closest_name(capsys):
    from dataset_prep.argument_parser import OneLineParser

    parser = OneLineParser(prog="tool")
    parser.add_argument("--epochs")
    parser.add_argument("--resolution")
    for argv, expected in ((["--epoch=3"], "unknown option --epoch (did you mean --epochs?)"),
                           (["--res", "2"], "unknown option --res (did you mean --resolution?)"),
                           (["--zzz"], "unknown option --zzz (see --help)")):
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(argv)
        assert stopped.value.code == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and error.startswith(f"tool: error: {expected}")

    # a required option missing: the misspelt option given beside it is told too (it was left out)
    parser.add_argument("--images-per-s", required=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--images-per-second", "5", "--epochs", "3"])
    assert capsys.readouterr().err.strip() == ("tool: error: unknown option --images-per-second (did you mean "
                                               "--images-per-s?); the following arguments are required: "
                                               "--images-per-s (see --help)")


def test_sets_whose_labels_meet_must_share_their_classes():
    from types import SimpleNamespace

    from pipelines.contract import check_same_classes

    train = SimpleNamespace(classes=["ant", "bee", "cat"])
    check_same_classes(train, "train", SimpleNamespace(classes=["ant", "bee", "cat"]), "val")
    with pytest.raises(ValueError, match="cat only in train, dog only in val"):
        check_same_classes(train, "train", SimpleNamespace(classes=["ant", "bee", "dog"]), "val")
    with pytest.raises(ValueError, match="different classes: cat only in train; their labels"):
        check_same_classes(train, "train", SimpleNamespace(classes=["ant", "bee"]), "val")
    with pytest.raises(ValueError, match="order their classes differently"):
        check_same_classes(train, "train", SimpleNamespace(classes=["bee", "ant", "cat"]), "val")
