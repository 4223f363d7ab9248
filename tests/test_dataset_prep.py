"""The store writers: round trips, TFRecord framing and CRCs, class indices, bad input, atomic outputs."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from dataset_prep import write_beton, write_tfrecord
from dataset_prep.image_folder import IMAGE_EXTENSIONS, list_image_folder
from dataset_prep.tfrecord_format import IMAGE_KEY, LABEL_KEY
from tests.image_cases import make_clean_source, make_messy_source
from dataset_prep.write_beton import PROG as BETON

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSNR_BOUND_DB = 30.0  # resized + JPEG q90 smooth images come out at 38-45 dB; a wrong resize or channel order < 20


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def resized(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))


def source_pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# --- an independent TFRecord reader: table-driven CRC-32C (Castagnoli, reflected 0x82F63B78) ---------------

def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc_table()


def reference_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def reference_masked(data: bytes) -> int:
    crc = reference_crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % (1 << 32)


def walk_records(path: str) -> list[tuple[int, int, bytes]]:
    """(offset, total size, payload) of every record, asserting both masked CRCs."""
    data = open(path, "rb").read()
    records, offset = [], 0
    while offset < len(data):
        length_bytes = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        payload = data[offset + 12:offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
        assert length_crc == reference_masked(length_bytes), f"{path}@{offset}: bad length CRC"
        assert payload_crc == reference_masked(payload), f"{path}@{offset}: bad payload CRC"
        records.append((offset, 16 + length, payload))
        offset += 16 + length
    assert offset == len(data)
    return records


def test_reference_crc_matches_the_standard_check_value():
    assert reference_crc32c(b"123456789") == 0xE3069283  # CRC-32C check value (RFC 3720)


TFRECORD_MISSING = "the independent reader, the tfrecord package, is not installed (pip install -e '.[test]')"


def read_tfrecord_store(folder: str) -> tuple[list[np.ndarray], list[int], dict]:
    """Images and labels in shard order, read with the `tfrecord` package (protobuf parsing)."""
    tfrecord_loader = pytest.importorskip("tfrecord.reader", reason=TFRECORD_MISSING).tfrecord_loader

    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    images, labels = [], []
    for shard in manifest["shards"]:
        # no index: with one, the package starts at a random record
        for record in tfrecord_loader(os.path.join(folder, shard["tfrecord"]), None,
                                      {IMAGE_KEY: "byte", LABEL_KEY: "int"}):
            images.append(np.asarray(Image.open(io.BytesIO(bytes(record[IMAGE_KEY]))).convert("RGB")))
            labels.append(int(record[LABEL_KEY][0]))
    return images, labels, manifest


@pytest.fixture
def clean_source(tmp_path):
    return make_clean_source(str(tmp_path / "clean"))


@pytest.fixture
def messy_source(tmp_path):
    root = str(tmp_path / "messy")
    return root, make_messy_source(root)


@pytest.fixture
def keep_torch_threads():
    import torch
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # importing ffcv and building a Loader change it


def test_listing_agrees_with_torchvision_image_folder(clean_source):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    reference = ImageFolder(clean_source)
    listing = list_image_folder(clean_source)
    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS
    assert listing.classes == reference.classes
    assert listing.class_to_index == reference.class_to_idx
    assert listing.samples == reference.samples
    assert [os.path.basename(p) for p in listing.ignored_files] == ["notes.txt"]


# --- TFRecord -----------------------------------------------------------------------------------------------

def test_tfrecord_round_trip_crcs_and_index(clean_source, tmp_path):
    out = str(tmp_path / "store")
    assert write_tfrecord.main([clean_source, out, "--shards", "2", "--val", "--workers", "2",
                                "--max-resolution", "64", "--no-progress"]) == 0
    images, labels, manifest = read_tfrecord_store(out)
    samples = list_image_folder(clean_source).samples
    assert labels == [label for _, label in samples]  # --val keeps ImageFolder order
    for image, (path, _) in zip(images, samples):
        assert image.shape == (48, 64, 3)
        assert psnr(image, resized(source_pixels(path), (64, 48))) > PSNR_BOUND_DB
    assert manifest["classes"] == {"ant": 0, "bee": 1, "cat": 2}
    assert manifest["counts"]["written"] == 12 and manifest["counts"]["ignored_non_image_files"] == 1
    for shard in manifest["shards"]:
        records = walk_records(os.path.join(out, shard["tfrecord"]))
        index = [tuple(map(int, line.split())) for line in open(os.path.join(out, shard["index"]))]
        assert index == [(offset, size) for offset, size, _ in records]
        assert shard["records"] == len(records) == 6


def test_tfrecord_keeps_plain_jpegs_byte_for_byte(clean_source, tmp_path):
    out = str(tmp_path / "store")
    assert write_tfrecord.main([clean_source, out, "--val", "--workers", "1", "--no-progress"]) == 0
    tfrecord_loader = pytest.importorskip("tfrecord.reader", reason=TFRECORD_MISSING).tfrecord_loader

    manifest = json.load(open(os.path.join(out, "manifest.json")))
    shard = manifest["shards"][0]
    stored = [bytes(r[IMAGE_KEY]) for r in tfrecord_loader(os.path.join(out, shard["tfrecord"]), None,
                                                                 {IMAGE_KEY: "byte"})]
    assert stored == [open(path, "rb").read() for path, _ in list_image_folder(clean_source).samples]


def test_tfrecord_shards_are_balanced_and_mixed(tmp_path):
    source = make_clean_source(str(tmp_path / "src"), classes=("a", "b", "c", "d"), per_class=10, size=(24, 24))
    out = str(tmp_path / "store")
    assert write_tfrecord.main([source, out, "--shards", "3", "--no-progress"]) == 0
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    sizes = [shard["records"] for shard in manifest["shards"]]
    assert sum(sizes) == 40 and max(sizes) - min(sizes) <= 1
    tfrecord_loader = pytest.importorskip("tfrecord.reader", reason=TFRECORD_MISSING).tfrecord_loader

    all_labels = []
    for shard in manifest["shards"]:
        labels = [int(r[LABEL_KEY][0]) for r in tfrecord_loader(os.path.join(out, shard["tfrecord"]), None,
                                                                  {LABEL_KEY: "int"})]
        assert len(set(labels)) >= 3, f"shard {shard['tfrecord']} holds classes {set(labels)}"
        all_labels += labels
    assert sorted(all_labels) == sorted([0, 1, 2, 3] * 10)


def test_tfrecord_bad_and_odd_inputs(messy_source, tmp_path, capsys):
    source, expected = messy_source
    out = str(tmp_path / "store")
    assert write_tfrecord.main([source, out, "--val", "--no-progress"]) == 0
    images, labels, manifest = read_tfrecord_store(out)
    skipped = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == set(expected["bad"])
    for path, word in expected["bad"].items():
        assert word in skipped[path]
    good = sorted(expected["good"])  # ImageFolder order: classes sorted, files sorted
    assert len(images) == len(good) == manifest["counts"]["written"]
    listing = list_image_folder(source)
    assert labels == [listing.class_to_index[name.split("/")[0]] for name in good]
    for name, image in zip(good, images):
        assert image.shape == expected["good"][name].shape, name
        assert psnr(image, expected["good"][name]) > PSNR_BOUND_DB, name
    err = capsys.readouterr().err
    assert all(f"skipped {path}" in err for path in expected["bad"])


def test_limit_takes_a_seeded_subset_over_classes(clean_source, tmp_path):
    manifests = []
    for run in range(2):
        out = str(tmp_path / f"store{run}")
        assert write_tfrecord.main([clean_source, out, "--limit", "6", "--no-progress"]) == 0
        manifests.append(json.load(open(os.path.join(out, "manifest.json"))))
    assert manifests[0]["counts"]["written"] == 6
    assert manifests[0]["written_per_class"] == manifests[1]["written_per_class"]
    assert sum(1 for n in manifests[0]["written_per_class"].values() if n) >= 2


# --- FFCV .beton ---------------------------------------------------------------------------------------------

def test_beton_round_trip_with_stock_ffcv_loader(clean_source, tmp_path, keep_torch_threads):
    pytest.importorskip("ffcv")
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    out = str(tmp_path / "train.beton")
    assert write_beton.main([clean_source, out, "--max-resolution", "64", "--write-mode", "proportion",
                             "--compress-probability", "0.5", "--workers", "2", "--no-progress"]) == 0
    modes = Reader(out).metadata["f0"]["mode"]
    assert set(modes) == {IMAGE_MODES["jpg"], IMAGE_MODES["raw"]}
    loader = Loader(out, batch_size=5, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = [], []
    for image_batch, label_batch in loader:
        images += [np.array(image) for image in image_batch]
        labels += [int(label) for label in np.asarray(label_batch).reshape(-1)]
    samples = list_image_folder(clean_source).samples
    assert labels == [label for _, label in samples]
    for image, mode, (path, _) in zip(images, modes, samples):
        assert image.shape == (48, 64, 3)
        raw_bonus = 8 if mode == IMAGE_MODES["raw"] else 0  # raw pixels only differ by the resize filter
        assert psnr(image, resized(source_pixels(path), (64, 48))) > PSNR_BOUND_DB + raw_bonus
    manifest = json.load(open(out + ".manifest.json"))
    assert manifest["format"] == "ffcv-beton" and manifest["counts"]["written"] == 12

    # the JPEG-or-raw choice is seeded per sample: the same store whatever the number of workers
    again = str(tmp_path / "again.beton")
    assert write_beton.main([clean_source, again, "--max-resolution", "64", "--workers", "1", "--no-progress"]) == 0
    assert list(Reader(again).metadata["f0"]["mode"]) == list(modes)


def test_beton_bad_and_odd_inputs(messy_source, tmp_path, keep_torch_threads):
    pytest.importorskip("ffcv")
    from ffcv.reader import Reader

    source, expected = messy_source
    out = str(tmp_path / "messy.beton")
    assert write_beton.main([source, out, "--write-mode", "raw", "--no-progress"]) == 0
    manifest = json.load(open(out + ".manifest.json"))
    assert {entry["path"] for entry in manifest["skipped"]} == set(expected["bad"])
    reader = Reader(out)
    good = sorted(expected["good"])
    assert reader.num_samples == len(good)
    listing = list_image_folder(source)
    assert list(reader.metadata["f1"]) == [listing.class_to_index[name.split("/")[0]] for name in good]
    with open(out, "rb") as file:
        for (_, width, height, pointer), name in zip(reader.metadata["f0"], good):
            file.seek(int(pointer))
            pixels = np.frombuffer(file.read(int(width) * int(height) * 3), np.uint8).reshape(height, width, 3)
            assert pixels.shape == expected["good"][name].shape, name
            assert psnr(pixels, expected["good"][name]) > PSNR_BOUND_DB, name


# --- both writers: exit codes, errors, atomic outputs ----------------------------------------------------------

WRITERS = [pytest.param(write_tfrecord, "store", id="tfrecord"), pytest.param(write_beton, "s.beton", id="beton")]


def needs_writer(writer):
    if writer is write_beton:
        pytest.importorskip("ffcv")


@pytest.mark.parametrize("writer, name", WRITERS)
def test_strict_and_all_bad_write_nothing(writer, name, messy_source, tmp_path, keep_torch_threads):
    needs_writer(writer)
    source, _ = messy_source
    out = str(tmp_path / name)
    assert writer.main([source, out, "--strict", "--no-progress"]) == 1
    only_bad = str(tmp_path / "only_bad")
    os.makedirs(os.path.join(only_bad, "x"))
    open(os.path.join(only_bad, "x", "empty.jpg"), "wb").close()
    assert writer.main([only_bad, out, "--no-progress"]) == 1
    assert os.listdir(tmp_path) == sorted(["messy", "only_bad"]) or set(os.listdir(tmp_path)) == {"messy", "only_bad"}


@pytest.mark.parametrize("writer, name", WRITERS)
def test_unusable_source_or_destination_is_one_line_and_exit_2(writer, name, clean_source, tmp_path, capsys,
                                                               keep_torch_threads):
    needs_writer(writer)
    out = str(tmp_path / name)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "no_images" / "cls").mkdir(parents=True)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {
        "does not exist": [str(tmp_path / "missing"), out],
        "no class folders": [str(empty), out],
        "no image files": [str(tmp_path / "no_images"), out],
        "folder": [clean_source, str(a_file / name)],
        "--jpeg-quality": [clean_source, out, "--jpeg-quality", "0"],
    }
    for expected, argv in cases.items():
        capsys.readouterr()
        try:
            code = writer.main(argv + ["--no-progress"])
        except SystemExit as exit_:  # an option's value: argparse's error
            code = exit_.code
        assert code == 2, expected
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err and "error" in err, err
    assert not os.path.exists(out)


@pytest.mark.parametrize("writer, name", WRITERS)
def test_existing_output_needs_overwrite(writer, name, clean_source, tmp_path, capsys, keep_torch_threads):
    needs_writer(writer)
    out = str(tmp_path / name)
    assert writer.main([clean_source, out, "--limit", "3", "--no-progress"]) == 0
    before = {entry: os.path.getmtime(os.path.join(tmp_path, entry)) for entry in os.listdir(tmp_path)}
    capsys.readouterr()
    assert writer.main([clean_source, out, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert {entry: os.path.getmtime(os.path.join(tmp_path, entry)) for entry in os.listdir(tmp_path)} == before
    assert writer.main([clean_source, out, "--overwrite", "--no-progress"]) == 0
    manifest_path = os.path.join(out, "manifest.json") if os.path.isdir(out) else out + ".manifest.json"
    assert json.load(open(manifest_path))["counts"]["written"] == 12
    assert not [entry for entry in os.listdir(tmp_path) if ".partial-" in entry or ".previous-" in entry]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_destination(clean_source, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert write_tfrecord.main([clean_source, str(locked / "store"), "--no-progress"]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def slow_source(root: str, count: int = 300, size: tuple[int, int] = (1200, 1600)) -> str:
    """Hard links to one large noisy JPEG: seconds of decoding for the writers, no time to create."""
    noise = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    first = os.path.join(root, "c0", "0.jpg")
    os.makedirs(os.path.dirname(first))
    Image.fromarray(noise).save(first, quality=95)
    for i in range(1, count):
        folder = os.path.join(root, f"c{i % 3}")
        os.makedirs(folder, exist_ok=True)
        os.link(first, os.path.join(folder, f"{i}.jpg"))
    return root


def writing_started(folder) -> bool:
    """A writer's hidden partial output exists and holds data (the scan before FFCV's writing does not count, nor
    the lock file that holds the writer's PID from its start: the signal then came while torch was loading)."""
    for entry in os.scandir(folder):
        if entry.is_file() and entry.stat().st_size > 0 and not entry.name.endswith(".lock"):
            return True
        if entry.is_dir() and any(name.endswith(".tfrecord") for name in os.listdir(entry.path)):
            return True
    return False


