"""Mistakes with the store writers (issue 16): an output name that contradicts the format, a class folder the
trainer could not read (empty, or only non-image files), a source that is already converted data, a mistyped
option. Each is one line on stderr and exit code 2, before any image is read, and nothing is written."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset_prep import write_beton, write_tfrecord
from tests.image_cases import make_clean_source
from dataset_prep.write_tfrecord import PROG as TFRECORD
from dataset_prep.write_beton import PROG as BETON

ROOT = Path(__file__).resolve().parents[1]
WRITERS = {"write_beton": write_beton, "write_tfrecord": write_tfrecord}
IMAGE_EXTENSIONS = ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp"


@pytest.fixture
def source(tmp_path) -> str:
    return make_clean_source(str(tmp_path / "clean"))


@pytest.fixture
def keep_torch_threads():
    import torch
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # importing ffcv changes it


def run(main, argv, capsys) -> tuple[int, list[str]]:
    try:
        code = main([*argv, "--no-progress", "--workers", "1"])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def entries(folder) -> set[str]:
    return set(os.listdir(folder))


def test_write_tfrecord_refuses_a_name_of_another_format(source, tmp_path, capsys):
    before = entries(tmp_path)
    for name, expected in (
            ("x.beton", "has the .beton suffix of an FFCV store, and write_tfrecord writes a folder of TFRecord "
                        "shards: name it without .beton, or write a .beton with python -m dataset_prep.write_beton"),
            ("x.beton/", "has the .beton suffix of an FFCV store, and write_tfrecord writes a folder of TFRecord "
                         "shards: name it without .beton, or write a .beton with python -m dataset_prep.write_beton"),
            ("train.tfrecord", "is named like a single shard, and write_tfrecord writes a folder of shards: name it "
                               "without .tfrecord")):
        out = str(tmp_path / name)
        assert run(write_tfrecord.main, [source, out], capsys) == (2, [
            f"{TFRECORD}: error: output {out!r} {expected}"])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert run(write_tfrecord.main, [source, str(a_file), "--overwrite"], capsys) == (2, [
        f"{TFRECORD}: error: output {str(a_file)!r} is a file, and write_tfrecord writes a folder (--overwrite "
        "replaces only a folder): give another name"])
    assert entries(tmp_path) == before | {"a_file"}


def test_write_beton_refuses_a_folder_or_a_name_without_its_suffix(source, tmp_path, capsys):
    before = entries(tmp_path)
    folder = str(tmp_path / "stores") + "/"
    assert run(write_beton.main, [source, folder], capsys) == (2, [
        f"{BETON}: error: output {folder!r} names a folder, and write_beton writes one file: give OUT.beton, "
        f"e.g. {folder}train.beton"])
    assert run(write_beton.main, [source, str(tmp_path), "--overwrite"], capsys) == (2, [
        f"{BETON}: error: output {str(tmp_path)!r} names a folder, and write_beton writes one file: give "
        f"OUT.beton, e.g. {tmp_path / 'train.beton'}"])
    plain = str(tmp_path / "train")
    assert run(write_beton.main, [source, plain], capsys) == (2, [
        f"{BETON}: error: output {plain!r} lacks the .beton suffix by which training and evaluation recognise "
        f"an FFCV store: name it {plain}.beton"])
    assert entries(tmp_path) == before


@pytest.mark.parametrize("writer, out", [("write_tfrecord", "store"), ("write_beton", "s.beton")])
def test_class_folders_the_trainer_would_refuse_are_refused(writer, out, source, tmp_path, capsys):
    os.makedirs(os.path.join(source, "dog"))  # empty
    os.makedirs(os.path.join(source, "eel", "sub"))
    Path(source, "eel", "README.txt").write_text("no images here")
    Path(source, "eel", "sub", "labels.csv").write_text("a,b")
    assert run(WRITERS[writer].main, [source, str(tmp_path / out)], capsys) == (2, [
        f"{WRITERS[writer].PROG}: error: source folder {source!r}: 2 class folders without image files: dog (empty), "
        "eel (2 other files); torchvision's ImageFolder (the trainer's loader) refuses them too: remove them or add "
        "images"])
    assert not os.path.exists(tmp_path / out)
    # the same verdict as the trainer's loader
    from torchvision.datasets import ImageFolder
    with pytest.raises(FileNotFoundError, match="Found no valid file for the classes dog, eel"):
        ImageFolder(source)


def test_converted_data_given_as_the_source(source, tmp_path, capsys, keep_torch_threads):
    store = str(tmp_path / "store")
    assert run(write_tfrecord.main, [source, store], capsys)[0] == 0
    converted = "already converted; give the ImageFolder it was written from"
    assert run(write_tfrecord.main, [store, str(tmp_path / "again")], capsys) == (2, [
        f"{TFRECORD}: error: source {store!r} is not an ImageFolder (SRC_DIR/class_name/image.jpg): a TFRecord "
        f"store ({converted})"])
    shard = os.path.join(store, sorted(name for name in os.listdir(store) if name.endswith(".tfrecord"))[0])
    assert run(write_beton.main, [shard, str(tmp_path / "s.beton")], capsys) == (2, [
        f"{BETON}: error: source {shard!r} is not an ImageFolder (SRC_DIR/class_name/image.jpg): a TFRecord "
        f"shard ({converted})"])
    image = os.path.join(source, "ant", "ant_0.JPEG")
    assert run(write_beton.main, [image, str(tmp_path / "s.beton")], capsys) == (2, [
        f"{BETON}: error: source {image!r} is not an ImageFolder (SRC_DIR/class_name/image.jpg): an image file: "
        "give the ImageFolder that holds class_name/image.jpg"])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"")
    assert run(write_tfrecord.main, [str(flat), str(tmp_path / "x")], capsys) == (2, [
        f"{TFRECORD}: error: source folder {str(flat)!r} has no class folders (expected "
        "SRC_DIR/class_name/image.jpg; it holds only files)"])


def test_ignored_files_and_classes_left_empty_are_reported(source, tmp_path, capsys):
    Path(source, "bee", "bee_0.JPEG").write_bytes(b"")  # bee keeps 3 images; make them all bad
    for name in ("bee_1.JPEG", "bee_2.JPEG"):
        Path(source, "bee", name).write_bytes(b"not a jpeg")
    Path(source, "bee", "nested", "bee_3.JPEG").write_bytes(b"")
    code, lines = run(write_tfrecord.main, [source, str(tmp_path / "store")], capsys)
    assert code == 0
    assert lines[0] == f"{TFRECORD}: ignored 1 file without an image extension (e.g. ant/notes.txt)"
    assert (f"{TFRECORD}: warning: 1 of 3 classes have no image in the store (all their images were bad): bee; "
            "their labels stay reserved") in lines


@pytest.mark.parametrize("writer", ["write_beton", "write_tfrecord"])
def test_mistyped_options_name_the_closest_and_exit_2(writer, source, tmp_path):
    out = str(tmp_path / ("s.beton" if writer == "write_beton" else "store"))
    done = subprocess.run([sys.executable, "-m", f"dataset_prep.{writer}", source, out, "--max-res", "64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"{WRITERS[writer].PROG}: error: unknown option --max-res (did you mean --max-resolution?)")
    assert not os.path.exists(out)


# --- issue 21: images no crop can use; the bar on Ctrl-C --------------------------------------------------------

def write_odd_shapes(source: str) -> dict[str, str]:
    """A 1x1 PNG, a 4000x20 panorama and a 20x4000 strip beside the clean images: {relative path: size words}."""
    import numpy as np
    from PIL import Image
    shapes = {"ant/dot.png": (1, 1), "bee/panorama.png": (4000, 20), "cat/strip.png": (20, 4000)}
    for relative, (width, height) in shapes.items():
        Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(os.path.join(source, relative))
    return {"ant/dot.png": "1x1 pixels: a side under 8 pixels, too small for any crop",
            "bee/panorama.png": "4000x20 pixels, 256x1 after --max-resolution 256: a side under 8 pixels, too small "
                                "for any crop; --max-resolution 0 would keep it whole",
            "cat/strip.png": "20x4000 pixels, 1x256 after --max-resolution 256: a side under 8 pixels, too small for "
                             "any crop; --max-resolution 0 would keep it whole"}


@pytest.mark.parametrize("writer, out", [("write_tfrecord", "store"), ("write_beton", "s.beton")])
def test_images_too_small_for_any_crop_are_skipped_and_named(writer, out, source, tmp_path, capsys,
                                                             keep_torch_threads):
    # issue 21 item 5: evaluation on a .beton holding these aborted in OpenCV (SIGABRT), naming no file
    if writer == "write_beton":
        pytest.importorskip("ffcv")
    import json
    reasons = write_odd_shapes(source)
    store = str(tmp_path / out)
    code, lines = run(WRITERS[writer].main, [source, store, "--max-resolution", "256"], capsys)
    assert code == 0
    for relative, reason in reasons.items():
        assert f"{WRITERS[writer].PROG}: skipped {relative}: {reason}" in lines
    manifest = json.load(open(os.path.join(store, "manifest.json") if writer == "write_tfrecord"
                              else store + ".manifest.json"))
    assert {entry["path"]: entry["reason"] for entry in manifest["skipped"]} == reasons
    assert manifest["counts"]["written"] == 12  # every clean image
    # kept whole (--max-resolution 0: TFRecord's default), the panoramas have sides of 20 pixels: stored
    if writer == "write_tfrecord":
        code, lines = run(write_tfrecord.main, [source, str(tmp_path / "whole")], capsys)
        assert code == 0
        assert [line for line in lines if ": skipped " in line] == [
            f"{TFRECORD}: skipped ant/dot.png: {reasons['ant/dot.png']}"]
        assert json.load(open(tmp_path / "whole" / "manifest.json"))["counts"]["written"] == 14


def screen(text: str) -> list[str]:
    """What a terminal shows after `text`: carriage returns overwrite the line, blank lines dropped."""
    shown = []
    for raw in text.split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part):]
        if line.strip():
            shown.append(line.rstrip())
    return shown


@pytest.mark.parametrize("writer, out, function", [("write_tfrecord", "store", "encode_sample"),
                                                   ("write_beton", "s.beton", "scan_sample")])
def test_ctrl_c_leaves_no_half_drawn_bar_above_its_line(writer, out, function, source, tmp_path, monkeypatch,
                                                        capsys):
    # issue 21 item 12: the bar stayed drawn at 40 % above "interrupted; nothing written"
    module = WRITERS[writer]
    real, calls = getattr(module, function), []

    def interrupted_at_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, interrupted_at_the_fifth)
    code = module.main([source, str(tmp_path / out), "--workers", "1"])  # the bar on; one process
    err = capsys.readouterr().err
    assert code == 130
    assert f"\r{writer}" in err and "0/12" in err  # the bar was drawn
    assert screen(err)[-1] == f"{WRITERS[writer].PROG}: interrupted; nothing written"
    assert not [line for line in screen(err) if "%|" in line]
    assert sorted(os.listdir(tmp_path)) == ["clean"]


def full_disk(*args, **kwargs):
    import errno
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer, out", [("write_tfrecord", "store"), ("write_beton", "s.beton")])
def test_a_full_disk_is_one_line_exit_1_and_nothing_written(writer, out, source, tmp_path, capsys, monkeypatch,
                                                            keep_torch_threads):
    """The writers' pages and records fail as a full disk makes them fail (ENOSPC); FFCV's writer workers are
    forked, so they inherit the patch."""
    if writer == "write_beton":
        pytest.importorskip("ffcv")
        from ffcv.memory_allocator import MemoryAllocator
        monkeypatch.setattr(MemoryAllocator, "flush_page", full_disk)
    else:
        from dataset_prep.tfrecord_format import TFRecordWriter
        monkeypatch.setattr(TFRecordWriter, "write", full_disk)
    code, lines = run(WRITERS[writer].main, [source, str(tmp_path / out)], capsys)
    shown = str(tmp_path / out)
    expected = (f"cannot write {shown}: No space left on device; nothing written" if writer == "write_beton"
                else f"{shown}: No space left on device; nothing written")
    assert code == 1 and lines[-1] == f"{WRITERS[writer].PROG}: error: {expected}"
    assert not [line for line in lines if "Traceback" in line or "error" in line and line != lines[-1]]
    assert entries(tmp_path) == {"clean"}


def full_disk_at_the_last_page(allocator):
    if allocator.my_page < 0:  # nothing to write (the parent's allocator)
        return
    time.sleep(0.5)  # every sample is counted as done before a worker writes its last page
    full_disk()


@pytest.mark.timeout(120)  # the old writer waited forever for the failed worker's allocations
def test_a_full_disk_at_the_last_page_is_one_line_not_a_hang(source, tmp_path, capsys, monkeypatch,
                                                            keep_torch_threads):
    pytest.importorskip("ffcv")
    from ffcv.memory_allocator import MemoryAllocator
    monkeypatch.setattr(MemoryAllocator, "flush_page", full_disk_at_the_last_page)
    code, lines = run(write_beton.main, [source, str(tmp_path / "s.beton")], capsys)
    assert code == 1 and lines[-1] == (f"{BETON}: error: cannot write {tmp_path / 's.beton'}: No space left on "
                                       "device; nothing written")
    assert entries(tmp_path) == {"clean"}


def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path, capsys):
    from dataset_prep.staging import STALE_AFTER_S, StagedPath

    def leftover(name: str, pid: int, age_s: float) -> Path:
        path = tmp_path / name.replace("PID", str(pid))
        path.write_bytes(b"x" * 100)
        os.utime(path, (path.stat().st_mtime - age_s,) * 2)
        return path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    killed = leftover(".train.beton.partial-PID", int(dead), STALE_AFTER_S + 5)
    recent = leftover(".train.beton.previous-PID", int(dead), 0)  # maybe a writer on another host sharing the disk
    running = leftover(".train.beton.partial-PID", os.getppid(), STALE_AFTER_S + 5)
    other_name = leftover(".val.beton.partial-PID", int(dead), STALE_AFTER_S + 5)
    with StagedPath(str(tmp_path / "train.beton")) as staged:
        Path(staged.temporary).write_bytes(b"store")
    assert not killed.exists() and recent.exists() and running.exists() and other_name.exists()
    assert capsys.readouterr().err.strip() == f"note: removed {killed}, left by an interrupted write (PID {dead})"
    assert (tmp_path / "train.beton").read_bytes() == b"store"


def test_a_writers_workers_die_with_it(tmp_path):
    """A converter killed with SIGKILL (no cleanup runs) must not leave its worker processes running on."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from multiprocessing import Process\n"
        "from dataset_prep.progress import start_worker\n"
        "def work(parent):\n"
        "    start_worker(parent)\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    workers = [Process(target=work, args=(os.getpid(),)) for _ in range(2)]\n"
        "    [worker.start() for worker in workers]\n"
        "    time.sleep(1)\n"
        "    print(*[worker.pid for worker in workers], flush=True)\n"
        "    time.sleep(120)\n")
    root = str(Path(__file__).parents[1])
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": root})
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(Path(f"/proc/{pid}").exists() for pid in workers)
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not any(alive(pid) for pid in workers):
            break
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (new) parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.parametrize("writer, out", [("write_beton", "train.beton"), ("write_tfrecord", "store")])
def test_an_output_inside_the_source_is_refused(writer, out, source, capsys):
    """A store written into the folder it reads would be listed among its images by the next run or conversion (a
    TFRecord store became a class folder); with --overwrite and the source itself, it would replace the images."""
    a_class = os.path.join(source, sorted(os.listdir(source))[0])
    before = {folder: entries(folder) for folder in (source, a_class)}
    for path, options in ((os.path.join(source, out), []), (os.path.join(a_class, out), []),
                          (source, ["--overwrite"])):
        assert run(WRITERS[writer].main, [source, path, *options], capsys) == (2, [
            f"{WRITERS[writer].PROG}: error: output {path!r} is inside the source folder {source!r}: the trainer and "
            f"the writers would list it among its images; write it outside {source!r}"])
    assert {folder: entries(folder) for folder in before} == before


