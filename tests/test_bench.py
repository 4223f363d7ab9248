"""The benchmarks run on small settings and print one JSON line per variant plus a ratio."""
import json

from msf_fast import bench


def test_bank_benchmark_prints_json(capsys):
    bench.main(["bank", "--bank-size=8192", "--batch-size=32", "--dim=64", "--chunk=1024", "--repeats=1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line.get("variant") for line in lines[:2]] == ["chunked", "dense"]
    assert lines[2]["same_loss"] is True and lines[0]["peak_extra_mb"] >= 0


def test_step_benchmark_times_both_variants(capsys):
    bench.main(["step", "--arch=resnet18", "--batch-size=8", "--resolution=32", "--bank-size=64",
                "--steps=1", "--repeats=1", "--reference", "--device=cpu"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line.get("variant") for line in lines[:2]] == ["msf-fast", "reference"]
    assert all(line["images_per_s"] > 0 and line["ms_per_step"] > 0 for line in lines[:2])
    assert lines[2]["speedup_vs_reference"] > 0 and lines[2]["process_peak_mem_mb"] > 0


def test_loader_benchmark_compares_the_installed_backends(tiny_imagefolder, tmp_path, monkeypatch, capsys):
    import importlib.util

    backends = ["torch"] + [name for name, module in (("ffcv", "ffcv"), ("dali", "nvidia.dali"))
                            if importlib.util.find_spec(module.split(".")[0]) and _importable(module)]
    monkeypatch.chdir(tmp_path)  # the stores are written under ./data/bench/stores
    bench.main(["loader", "--data", str(tiny_imagefolder / "train"), "--backend", *backends, "--compare",
                "--epochs", "2", "--max-batches", "2", "--batch-size", "8", "--resolution", "32", "--workers", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    runs, ratio = lines[:-1], lines[-1]
    assert [run["backend"] for run in runs] == backends
    assert all(run["images_per_s"] > 0 and run["peak_rss_mb"] > 0 and run["compile_s"] >= 0 for run in runs)
    assert all(ratio[f"{name}_vs_torch"] > 0 for name in backends[1:])


def _importable(module: str) -> bool:
    import importlib
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
