"""The benchmarks run on small settings and print one JSON line per variant plus a ratio."""
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from msf_fast import bench
from msf_fast.bench import loader as loader_bench

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--arch=resnet18", "--batch-size=8", "--resolution=32", "--bank-size=64", "--steps=3", "--warmup=1",
              "--device=cpu"]


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


def test_bank_benchmark_prints_json(capsys):
    bench.main(["bank", "--bank-size=8192", "--batch-size=32", "--dim=64", "--chunk=1024", "--repeats=1"])
    lines = json_lines(capsys.readouterr().out)
    assert [line.get("variant") for line in lines[:2]] == ["chunked", "dense"]
    assert lines[2]["same_loss"] is True and lines[0]["peak_extra_mb"] >= 0
    assert (lines[0]["chunk"], lines[1]["chunk"]) == (1024, None)  # the dense search scores the bank at once


def test_the_bank_benchmark_records_the_rows_it_scored_at_once(capsys):
    """A chunk larger than the bank recorded the chunk asked for, not the rows scored."""
    bench.main(["bank", "--bank-size=2048", "--batch-size=8", "--dim=16", "--chunk=65536", "--repeats=1"])
    assert json_lines(capsys.readouterr().out)[0]["chunk"] == 2048


def test_a_bank_too_large_for_memory_is_one_line_naming_the_sizes(capsys):
    """The variant's process failed in the CPU allocator; its whole traceback was the error's text."""
    assert bench.main(["bank", f"--bank-size={10**12}", "--repeats=1", "--device=cpu"]) == 1
    assert capsys.readouterr().err.strip() == (
        "python -m msf_fast.bench bank: error: out of memory on the CPU: 1,907,348.6 GiB asked at once, at "
        "--batch-size 256, --bank-size 1000000000000 and --dim 512: lower one of them")


def test_step_benchmark_times_both_variants(capsys):
    bench.main(["step", "--arch=resnet18", "--batch-size=8", "--resolution=32", "--bank-size=64",
                "--steps=1", "--repeats=1", "--reference", "--device=cpu"])
    lines = json_lines(capsys.readouterr().out)
    assert [line.get("variant") for line in lines[:2]] == ["msf-fast", "reference"]
    assert all(line["images_per_s"] > 0 and line["ms_per_step"] > 0 for line in lines[:2])
    assert lines[2]["speedup_vs_reference"] > 0 and lines[2]["process_peak_mem_mb"] > 0


@pytest.mark.parametrize("native, auto", [(True, "bf16-channels-last"), (False, "fp32-channels-last")])
def test_cpu_benchmark_times_each_precision_and_layout_and_rates_auto(native, auto, monkeypatch, capsys):
    from msf_fast import precision
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: precision.CpuBf16(native, "mocked"))
    bench.main(["cpu", "--batch-size=4", "--resolution=16", "--bank-size=16", "--steps=1", "--repeats=1",
                "--threads=1"])
    lines = json_lines(capsys.readouterr().out)
    rates = {line["variant"]: line["images_per_s"] for line in lines[:4]}
    assert sorted(rates) == sorted(["fp32-nchw", "fp32-channels-last", "bf16-nchw", "bf16-channels-last"])
    assert all(rate > 0 for rate in rates.values()) and lines[0]["threads"] == 1
    summary = lines[4]
    assert summary["auto"] == auto and summary["native_bf16"] is native and "mocked" in summary["auto_reason"]
    assert summary["fastest"] == max(rates, key=rates.get)
    assert summary["auto_vs_fastest"] == pytest.approx(rates[auto] / max(rates.values()), abs=0.01)
    assert summary["bf16_vs_fp32"] == pytest.approx(rates["bf16-channels-last"] / rates["fp32-channels-last"], abs=0.01)


# ---- bench augment -----------------------------------------------------------------------------------------

