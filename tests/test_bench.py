"""Claims of vmamba_ref/tools/bench.py: the JSON report has the documented fields and consistent
numbers, training mode times a backward pass, low precision runs under autocast or as a cast
model (`cast`), an unavailable backend is refused and never replaced, and every bad argument is
named."""

import json
import math
import statistics

import pytest
import torch

import vmamba_ref.contract as contract
import vmamba_ref.tools.bench as bench
from vmamba_ref import available_backends as available
from vmamba_ref import fastest_backend
from vmamba_ref.contract import BackendUnavailableError
from vmamba_ref.tools.bench import BenchConfig, check_backend_runs, format_result, run_benchmark
from vmamba_ref.tools.cli import main

REPORT_FIELDS = {
    "model", "backend", "mode", "batch_size", "resolution", "dtype", "cast", "device", "warmup",
    "iters", "train", "seed", "images_per_s", "ms_per_iter", "times_s", "params", "threads", "device_name",
    "torch",
}  # fmt: skip


def test_cli_writes_a_valid_json_report(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    argv = ["bench", "vmamba_mini", "--backend", "ref", "--batch-size", "2", "--resolution", "16",
            "--warmup", "1", "--iters", "2", "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert set(report) == REPORT_FIELDS
    assert (report["model"], report["backend"], report["mode"], report["dtype"]) == (
        "vmamba_mini", "ref", "inference", "float32",
    )  # fmt: skip
    assert (report["batch_size"], report["resolution"], report["warmup"], report["iters"]) == (2, 16, 1, 2)
    times = report["times_s"]
    assert len(times) == 2 and all(t > 0 for t in times)
    ips = report["images_per_s"]
    assert ips["min"] <= ips["median"] <= ips["max"]
    assert math.isclose(ips["mean"], 2 * 2 / sum(times))
    assert math.isclose(ips["median"], statistics.median(2 / t for t in times))
    assert math.isclose(report["ms_per_iter"]["max"], 1e3 * max(times))
    assert report["params"] == 280_042 and report["threads"] == torch.get_num_threads()
    assert f"{ips['median']:.2f}" in printed and str(path) in printed


def test_cli_defaults_to_the_fastest_installed_backend_and_says_so(capsys):
    argv = ["bench", "vmamba_mini", "--batch-size", "1", "--resolution", "16", "--warmup", "0", "--iters", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    fastest = fastest_backend("cpu")
    assert f"backend: {fastest} (the fastest installed for cpu" in printed
    assert f"vmamba_mini, backend {fastest}," in printed
    assert f"{torch.get_num_threads()} torch threads" in printed and "tunes nothing" in printed


def test_train_mode_runs_forward_and_backward(monkeypatch):
    calls = []
    original = torch.Tensor.backward

    def counted_backward(self, *args, **kwargs):
        calls.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counted_backward)
    config = BenchConfig(model="vmamba_mini", batch_size=2, resolution=16, warmup=1, iters=1, train=True)
    result = run_benchmark(config)
    assert result.to_dict()["mode"] == "train"
    assert calls == [torch.Size([])] * 2  # one scalar loss per pass, warm-up included
    assert "train" in format_result(result)


def _record_heads(monkeypatch) -> list[tuple[torch.dtype, torch.dtype, bool]]:
    """(input dtype, weight dtype, autocast on) of every classifier-head call from now on."""
    seen = []
    original = torch.nn.Linear.forward

    def recording(self, x):
        seen.append((x.dtype, self.weight.dtype, torch.is_autocast_enabled("cpu")))
        return original(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    return seen


def test_mixed_precision_runs_under_autocast(monkeypatch):
    seen = _record_heads(monkeypatch)
    # vmamba_tiny: every stage has dt_rank >= 6 (see the report on vmamba_mini under autocast).
    config = BenchConfig(model="vmamba_tiny", batch_size=1, resolution=32, dtype="bfloat16", warmup=0, iters=1)
    result = run_benchmark(config)
    assert result.to_dict()["dtype"] == "bfloat16" and result.to_dict()["cast"] is False
    assert "bfloat16 (autocast)" in format_result(result)
    assert seen and all(weight == torch.float32 and autocast for _, weight, autocast in seen), seen


def test_cast_runs_the_model_and_images_in_the_dtype_without_autocast(monkeypatch, capsys):
    seen = _record_heads(monkeypatch)
    argv = ["bench", "vmamba_mini", "--backend", "numba" if "numba" in available() else "ref",
            "--batch-size", "2", "--resolution", "32", "--dtype", "bfloat16", "--cast",
            "--warmup", "0", "--iters", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "bfloat16 (model cast)" in capsys.readouterr().out
    assert seen == [(torch.bfloat16, torch.bfloat16, False)], seen


def test_an_unavailable_backend_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(contract, "_LOADED", {})  # a process that has loaded no backend yet
    monkeypatch.setattr(contract, "INSTALLED", dict.fromkeys(contract.INSTALLED, False))  # nothing installed
    with pytest.raises(BackendUnavailableError, match="numba"):
        run_benchmark(BenchConfig(model="vmamba_mini", backend="numba", resolution=16, iters=1))
    assert main(["bench", "vmamba_mini", "--backend", "triton", "--resolution", "16", "--iters", "1"]) == 2
    captured = capsys.readouterr()
    assert "backend 'triton'" in captured.err and "pip install" in captured.err
    assert captured.out == ""  # nothing was measured with another backend


def test_a_backend_on_the_wrong_device_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(bench, "get_ops", lambda name: None)  # installed, whatever this machine has
    with pytest.raises(BackendUnavailableError, match="runs on CPU tensors"):
        check_backend_runs("numba", "cuda")
    with pytest.raises(BackendUnavailableError, match="runs on CUDA tensors"):
        check_backend_runs("triton", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="cuda.is_available"):
            check_backend_runs("ref", "cuda")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "vmamba_huge"),
        ("backend", "cuda"),
        ("batch_size", 0),
        ("resolution", -32),
        ("dtype", "float64"),
        ("device", "tpu"),
        ("warmup", -1),
        ("iters", 0),
        ("iters", 2.5),
        ("cast", "yes"),
    ],
)
def test_bad_config_fields_are_named(field, value):
    fields = {"model": "vmamba_mini", field: value}
    with pytest.raises(ValueError, match=field if field != "backend" else "backend must be one of"):
        BenchConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "why"),
    [({"cast": True}, "pass dtype 'bfloat16' or 'float16'"), ({"cast": True, "dtype": "bfloat16", "train": True}, "for inference")],
)
def test_cast_needs_low_precision_inference(fields, why):
    with pytest.raises(ValueError, match=f"BenchConfig.cast .*{why}"):
        BenchConfig(model="vmamba_mini", **fields)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--iters", "many"], "--iters"),
        (["--dtype", "float64"], "--dtype"),
        (["--backend", "cuda"], "--backend"),
    ],
)
def test_cli_names_a_bad_argument(argv, named, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "vmamba_mini", *argv])
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "why"),
    [(["--cast"], "pass --dtype bfloat16 or float16"), (["--cast", "--dtype", "bfloat16", "--train"], "drop --train")],
)
def test_cli_refuses_cast_outside_low_precision_inference(argv, why, capsys):
    assert main(["bench", "vmamba_mini", "--resolution", "16", "--iters", "1", *argv]) == 2
    captured = capsys.readouterr()
    assert "--cast" in captured.err and why in captured.err
    assert captured.out == ""  # nothing measured


def test_cli_names_a_bad_device(capsys):
    assert main(["bench", "vmamba_mini", "--device", "tpu"]) == 2
    assert "device" in capsys.readouterr().err