@pytest.mark.parametrize("writer, out", [("write_tfrecord", "store"), ("write_beton", "s.beton")])
def test_an_output_under_a_file_is_named_as_such(writer, out, source, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's")
    target = str(notes / out)
    assert run(WRITERS[writer].main, [source, target], capsys) == (2, [
        f"{WRITERS[writer].PROG}: error: cannot write {target!r}: {str(notes)!r} is a file, not a folder"])
    assert notes.read_text() == "the user's"


def test_a_writers_workers_leave_ctrl_c_to_it():
    """A terminal's Ctrl-C reaches every process of the group: the workers' own KeyboardInterrupt tracebacks were
    printed beside the writer's one line."""
    import signal

    from dataset_prep.progress import ordered_map

    def handlers(_):
        return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    # (a multiprocessing.Pool here hung now and then: Pool.terminate's SIGTERM is ignored by such a worker)
    assert list(ordered_map(handlers, [0, 1], workers=2, chunksize=1)) == [(signal.SIG_IGN, signal.SIG_IGN)] * 2


@pytest.mark.parametrize("writer, out", [("write_tfrecord", "store"), ("write_beton", "s.beton")])
def test_a_second_writer_of_the_same_output_is_refused(writer, out, source, tmp_path, capsys, keep_torch_threads):
    """Two writers at once both ended 'wrote', the later one silently replacing the other's output."""
    from dataset_prep.staging import only_writer
    if writer == "write_beton":
        pytest.importorskip("ffcv")
    target = str(tmp_path / out)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dataset_prep.staging import only_writer\n"
                               "with only_writer(sys.argv[1], False):\n    print('writing', flush=True); time.sleep(60)",
                               target], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "writing"
        assert run(WRITERS[writer].main, [source, target], capsys) == (2, [
            f"{WRITERS[writer].PROG}: error: output {target!r} is being written by another process (PID {holder.pid}): "
            "wait for it to end, or write another output"])
    finally:
        holder.kill()
        holder.wait()
    assert entries(tmp_path) == {"clean", f".{out}.lock"}  # the killed holder's lock file: it marks nothing
    assert run(WRITERS[writer].main, [source, target], capsys)[0] == 0
    assert entries(tmp_path) == {"clean", out} | ({f"{out}.manifest.json"} if writer == "write_beton" else set())
    with only_writer(target, overwrite=True):
        pass  # a writer that finished left the lock free
    with pytest.raises(OSError, match="already exists"):
        with only_writer(target, overwrite=False):
            pass