def test_augment_benchmark_times_both_views_and_each_op(capsys):
    bench.main(["augment", "--batch-size=8", "--resolution=32", "--batches=1", "--repeats=1", "--device=cpu"])
    lines = json_lines(capsys.readouterr().out)
    *ops, recipe = lines
    assert recipe["view"] == "both" and recipe["images_per_s"] > 0 and recipe["ms_per_batch"] > 0
    assert recipe["target_ms"] > 0 and recipe["online_ms"] > 0 and recipe["dtype"] == "float32"
    by_view = {(line["view"], line["op"]): line for line in ops}
    # w/s: the weak target view flips; the strong online view has every op but solarize
    assert {op for view, op in by_view if view == "target"} == {"base", "flip"}
    assert {op for view, op in by_view if view == "online"} == {
        "base", "flip", "jitter", "brightness", "contrast", "saturation", "hue", "grayscale", "blur"}
    assert by_view["online", "grayscale"]["p"] == 0.2 and by_view["online", "hue"]["p"] == 0.8
    assert all(line["ms_per_batch"] > 0 for line in ops)
    assert by_view["online", "base"]["ms_above_base"] is None


def test_augment_benchmark_whole_recipe_only(capsys):
    bench.main(["augment", "--batch-size=4", "--resolution=16", "--batches=1", "--repeats=1", "--device=cpu",
                "--recipe=w/w", "--no-per-op", "--dtype=bfloat16"])
    [recipe] = json_lines(capsys.readouterr().out)
    assert recipe["recipe"] == "w/w" and recipe["dtype"] == "bfloat16" and recipe["images_per_s"] > 0


# ---- bench resize ------------------------------------------------------------------------------------------

def test_resize_benchmark_times_every_variant_against_ours(capsys):
    bench.main(["resize", "--source", "64x48", "--size", "24", "--crops", "3", "--repeats", "1"])
    lines = json_lines(capsys.readouterr().out)
    runs, summary = lines[:-1], lines[-1]
    names = [run["variant"] for run in runs]
    assert names[:3] == ["ours", "opencv_area", "opencv_linear"] and "torch_antialias" in names
    assert all(run["us_per_view"] > 0 for run in runs) and runs[0]["mad"] < 0.002  # ours: torchvision's filter
    assert set(summary) == {"bench", "cpu", *(f"{name}_over_ours" for name in names[1:])}


# ---- bench train and its synthetic loader ------------------------------------------------------------------

def test_synthetic_loader_keeps_the_loader_contract():
    from pipelines import TwoViewLoader, two_view_recipe
    from pipelines.synthetic import SyntheticTwoViewLoader

    loader = SyntheticTwoViewLoader(two_view_recipe("w/s", 16), batch_size=4, steps_per_epoch=3, num_classes=3)
    assert isinstance(loader, TwoViewLoader) and len(loader) == 3 and loader.backend == "synthetic"
    assert loader.num_samples == 12 and loader.classes == ["synthetic_0", "synthetic_1", "synthetic_2"]
    batches = list(loader.iterate(0))
    assert len(batches) == 3 and loader.compile_seconds is not None
    online, target, labels = batches[0]
    assert online.shape == target.shape == (4, 3, 16, 16) and online.dtype == torch.float32
    assert online.is_contiguous(memory_format=torch.channels_last) and labels.tolist() == [0, 1, 2, 0]
    again = list(loader.iterate(0, skip_batches=1))  # the same (seed, epoch, step) gives the same views
    assert len(again) == 2 and torch.equal(again[0][0], batches[1][0]) and torch.equal(again[1][1], batches[2][1])
    assert not torch.equal(next(iter(loader.iterate(1)))[0], online)  # another epoch draws other parameters
    loader.set_resolution(8)
    assert next(iter(loader.iterate(0)))[0].shape == (4, 3, 8, 8)


