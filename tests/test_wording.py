"""Counts and articles in messages (a walkthrough saw "1 steps", "a ImageFolder", "skipped 1 bad files")."""
from __future__ import annotations

import pytest

from dataset_prep.wording import plural, with_article


def test_counts_agree_with_their_noun():
    assert plural(1, "step") == "1 step"
    assert plural(2, "step") == "2 steps"
    assert plural(0, "bad file") == "0 bad files"
    assert plural(1281167, "image") == "1,281,167 images"


def test_articles_follow_the_sound_of_the_name():
    assert with_article("ImageFolder") == "an ImageFolder"
    assert with_article(".beton") == "a .beton"
    assert with_article("TFRecord store") == "a TFRecord store"


@pytest.mark.parametrize("backend, expected", [("ffcv", "data.backend=ffcv reads a .beton, and {path} is an "
                                                        "ImageFolder: write one with python -m dataset_prep."
                                                        "write_beton {path} OUT.beton"),
                                               ("dali", "data.backend=dali reads a TFRecord store, and {path} is an "
                                                        "ImageFolder: write one with python -m dataset_prep."
                                                        "write_tfrecord {path} OUT_DIR")])
def test_a_loader_given_data_it_cannot_read_names_both_kinds(tmp_path, backend, expected):
    from msf_fast.config import load_config
    from msf_fast.errors import UserError
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "0.jpg").write_bytes(b"")
    path = tmp_path / "train"
    with pytest.raises(UserError) as error:
        load_config([f"--data.train_path={path}", f"--data.backend={backend}",
                     f"--logging.folder={tmp_path / 'run'}"])
    assert str(error.value).startswith(expected.format(path=path)), str(error.value)