def test_a_stop_whose_exception_was_swallowed_is_raised_before_the_commit(monkeypatch):
    """numba's compiler calls back into Python from C and drops what the callback raises ('Exception ignored'): a
    write_beton stopped then went on, wrote its store and exited 0. The stop is remembered for commit_point."""
    from dataset_prep.staging import Terminated, commit_point, sigterm_as_ctrl_c

    class Swallows:  # Python ignores (prints) an exception raised in __del__, as in those callbacks
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_type))
    with sigterm_as_ctrl_c():
        Swallows()
        assert ignored == [Terminated]
        with pytest.raises(Terminated):
            commit_point()


def test_a_stop_after_the_commit_point_is_too_late_to_undo_the_output():
    """A stop between a writer's renames and its end said 'interrupted; nothing written' over a finished store (or
    left a manifest without its .beton): once committing, the writer finishes."""
    from dataset_prep.staging import commit_point, sigterm_as_ctrl_c

    with sigterm_as_ctrl_c():
        commit_point()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler ran, and raised nothing


@pytest.mark.parametrize("options, message", [
    (["--write-mode", "jpg", "--compress-probability", "0.3"],
     "--compress-probability applies to --write-mode proportion, and this store's mode is jpg"),
    (["--val", "--smart-threshold", "1000"],
     "--smart-threshold applies to --write-mode smart, and this store's mode is jpg (the default with --val)"),
    (["--smart-threshold", "1000"],
     "--smart-threshold applies to --write-mode smart, and this store's mode is proportion"),
])
def test_an_option_of_another_write_mode_is_refused(options, message, source, tmp_path, capsys):
    """It was ignored without a word."""
    code, err = run(write_beton.main, [source, str(tmp_path / "s.beton"), *options], capsys)
    assert (code, err) == (2, [f"{BETON}: error: {message} (see --help)"])
    assert entries(tmp_path) == {"clean"}


def test_a_write_mode_given_with_val_is_honoured(source, tmp_path, capsys, keep_torch_threads):
    """--val overrode it with jpg, and the manifest said jpg, without a word."""
    import json
    from dataset_prep.stores import beton_manifest_path
    for options, mode in ((["--val", "--write-mode", "raw"], "raw"), (["--val"], "jpg"), ([], "proportion")):
        out = str(tmp_path / f"{mode}.beton")
        code, _ = run(write_beton.main, [source, out, *options], capsys)
        assert code == 0
        options = json.loads(Path(beton_manifest_path(out)).read_text())["options"]
        assert options["write_mode"] == mode
        # the options of the mode, not the defaults of the others
        assert options["compress_probability"] == (0.5 if mode == "proportion" else None)
        assert options["smart_threshold"] is None
