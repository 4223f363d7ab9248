"""Time-to-train arithmetic, its CLI, and the GPU check script's CPU dry run."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msf_fast import bench
from msf_fast.bench.plan import (IMAGENET_TRAIN_IMAGES, MEASURED_PER_CORE, loader_ceiling, plan_training,
                                 required_images_per_s_per_gpu)

ROOT = Path(__file__).resolve().parents[1]


def test_compute_bound_hours_by_hand():
    # 4,500 img/s x 8 GPUs x 0.9 = 32,400 img/s; 200 x 1,281,167 = 256,233,400 images; / 32,400 / 3,600 h
    plan = plan_training(4500, 8)
    assert plan.efficiency == 0.9 and plan.compute_images_per_s == pytest.approx(32_400)
    assert plan.binding_limit == "compute" and plan.effective_images_per_s == pytest.approx(32_400)
    assert plan.hours == pytest.approx(256_233_400 / 32_400 / 3600)
    assert plan.hours == pytest.approx(2.19679, abs=1e-5)


def test_one_gpu_scales_perfectly_by_default():
    plan = plan_training(1000, 1, epochs=10, dataset_size=360_000)
    assert plan.efficiency == 1.0 and plan.hours == pytest.approx(1.0)


def test_slower_loader_binds():
    plan = plan_training(4500, 8, loader_images_per_s=20_000)
    assert plan.binding_limit == "loader" and plan.effective_images_per_s == 20_000
    assert plan.hours == pytest.approx(200 * IMAGENET_TRAIN_IMAGES / 20_000 / 3600)
    faster_loader = plan_training(4500, 8, loader_images_per_s=50_000)
    assert faster_loader.binding_limit == "compute"
    assert faster_loader.hours == pytest.approx(plan_training(4500, 8).hours)


def test_two_hour_goal_needs_about_4500_images_per_s_per_gpu():
    assert required_images_per_s_per_gpu(2.0, 8, efficiency=1.0) == pytest.approx(256_233_400 / 7200 / 8)
    assert required_images_per_s_per_gpu(2.0, 8) == pytest.approx(256_233_400 / 7200 / 8 / 0.9)
    assert plan_training(required_images_per_s_per_gpu(2.0, 8), 8).hours == pytest.approx(2.0)


def test_loader_ceiling_scales_with_cores():
    assert loader_ceiling(150.0, 96) == pytest.approx(14_400)


@pytest.mark.parametrize("kwargs, message", [
    ({"images_per_s_per_gpu": 0}, "images per second per GPU must be positive"),
    ({"images_per_s_per_gpu": -5}, "images per second per GPU must be positive"),
    ({"gpus": 0}, "GPU count must be a positive integer"),
    ({"gpus": 1.5}, "GPU count must be a positive integer"),
    ({"epochs": 0}, "epochs must be positive"),
    ({"dataset_size": -1}, "dataset size must be a positive integer"),
    ({"loader_images_per_s": 0}, "loader's images per second must be positive"),
    ({"loader_images_per_s": float("inf")}, "loader's images per second must be positive and finite"),
    ({"images_per_s_per_gpu": float("nan")}, "images per second per GPU must be positive and finite"),
    ({"efficiency": 0}, r"scaling efficiency must be in \(0, 1\]"),
    ({"images_per_s_per_gpu": 1e308}, "plan out of range"),  # printed JSON's Infinity
    ({"images_per_s_per_gpu": 1e-300}, "plan out of range"),  # printed a 300-digit number of hours
    ({"loader_images_per_s": 1e-300}, "plan out of range"),
    ({"efficiency": 1.2}, r"scaling efficiency must be in \(0, 1\]"),
])
def test_bad_inputs_are_refused(kwargs, message):
    arguments = {"images_per_s_per_gpu": 4500, "gpus": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        plan_training(**arguments)


def test_plan_cli_prints_one_json_line_and_a_sentence(capsys):
    bench.main(["plan", "--images-per-s", "4500", "--gpus", "8", "--loader-images-per-s", "20000"])
    captured = capsys.readouterr()
    [line] = captured.out.strip().splitlines()
    result = json.loads(line)
    assert result["binding_limit"] == "loader" and result["effective_images_per_s"] == 20_000
    assert result["hours"] == pytest.approx(256_233_400 / 20_000 / 3600, abs=1e-3) and result["meets_target"] is False
    assert result["images_per_s_per_gpu_needed"] == pytest.approx(4942.8, abs=0.1)
    assert "loader-bound" in captured.err


def test_the_store_resolution_sets_the_loader_cores_needed_and_the_ceiling(capsys):
    """A 512-px store costs more CPU per image than a 256-px one: the plan says how many cores feed the GPUs."""
    def plan(*options):
        bench.main(["plan", "--images-per-s", "4500", "--gpus", "8", *options])
        return json.loads(capsys.readouterr().out.strip())
    small, large = plan("--store-resolution", "256"), plan("--store-resolution", "512")
    assert small["loader_images_per_s_per_core"] == MEASURED_PER_CORE[256]
    assert large["loader_images_per_s_per_core"] == MEASURED_PER_CORE[512] < MEASURED_PER_CORE[256]
    assert large["loader_rate_source"].startswith("measured at a 512-px store")
    assert large["loader_cores_needed"] == pytest.approx(32_400 / MEASURED_PER_CORE[512], abs=0.1)
    assert large["loader_cores_needed"] > small["loader_cores_needed"]
    # between and near the measured sizes: a fixed cost per image plus one per pixel through both (300 px got the
    # 256-px rate, 1.4x its pixels unpriced)
    seconds = {size: 1 / rate for size, rate in MEASURED_PER_CORE.items()}
    per_pixel = (seconds[512] - seconds[256]) / (512 ** 2 - 256 ** 2)
    for size in (200, 300, 500, 600):
        estimated = plan("--store-resolution", str(size))
        assert estimated["loader_images_per_s_per_core"] == pytest.approx(
            1 / (seconds[256] + per_pixel * (size ** 2 - 256 ** 2)), abs=0.1)
        assert estimated["loader_rate_source"].startswith("estimated by pixels from the rates measured at 256- and "
                                                          "512-px stores")
    assert (MEASURED_PER_CORE[256] > plan("--store-resolution", "300")["loader_images_per_s_per_core"]
            > plan("--store-resolution", "500")["loader_images_per_s_per_core"] > MEASURED_PER_CORE[512])
    assert small["binding_limit"] == "compute"  # no node cores given: no ceiling
    bound = plan("--store-resolution", "512", "--node-cores", "8")
    assert bound["binding_limit"] == "loader"
    assert bound["effective_images_per_s"] == pytest.approx(8 * MEASURED_PER_CORE[512], abs=0.1)
    mine = plan("--store-resolution", "512", "--node-cores", "64", "--loader-images-per-s-per-core", "1000")
    assert mine["loader_images_per_s"] == 64_000
    assert mine["loader_rate_source"] == "given, instead of the figure for --store-resolution 512"
    with pytest.raises(SystemExit):
        bench.main(["plan", "--images-per-s", "4500", "--store-resolution", "1024"])
    assert ("--store-resolution 1024: figures exist for stores of 192 to 640 px (measured at 256 and 512)"
            in capsys.readouterr().err)


@pytest.mark.parametrize("options, message", [
    (["--loader-images-per-s", "30000", "--node-cores", "96"],
     "--loader-images-per-s is the whole node's ceiling, and --node-cores makes one from the rate per core: give "
     "one of them"),
    (["--loader-images-per-s", "30000", "--node-cores", "96", "--store-resolution", "512"],
     "--loader-images-per-s is the whole node's ceiling, and --node-cores makes one from the rate per core: give "
     "one of them"),
    (["--node-cores", "96"],
     "--node-cores needs the loader's rate per core: --loader-images-per-s-per-core or --store-resolution"),
    (["--loader-images-per-s", "30000", "--loader-images-per-s-per-core", "300"],
     "give the node's --loader-images-per-s or the rate per core (--loader-images-per-s-per-core), not both"),
])
def test_plan_loader_options_that_do_not_go_together_say_why(options, message, capsys):
    """'--loader-images-per-s 30000 --node-cores 96' was told 'not both' of an option it had not given."""
    with pytest.raises(SystemExit):
        bench.main(["plan", "--images-per-s", "4500", *options])
    assert capsys.readouterr().err.strip() == f"python -m msf_fast.bench plan: error: {message} (see --help)"


def test_a_rate_per_core_alone_gives_the_cores_needed_as_a_store_resolution_does(capsys):
    """It was refused without --node-cores, which --store-resolution alone never needed; and the sentence before
    said the loader was 'not limiting' when its ceiling was only unknown."""
    for options in (["--loader-images-per-s-per-core", "300"], ["--store-resolution", "256"]):
        bench.main(["plan", "--images-per-s", "4500", *options])
        captured = capsys.readouterr()
        assert json.loads(captured.out)["loader_images_per_s"] is None
        first, second = captured.err.splitlines()
        assert "compute-bound; the loader's ceiling is not known (give --node-cores)." in first
        cores = math.ceil(32_400 / (300 if "300" in options else MEASURED_PER_CORE[256]))
        assert second.startswith(f"To keep up with the GPUs (32,400 img/s), the loader needs {cores} CPU cores ")


def test_a_loader_bound_plan_says_what_the_loader_must_deliver(capsys):
    """Faster GPUs alone cannot help a loader-bound run: the sentence named only the per-GPU rate."""
    bench.main(["plan", "--images-per-s", "5000", "--store-resolution", "512", "--node-cores", "96"])
    sentence = capsys.readouterr().err.splitlines()[0]
    # 200 epochs x 1,281,167 images in 2 h = 35,588 img/s; at 277 img/s per core: 129 cores, 96 given (26,592 img/s)
    assert sentence.endswith(": 26,592 img/s, 2.68 h, loader-bound (the GPUs alone: 36,000). 2 h needs 4,943 img/s "
                             "per GPU and a loader of 35,588 img/s (129 cores)."), sentence
    bench.main(["plan", "--images-per-s", "100", "--gpus", "8"])
    assert capsys.readouterr().err.splitlines()[0].endswith("2 h needs 4,943 img/s per GPU.")  # compute-bound


def test_the_plan_says_whether_the_nodes_cores_feed_the_gpus(capsys):
    """The node's cores were never named: 117 needed and 96 given were left to the reader to compare."""
    for cores, verdict in (("96", "the node's 96 are too few"), ("300", "the node's 300 are enough")):
        bench.main(["plan", "--images-per-s", "4500", "--store-resolution", "512", "--node-cores", cores])
        captured = capsys.readouterr()
        assert json.loads(captured.out)["node_cores"] == int(cores)
        assert captured.err.splitlines()[1].startswith(f"To keep up with the GPUs (32,400 img/s), the loader needs "
                                                       f"117 CPU cores; {verdict} (277 img/s per core, measured")
    bench.main(["plan", "--images-per-s", "4500", "--gpus", "1"])
    assert " on 1 GPU at 4,500 img/s (scaling 1): " in capsys.readouterr().err