def check_train_result(result: dict) -> None:
    for key in ("images_per_s", "loader_images_per_s", "step_images_per_s"):
        assert result[key] > 0, key
    assert 0 <= result["data_wait_fraction"] <= 1 and result["bound"] in ("loader", "compute")
    assert result["steps"] == 3 and result["batch"] == 8 and result["device"] == "cpu"
    assert result["end_to_end_vs_step"] == pytest.approx(result["images_per_s"] / result["step_images_per_s"],
                                                         rel=0.01)
    slower = min(result["loader_images_per_s"], result["step_images_per_s"])
    assert result["end_to_end_vs_slower_alone"] == pytest.approx(result["images_per_s"] / slower, rel=0.01)
    # --steps 3: two batches and steps before the end-to-end run, one after
    assert len(result["loader_images_per_s_blocks"]) == len(result["step_images_per_s_blocks"]) == 2
    assert min(result["step_images_per_s_blocks"]) <= result["step_images_per_s"] <= max(
        result["step_images_per_s_blocks"])


def test_train_benchmark_synthetic(capsys):
    bench.main(["train", "--synthetic", *TINY_TRAIN])
    captured = capsys.readouterr()
    [result] = json_lines(captured.out)  # the trainer's own lines went to stderr
    check_train_result(result)
    assert result["backend"] == "synthetic" and result["data"] == "synthetic" and result["workers"] == 0
    assert "busy_cores_of_others" in result  # None here: measured from a command's start (start_command)
    assert "bound:" in captured.err


def test_train_benchmark_with_the_torchvision_loader(tiny_imagefolder, tmp_path, capsys):
    out = tmp_path / "run"
    bench.main(["train", "--data", str(tiny_imagefolder / "train"), "--backend=torch", "--workers=1",
                "--out", str(out), *TINY_TRAIN])
    [result] = json_lines(capsys.readouterr().out)
    check_train_result(result)
    assert result["backend"] == "torch" and result["folder"] == str(out)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    [epoch] = [record for record in records if record.get("event") == "epoch"]
    assert epoch["step"] == 3 and "data_wait_fraction" in epoch and epoch["images_per_s"] > 0


def test_train_benchmark_refuses_a_missing_data_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["train", "--data", str(tmp_path / "missing"), *TINY_TRAIN])
    assert exit_info.value.code == 2
    assert f"error: --data {tmp_path / 'missing'}: expected an ImageFolder" in capsys.readouterr().err


# ---- bench loader ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, expected", [
    ("--beton", "NOTES", "--beton NOTES: expected a .beton; found a file, neither a .beton nor a folder"),
    ("--beton", "IMAGES", "--beton IMAGES: expected a .beton; found an ImageFolder"),
    ("--tfrecord", "IMAGES", "--tfrecord IMAGES: expected a TFRecord store; found an ImageFolder")])
def test_bench_loader_checks_the_stores_it_is_given_first(option, value, expected, tiny_imagefolder, tmp_path,
                                                          capsys):
    """A text file given as --beton was taken: the torch run was timed first, then the ffcv run failed with FFCV's
    'file format mismatch' traceback."""
    paths = {"IMAGES": str(tiny_imagefolder / "train"), "NOTES": str(tmp_path / "notes.md")}
    (tmp_path / "notes.md").write_text("# notes")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["loader", "--data", paths["IMAGES"], option, paths[value]])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"python -m msf_fast.bench loader: error: {expected.replace(value, paths[value])}"), line


def test_loader_benchmark_runs_the_torchvision_baseline(tiny_imagefolder, capsys):
    bench.main(["loader", "--data", str(tiny_imagefolder / "train"), "--backend", "torch", "--epochs", "1",
                "--max-batches", "2", "--batch-size", "8", "--resolution", "32", "--workers", "1"])
    [run] = json_lines(capsys.readouterr().out)
    assert run["backend"] == "torch" and run["images_per_s"] > 0 and run["peak_rss_mb"] > 0


