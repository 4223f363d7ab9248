"""The benchmark photos' command (README "Data loaders"): a folder appears complete or not at all, a folder of
other settings is replaced whole, and a folder that is not its own is refused untouched; the writers' benchmark,
which generates such photos, tells its mistakes in one line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dataset_prep import synthetic_photos
from dataset_prep.bench import PROG as DATA_BENCH
from dataset_prep.synthetic_photos import PROG as PHOTOS


def listing(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def test_other_settings_replace_the_folder_whole_and_the_same_reuse_it(tmp_path, capsys):
    root = tmp_path / "photos"
    assert synthetic_photos.main([str(root), "--classes", "3", "--per-class", "2", "--no-progress"]) == 0
    assert synthetic_photos.main([str(root), "--classes", "2", "--per-class", "1", "--no-progress"]) == 0
    # class_02 of the first run stayed beside the marker saying 2 classes
    assert listing(root) == ["class_00/00000.jpg", "class_01/00000.jpg", "photos.json"]
    before = {name: os.stat(root / name).st_mtime_ns for name in listing(root)}
    assert synthetic_photos.main([str(root), "--classes", "2", "--per-class", "1", "--no-progress"]) == 0
    assert {name: os.stat(root / name).st_mtime_ns for name in listing(root)} == before
    assert os.listdir(tmp_path) == ["photos"]
    assert capsys.readouterr().out.splitlines() == [f"{PHOTOS}: 6 photos of 3 classes in {root}",
                                                    f"{PHOTOS}: 2 photos of 2 classes in {root}",
                                                    f"{PHOTOS}: {root} already holds 2 photos of 2 classes "
                                                    "(seed 0)"]


@pytest.mark.parametrize("make, expected", [
    (lambda root: (root / "n01440764").mkdir(parents=True),
     "'{root}' exists and is no folder of synthetic photos (it has no photos.json): give a new folder"),
    (lambda root: root.write_text("x"),
     "'{root}' exists and is no folder of synthetic photos (it has no photos.json): give a new folder"),
    (lambda root: None, None)])
def test_a_folder_not_its_own_is_refused_untouched(tmp_path, capsys, make, expected):
    root = tmp_path / "imagenet"
    make(root)
    before = listing(tmp_path)
    code = synthetic_photos.main([str(root), "--classes", "1", "--per-class", "1", "--no-progress"])
    if expected is None:  # an empty or missing folder is the command's to fill
        assert code == 0
        return
    assert (code, capsys.readouterr().err.splitlines()) == (2, [f"{PHOTOS}: error: "
                                                                + expected.format(root=root)])
    assert listing(tmp_path) == before


def test_a_path_under_a_file_and_an_interrupted_run_leave_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    assert synthetic_photos.main([str(tmp_path / "file" / "photos"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (f"{PHOTOS}: error: cannot write '{tmp_path}/file/photos': "
                                               f"'{tmp_path}/file' is a file, not a folder")
    made, photo = [], synthetic_photos.photo

    def interrupted(rng, width, height):  # Ctrl-C at the second photo
        if made:
            raise KeyboardInterrupt
        made.append(1)
        return photo(rng, width, height)

    monkeypatch.setattr(synthetic_photos, "photo", interrupted)
    assert synthetic_photos.main([str(tmp_path / "photos"), "--classes", "1", "--per-class", "3",
                                  "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == f"{PHOTOS}: interrupted; {tmp_path / 'photos'} is as it was"
    assert os.listdir(tmp_path) == ["file"]  # no photos/, no .photos.partial-PID
    assert synthetic_photos.main(["", "--no-progress"]) == 2  # an unset $ROOT wrote 500 photos beside the cwd
    assert capsys.readouterr().err.strip() == (f"{PHOTOS}: error: the folder is empty: give a folder for the "
                                               "photos")


def test_sigterm_leaves_the_folder_as_it_was(tmp_path):
    """A job scheduler's SIGTERM left the staged .photos.partial-PID behind (a rerun with the same settings never
    removed it)."""
    import signal
    import subprocess
    import sys
    import time
    root = tmp_path / "photos"
    process = subprocess.Popen([sys.executable, "-m", "dataset_prep.synthetic_photos", str(root), "--per-class",
                                "1000", "--no-progress"], cwd=Path(__file__).resolve().parents[1],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".photos.partial-*/class_00/00001.jpg")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr.strip().splitlines()[-1]) == (143, f"{PHOTOS}: interrupted; {root} is "
                                                                           "as it was")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, expected", [
    (["--repeats", "0"], f"{DATA_BENCH}: error: argument --repeats: must be at least 1, got 0 (see "
                         "--help)"),
    (["--workers", "0", "2"], f"{DATA_BENCH}: error: argument --workers: must be at least 1, got 0 "
                              "(see --help)"),
    (["--data-root", "{file}/bench"], "python -m dataset_prep.bench: error: --data-root {file}/bench: {file} is a "
                                      "file, not a folder")])
def test_the_writers_benchmark_tells_a_mistake_in_one_line(tmp_path, capsys, argv, expected):
    """Its counts were bare ints (--repeats 0 ended in a traceback of statistics.median) and a data root under a
    file was a traceback."""
    from dataset_prep import bench
    (tmp_path / "file").write_text("x")
    argv = [part.replace("{file}", str(tmp_path / "file")) for part in argv]
    try:
        code = bench.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert (code, capsys.readouterr().err.strip()) == (2, expected.replace("{file}", str(tmp_path / "file")))


def test_the_writers_benchmark_refuses_a_data_root_holding_a_users_images_before_writing(tmp_path, capsys):
    """--data-root DIR deleted DIR/demo/train (a user's images) and then refused DIR/photos: now both are checked
    first, and nothing is written or deleted."""
    from dataset_prep import bench
    (tmp_path / "demo" / "train" / "cats").mkdir(parents=True)
    (tmp_path / "demo" / "train" / "cats" / "precious.jpg").write_bytes(b"\xff\xd8")
    before = listing(tmp_path)
    assert bench.main(["--data-root", str(tmp_path), "--repeats", "1"]) == 2
    assert capsys.readouterr().err.strip() == (f"{DATA_BENCH}: error: --data-root {tmp_path}: {tmp_path}/demo/"
                                               "train holds 'cats', not the demo's images: the demo data would "
                                               "replace it; give another folder")
    assert listing(tmp_path) == before