def test_plan_cli_rejects_bad_inputs_clearly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["plan", "--images-per-s", "0", "--gpus", "8"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("python -m msf_fast.bench plan: error: argument --images-per-s: must "
                                               "be a positive number, got 0 (see --help)")


@pytest.mark.parametrize("arguments, expected", [
    (["--bogus"], "gpu_check: unknown argument '--bogus' (see --help)"),
    (["--device"], "gpu_check: --device needs a value (see --help)"),
    (["--device", "tpu"], "gpu_check: --device must be cuda or cpu, got 'tpu' (see --help)"),
    (["--steps", "abc"], "gpu_check: --steps must be an integer >= 1, got 'abc'"),
    (["--train-steps", "0"], "gpu_check: --train-steps must be an integer >= 1, got '0'"),
    (["--out", "/proc/gpu_check"], "gpu_check: --out /proc/gpu_check: cannot create or write that folder"),
])
def test_gpu_check_argument_mistakes_are_one_line_before_any_check(arguments, expected):
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr.strip().splitlines(), done.stdout) == (2, [expected], "")


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The whole device script with tiny settings, from the repository root, without an install. Slow (about 1 min:
    each check is a fresh Python process): the script runs where no test can fix it afterwards, on a lent GPU."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # a hang guard, not a speed check
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu_check summary" in done.stdout
    for check in ("cuda tests", "step", "step 24 px", "ema", "bank float32", "bank bfloat16", "augment", "jpeg decode",
                  "train", "plan", "plan (end-to-end)"):
        assert any(row.startswith(check) for row in done.stdout.splitlines()), check

    def json_lines(name):
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]

    step = {line.get("variant"): line for line in json_lines("step.jsonl")}
    assert step["msf-fast"]["images_per_s"] > 0 and step["reference"]["images_per_s"] > 0
    [lower] = [line for line in json_lines("step_24px.jsonl") if line.get("variant")]
    assert lower["resolution"] == 24 and lower["variant"] == "msf-fast" and lower["images_per_s"] > 0
    assert {"foreach", "reference"} <= {line.get("variant") for line in json_lines("ema.jsonl")}
    for name, dtype in (("bank.jsonl", "float32"), ("bank_bf16.jsonl", "bfloat16")):
        bank = json_lines(name)
        assert [line.get("variant") for line in bank[:2]] == ["chunked", "dense"] and bank[0]["dtype"] == dtype
        assert bank[2]["same_loss"] is True
    [plan] = json_lines("plan.jsonl")
    assert plan["images_per_s_per_gpu"] == step["msf-fast"]["images_per_s"] and plan["hours"] > 0
    augment = json_lines("augment.jsonl")
    assert augment[-1]["view"] == "both" and augment[-1]["images_per_s"] > 0
    assert {line["op"] for line in augment[:-1]} >= {"base", "flip", "hue", "blur"}
    [jpeg] = json_lines("jpeg.jsonl")  # on the CPU only libjpeg-turbo's row
    assert jpeg["variant"] == "cpu" and jpeg["images"] == 4 and jpeg["us_per_image"] > 0 and jpeg["mean_kb"] > 10
    [train] = json_lines("train.jsonl")
    assert train["backend"] == "synthetic" and train["bound"] in ("loader", "compute")
    assert train["images_per_s"] > 0 and train["step_images_per_s"] > 0 and train["loader_images_per_s"] > 0
    [plan_train] = json_lines("plan_train.jsonl")
    assert plan_train["images_per_s_per_gpu"] == train["images_per_s"]
    statuses = dict(line.split("\t")[:2] for line in (tmp_path / "status.tsv").read_text().splitlines())
    assert statuses["cuda tests"] == "skipped: no CUDA" and statuses["step"] == "ok"
    assert statuses["augment"] == statuses["train"] == statuses["plan (end-to-end)"] == "ok"
    assert (tmp_path / "summary.txt").read_text() in done.stdout