@pytest.mark.slow
def test_loader_benchmark_compares_the_installed_backends(tiny_imagefolder, tmp_path, monkeypatch, capsys, request):
    """Slow (a child process per backend, FFCV's compilation, about 30 s): the README's loader ratios come from it."""
    fast = [name for name, module in (("ffcv", "ffcv"), ("dali", "nvidia.dali"))
            if importlib.util.find_spec(module.split(".")[0]) and _importable(module)]
    if not fast:
        pytest.skip("no fast loader to compare with: install FFCV (pip install -e '.[ffcv]') or DALI ('.[dali]')")
    backends = ["torch", *fast] + (["ffcv-twice", "ffcv-opencv"] if "ffcv" in fast else [])  # the other FFCV paths
    monkeypatch.chdir(tmp_path)  # the stores are written under ./data/bench/stores
    # The children's temporary files, in a folder of a short path: multiprocessing makes its AF_UNIX sockets there
    # (torch's DataLoader passes batches as file descriptors through them), and under make test's workers a
    # tmp_path folder made the socket path longer than the 108 bytes Linux allows; the torchvision child then waited
    # forever for its first batch of the second epoch.
    scratch = Path(tempfile.mkdtemp(prefix="bench"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(scratch))
    bench.main(["loader", "--data", str(tiny_imagefolder / "train"), "--backend", *backends, "--compare",
                "--epochs", "2", "--max-batches", "2", "--batch-size", "8", "--resolution", "32", "--workers", "1"])
    lines = json_lines(capsys.readouterr().out)
    runs, ratio = lines[:-1], lines[-1]
    assert [run["backend"] for run in runs] == backends
    assert all(run["images_per_s"] > 0 and run["peak_rss_mb"] > 0 and run["compile_s"] >= 0 for run in runs)
    assert all(ratio[f"{name}_vs_torch"] > 0 for name in backends[1:])
    if "ffcv" in fast:
        for other in ("ffcv-twice", "ffcv-opencv"):
            assert ratio[f"ffcv_vs_{other}"] == round(ratio["ffcv_images_per_s"] / ratio[f"{other}_images_per_s"], 2)
    # DALI's conditionals write generated modules to the temporary folder and remove them at exit: a child that left
    # through os._exit (as the FFCV ones must) leaked 5 a run into /tmp
    assert not [path.name for path in scratch.iterdir() if path.name.startswith("__autograph")]


def test_ffcv_child_exits_cleanly_after_an_epoch_cut_short(tiny_imagefolder, tmp_path):
    """FFCV's epoch thread is still decoding the batches ahead when the child is done: it must exit 0."""
    if not _importable("ffcv"):
        pytest.skip("FFCV is not installed (pip install -e '.[ffcv]')")
    from dataset_prep import write_beton
    beton = str(tmp_path / "train.beton")
    assert write_beton.main([str(tiny_imagefolder / "train"), beton, "--workers", "1", "--no-progress"]) == 0
    done = subprocess.run([sys.executable, "-m", "msf_fast.bench.loader", "--backend", "ffcv", "--data", beton,
                           "--beton", beton, "--epochs", "2", "--max-batches", "1", "--batch-size", "4",
                           "--resolution", "32", "--workers", "2", "--photometric", "off"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["backend"] == "ffcv"


def test_a_failed_child_is_one_line_and_the_other_results_stay(tiny_imagefolder, tmp_path, capsys, monkeypatch):
    from msf_fast.bench import loader
    monkeypatch.setattr(loader, "store_problem", lambda path, backend: None)  # so that the ffcv child meets it
    missing = str(tmp_path / "missing.beton")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["loader", "--data", str(tiny_imagefolder / "train"), "--backend", "torch", "ffcv",
                    "--beton", missing, "--epochs", "1", "--max-batches", "1", "--batch-size", "8",
                    "--resolution", "32", "--workers", "0"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    [torch_run] = json_lines(captured.out)
    assert torch_run["backend"] == "torch"
    [line] = captured.err.strip().splitlines()
    assert line.startswith("python -m msf_fast.bench loader: the ffcv run failed (exit code ")
    assert "CalledProcessError" not in line


def _store_args(source: Path) -> Namespace:
    return Namespace(data=str(source), beton="", tfrecord="", store_resolution=256)


def test_cached_stores_are_keyed_by_the_source_folder(tiny_imagefolder, tmp_path, monkeypatch, capsys):
    import shutil

    from dataset_prep.stores import read_manifest
    first, second = tmp_path / "a" / "train", tmp_path / "b" / "train"  # two folders of one name
    shutil.copytree(tiny_imagefolder / "train", first)
    shutil.copytree(tiny_imagefolder / "train", second)
    (second / "class_0" / "0.jpg").unlink()
    monkeypatch.chdir(tmp_path)
    # the TFRecord writer needs no DALI: the cache's logic is the same for both stores
    store_a = loader_bench.store_for(_store_args(first), "dali")
    store_b = loader_bench.store_for(_store_args(second), "dali")
    assert store_a != store_b and os.path.basename(store_a).startswith("train-")
    assert os.path.realpath(read_manifest(store_a)["source"]) == os.path.realpath(first)
    assert os.path.realpath(read_manifest(store_b)["source"]) == os.path.realpath(second)
    assert read_manifest(store_b)["counts"] != read_manifest(store_a)["counts"]
    capsys.readouterr()

    written = os.path.getmtime(os.path.join(store_a, "manifest.json"))
    assert loader_bench.store_for(_store_args(first), "dali") == store_a
    assert f"reusing {store_a}, written from {os.path.realpath(first)}" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(store_a, "manifest.json")) == written

    shutil.copy(first / "class_1" / "0.jpg", first / "class_1" / "new.jpg")  # the source changed
    os.utime(first / "class_1", (written + 10, written + 10))
    assert loader_bench.store_for(_store_args(first), "dali") == store_a
    assert f"writing {store_a} again: {os.path.realpath(first)} changed" in capsys.readouterr().err
    assert read_manifest(store_a)["counts"]["written"] == read_manifest(store_b)["counts"]["written"] + 2


# ---- help ----------------------------------------------------------------------------------------------------

def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m msf_fast.bench ") and "SUPPRESS" not in text
    from msf_fast.bench.cli import COMMANDS
    for name in COMMANDS:
        assert f"    {name} " in text
    assert "torchvision (the baseline) vs FFCV" in text and "vs DALI" in text


def command_names() -> list[str]:
    from msf_fast.bench.cli import COMMANDS
    return list(COMMANDS)


@pytest.mark.parametrize("command", command_names())
def test_every_option_has_help_and_a_default(command, capsys):
    from msf_fast.bench.cli import HelpFormatter, build_parser

    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    parser = subparsers.choices[command]
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m msf_fast.bench {command} ") and "SUPPRESS" not in text
    formatter = HelpFormatter("x")
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings}: no help"
        shown = formatter._get_help_string(action)
        flag = action.nargs == 0
        assert flag or action.required or action.default is None or "default" in shown, \
            f"{command} {action.option_strings}: no default shown"


@pytest.mark.parametrize("argv, expected", [
    (["train", "--synthetic", "--steps", "0"], "train: error: argument --steps: must be at least 1, got 0"),
    (["loader", "--data", "/nonexistent/photos", "--backend", "torch"],
     "loader: error: --data /nonexistent/photos: expected an ImageFolder, a .beton or a TFRecord store; it does not "
     "exist"),
    (["plan", "--images-per-s", "4500", "--gpu", "8"], "plan: error: unknown option --gpu (did you mean --gpus?)"),
    (["step", "--bach-size", "3"], "step: error: unknown option --bach-size (did you mean --batch-size?)"),
    (["cpu", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["cpu", "--threads", "-1"], "--threads: must be at least 0, got -1"),
    (["step", "--steps", "0"], "--steps: must be at least 1, got 0"),
    (["ema", "--repeats", "0"], "ema: error: argument --repeats: must be at least 1, got 0"),
    (["augment", "--batches", "-1"], "augment: error: argument --batches: must be at least 1, got -1"),
    (["resize", "--repeats", "0"], "resize: error: argument --repeats: must be at least 1, got 0"),
    (["loader", "--data", "x", "--epochs", "0"], "loader: error: argument --epochs: must be at least 1, got 0"),
    (["plan", "--images-per-s", "4500", "--gpus", "0"], "plan: error: argument --gpus: must be at least 1, got 0"),
])
def test_a_bench_mistake_is_one_line_before_any_work(argv, expected, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main(argv)
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m msf_fast.bench") and expected in line


def test_every_count_is_checked_by_the_parser():
    """A count typed as a bare int let 0 or -1 through to a median of nothing or a loop that never runs: every
    integer option of every command is an int_at_least (refused in one line before any work)."""
    from msf_fast.bench.cli import build_parser

    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    bare = [f"{name} {action.option_strings[0]}" for name, parser in subparsers.choices.items()
            for action in parser._actions if action.type is int]
    assert not bare


def test_option_mistakes_and_help_answer_before_torch_loads():
    """Each command's module is imported to read its options: those that imported torch at the top answered a
    mistyped count after the 2-3 s torch takes to load. In one fresh interpreter, command by command."""
    probe = ("import sys\nfrom msf_fast.bench.cli import COMMANDS, main\nfor name in COMMANDS:\n"
             "    for argv in ([name, '--batch-size', '0'], [name, '--help']):\n"
             "        try:\n            main(argv)\n        except SystemExit as exit_:\n"
             "            print('@', name, argv[-1], exit_.code, 'torch' in sys.modules)\n")  # after the help text
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    from msf_fast.bench.cli import COMMANDS
    answers = [line for line in done.stdout.splitlines() if line.startswith("@ ")]
    assert answers == [f"@ {name} {last} {code} False" for name in COMMANDS
                       for last, code in (("0", 2), ("--help", 0))], done.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["step"], ["ema"], ["augment"]])
@pytest.mark.parametrize("device, expected", [("cuda", "--device cuda: no CUDA device is available"),
                                              ("bogus", "argument --device: 'bogus': expected auto, cpu, cuda or "
                                                        "cuda:N")])
def test_a_device_that_is_not_there_is_one_line(command, device, expected, capsys):
    try:
        code = bench.main([*command, "--device", device])
    except SystemExit as exit_:  # the parser's own check
        code = exit_.code
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert expected in line


@pytest.mark.parametrize("argv, expected", [
    (["ema", "--arch", "resnet"], "argument --arch: unknown arch 'resnet'; expected one of resnet18, resnet34,"),
    (["step", "--arch", "vit"], "argument --arch: unknown arch 'vit'; expected one of resnet18, resnet34,"),
    (["train", "--synthetic", "--arch", "resnet"], "argument --arch: unknown arch 'resnet'"),
    (["ema", "--device", "gpu"], "argument --device: 'gpu': expected auto, cpu, cuda or cuda:N"),
    (["resize", "--source", "500x"], "argument --source: '500x': expected WIDTHxHEIGHT in pixels, both positive"),
    (["resize", "--source", "0x375"], "argument --source: '0x375': expected WIDTHxHEIGHT in pixels"),
    (["resize", "--source", "100000x100000"], "--source 100000x100000: at most 8192 pixels a side"),
    (["resize", "--size", "100000"], "--size 100000: at most 8192 pixels"),
    (["resize", "--scale", "nan", "1"], "argument --scale: must be in (0, 1], got nan"),
    (["resize", "--scale", "2", "3"], "argument --scale: must be in (0, 1], got 2 (a fraction: 0.02 for 2 %)"),
    (["resize", "--scale", "1", "0.5"], "--scale 1 0.5: the smallest crop area first (--scale 0.5 1)"),
    (["resize", "--scale", "1e-300", "1e-300"], "--scale 1e-300 1e-300: a crop of at most 1e-300 of the 500x375 photo "
                                                 "is under one pixel"),
    (["train", "--synthetic", "--workers", "4"], "--workers 4: --synthetic has no loader (its batches are made on "
                                                "the device); give --data to time a loader"),
    (["resize", "--crops", "100000000"], "--crops 100000000: at most 10,000"),
    (["resize", "--repeats", "1000000"], "--repeats 1000000: at most 1,000"),
    (["resize", "--crops", "10000", "--repeats", "1000"], "--crops 10000 x --repeats 1000: at most 100,000 timed"),
    (["step", "--batch-size", "1"], "--batch-size 1: BatchNorm needs at least 2 images per step"),
    (["cpu", "--topk", "500", "--bank-size", "256"], "--topk 500: must not exceed --bank-size 256"),
    (["bank", "--topk", "100", "--bank-size", "64"], "--topk 100: must not exceed --bank-size 64"),
    (["train", "--synthetic", "--topk", "500", "--bank-size", "256", "--batch-size", "64"],
     "--topk 500: must not exceed --bank-size 256"),
    (["train", "--data", "/nonexistent/images"], "--data /nonexistent/images: expected an ImageFolder"),
    (["train", "--synthetic", "--device", "cuda:1"], "--device cuda:1: the trainer takes one GPU per process, as "
                                                      "cuda; choose it with CUDA_VISIBLE_DEVICES=1"),
])
def test_names_and_sizes_are_checked_before_torch_loads(argv, expected):
    """A wrong arch, device or image size, and values out of range, were told after torch loaded (1.2-7 s), the
    size as Python's 'invalid literal for int()'."""
    probe = ("import sys\nfrom msf_fast.bench.cli import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit as exit_:\n    print('@', exit_.code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "@ 2 False", done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"python -m msf_fast.bench {argv[0]}: error: {expected}"), line


def test_train_tells_the_trainers_mistakes_with_its_own_options(capsys):
    """bench train builds the trainer's config from its options; its errors named the config keys
    (msf.topk=500, msf.bank_size=256), which bench train does not take."""
    from msf_fast.bench.train import in_bench_options

    assert in_bench_options("msf.topk=500: must not exceed msf.bank_size=256") == (
        "--topk 500: must not exceed --bank-size 256")
    assert in_bench_options("msf.bank_size=100: must be a multiple of the global batch 64 (train.batch_size=64 x 1 "
                            "process)") == ("--bank-size 100: must be a multiple of the global batch 64 "
                                               "(--batch-size 64 x 1 process)")
    assert in_bench_options("data.train_path=/x: no such folder") == "--data /x: no such folder"
    assert in_bench_options("train.batch_size_per_gpu=3") == "train.batch_size_per_gpu=3"  # only whole keys
    with pytest.raises(SystemExit) as exit_:
        bench.main(["train", "--synthetic", "--arch", "resnet18", "--batch-size", "64", "--bank-size", "256",
                    "--topk", "500", "--steps", "1", "--device", "cpu"])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("python -m msf_fast.bench train: error: --topk 500: must not exceed --bank-size 256 "
                    "(see --help)")


def test_a_bug_is_not_told_as_a_usage_mistake(monkeypatch):
    """Only the commands' own option checks (UsageError) are told as usage mistakes: any other ValueError is a bug
    and keeps its traceback (bench main turned every ValueError into one usage line)."""
    from msf_fast.bench import resize

    def broken(args):
        raise ValueError("an internal mistake")

    monkeypatch.setattr(resize, "bench_resize", broken)
    with pytest.raises(ValueError, match="an internal mistake"):
        bench.main(["resize"])


def test_the_step_benchmark_searches_the_bank_as_the_trainer_does(monkeypatch):
    """bench step built its MSF with model.py's 65,536-row chunk, the trainer's on the CPU but not on CUDA."""
    from msf_fast import bank
    from msf_fast.bench import step
    monkeypatch.setitem(bank.DEFAULT_CHUNK_ROWS, "cpu", 48)  # a chunk only the device's default would give
    args = Namespace(arch="resnet18", bank_size=64, topk=5)
    images = torch.zeros(2, 3, 32, 32)
    run = step.our_step(args, torch.device("cpu"), "off", False, images, images, torch.zeros(2, dtype=torch.long))
    model = next(cell.cell_contents for cell in run.__closure__ if isinstance(cell.cell_contents, torch.nn.Module))
    assert model.bank.chunk_size == 48