@pytest.mark.parametrize("module, name", [("write_tfrecord", "store"), ("write_beton", "s.beton")])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "term", "kill"])
def test_interrupted_conversion_leaves_no_store(module, name, sig, tmp_path):
    if module == "write_beton":
        pytest.importorskip("ffcv")
    source = slow_source(str(tmp_path / "src"))
    out = tmp_path / "out" / name
    out.parent.mkdir()
    # Ctrl-C as in a terminal: a background job (how CI may run us) starts with SIGINT ignored, which Python keeps
    process = subprocess.Popen([sys.executable, "-m", f"dataset_prep.{module}", source, str(out), "--workers", "1",
                                "--max-resolution", "256", "--no-progress"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not writing_started(out.parent) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    assert process.poll() is None, "finished before it could be interrupted: make the source slower"
    if sig == signal.SIGKILL:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert not out.exists() and not os.path.exists(str(out) + ".manifest.json")
    if sig != signal.SIGKILL:
        # 130 or 143 from the converter's own handler, or ended by the signal itself (a shell's 130 too: once, in a
        # loaded run, a second KeyboardInterrupt reached the exit after the converter had said its line)
        assert process.returncode in (128 + sig, -sig) and b"interrupted; nothing written" in err, err.decode()[-2000:]
        assert os.listdir(out.parent) == []  # the partial output was removed


def test_a_stop_while_most_of_the_work_is_still_queued_ends_write_beton(tmp_path):
    """FFCV's writer queues all its chunks of sample indices at once: past the 64 KiB a pipe holds, the queue's
    feeder thread waits for the workers to read them. Stopped then, the writer said its line and hung at exit,
    waiting for that thread (4,000 images here: 160 KiB of chunks)."""
    pytest.importorskip("ffcv")
    source = slow_source(str(tmp_path / "src"), count=4000, size=(192, 256))
    out = tmp_path / "out" / "s.beton"
    out.parent.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "dataset_prep.write_beton", source, str(out), "--workers", "1",
                                "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not writing_started(out.parent) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "finished before it could be interrupted: make the source slower"
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()  # when it hung
    assert process.returncode == 143 and err.decode().strip().splitlines() == [f"{BETON}: interrupted; nothing "
                                                                              "written"]
    assert os.listdir(out.parent) == []


def test_progress_bar_shows_rate(clean_source, tmp_path, capsys):
    assert write_tfrecord.main([clean_source, str(tmp_path / "store"), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "write_tfrecord: 100%" in err and "img/s" in err


@pytest.mark.parametrize("module", ["write_tfrecord", "write_beton"])
def test_the_bars_end_before_the_summary_and_draw_no_idle_frames(module, clean_source, tmp_path):
    if module == "write_beton":
        pytest.importorskip("ffcv")
    out = str(tmp_path / ("store.beton" if module == "write_beton" else "store"))
    done = subprocess.run([sys.executable, "-m", f"dataset_prep.{module}", clean_source, out, "--workers", "2"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert done.returncode == 0, done.stdout
    frames = done.stdout.replace("\r", "\n").splitlines()
    summary = next(i for i, frame in enumerate(frames) if frame.startswith(f"python -m dataset_prep.{module}: wrote"))
    assert f"{module}: 100%" in "\n".join(frames[:summary])  # the bar closed before the summary was printed
    # one 0% frame when the bar opens; the idle loop used to redraw it every 0.05 s. (tqdm's own monitor may redraw
    # a bar that made no progress for 10 s, e.g. while a loaded machine starts the workers: that frame shows 00:10.)
    assert sum(frame.startswith(f"{module}:   0%") and "[00:0" in frame for frame in frames) == 1, frames


@pytest.mark.timeout(120)
def test_beton_worker_failure_is_an_error_not_a_hang(clean_source, tmp_path, monkeypatch, capsys,
                                                     keep_torch_threads):
    pytest.importorskip("ffcv")
    from dataset_prep.images import BadImage

    def vanished(path, max_side=0):
        raise BadImage("file changed")

    monkeypatch.setattr(write_beton, "load_rgb", vanished)  # FFCV's forked workers inherit it
    out = str(tmp_path / "s.beton")
    assert write_beton.main([clean_source, out, "--workers", "2", "--no-progress"]) == 1
    assert "writer worker failed" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["clean"]


def test_beton_val_stores_every_image_as_jpeg(clean_source, tmp_path, keep_torch_threads):
    pytest.importorskip("ffcv")
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    out = str(tmp_path / "val.beton")
    assert write_beton.main([clean_source, out, "--val", "--no-progress"]) == 0
    assert set(Reader(out).metadata["f0"]["mode"]) == {IMAGE_MODES["jpg"]}
    assert json.load(open(out + ".manifest.json"))["split"] == "val"


def _stops_left_to_the_parent(_) -> bool:
    return signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _dies_at_five(item: int) -> int:
    if item == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


@pytest.mark.timeout(120)  # the hangs these guard against waited forever
def test_pool_workers_leave_stops_to_the_parent_and_a_dead_one_is_an_error():
    """A whole-group SIGTERM (Slurm's preemption) killed multiprocessing.Pool's workers, one of them holding its
    result queue's lock, and Pool.terminate then waited forever (2 of 5 such stops of write_tfrecord). The workers
    now ignore the stops, which the parent handles by killing them, and share no lock; one that dies anyway ends
    the map with an error, where the Pool waited for its lost chunk."""
    from dataset_prep.progress import parallel_map
    assert all(parallel_map(_stops_left_to_the_parent, list(range(8)), workers=2, description="check",
                            progress=False))
    assert list(parallel_map(abs, list(range(-50, 50)), workers=3, description="check", progress=False)) == \
        [abs(value) for value in range(-50, 50)]  # in order, over chunks two ahead per worker
    with pytest.raises(ChildProcessError, match=r"^a worker process ended \(exit code -9\)"):
        list(parallel_map(_dies_at_five, list(range(64)), workers=2, description="check", progress=False))


@pytest.mark.parametrize("interval, most", [(None, 3), ("0", None)], ids=["log-file", "tqdm-env"])
def test_a_bar_written_to_a_log_redraws_every_half_minute(tmp_path, interval, most):
    """Output to a file or a pipe (a batch job's log): the bar's first frame, then its last, not ten redraws a
    second; TQDM_MININTERVAL, where set, decides (here 0: a frame per image)."""
    env = {key: value for key, value in os.environ.items() if key != "TQDM_MININTERVAL"}
    if interval is not None:
        env["TQDM_MININTERVAL"] = interval
    done = subprocess.run([sys.executable, "-m", "dataset_prep.synthetic_photos", str(tmp_path / "photos"),
                           "--classes", "2", "--per-class", "16"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frames = [frame for frame in done.stderr.replace("\r", "\n").splitlines() if frame.startswith("synthetic photos:")]
    assert frames and "32/32" in frames[-1], frames
    if most is None:
        assert len(frames) >= 16, frames
    else:
        assert len(frames) <= most, frames
