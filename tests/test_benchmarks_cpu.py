"""benchmarks/bench_cpu.py and bench_models_cpu.py run: their --quick modes, seconds of tiny
shapes and models, in a subprocess; bench_models_cpu's bounds skip what they say and no more.
bench_official_cpu.py refuses a folder that is not the official checkout, and with one
(VMAMBA_OFFICIAL) times both models on the same weights. Where torchvision is installed, the
benchmarks' way of importing it beside the CPU torch build works.

One thread: this checks that the script works, not timings, and a two-thread run on a busy
machine can stall in every parallel region of torch and Numba alike."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_cpu_quick_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cpu.py"), "--quick", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for section in (
        "stream triad",
        "vectorized exp",
        "Selective scan",
        "Roofline",
        "Fused SS2D core",
    ):
        assert section in result.stdout, result.stdout
    # The kernel figures come twice, each labelled with the allocator it was measured under.
    assert "(numba, ms; plain process)" in result.stdout, result.stdout
    assert "(numba, ms; allocator tuned: freed memory kept)" in result.stdout, result.stdout


def test_bench_models_cpu_quick_runs_every_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_models_cpu.py"), "--quick", "--no-compile", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for kind in ("inference", "training step"):
        for dtype in ("float32", "bfloat16"):
            assert f"## {kind}, {dtype}, batch 2 at 64x64" in result.stdout, result.stdout
    # Each bfloat16 table gives the gain over float32 from calls interleaved in its own rounds.
    gains = [line for line in result.stdout.splitlines() if "over float32, the two interleaved" in line]
    assert len(gains) == 2 and all(line.startswith("VMamba-mini (numba) in bfloat16") for line in gains), gains
    # The last table runs each model in a process of its own, VMamba first, every row measured.
    isolated = result.stdout.split("## inference, float32, each model in a process of its own, at 64x64")
    assert len(isolated) == 2, result.stdout
    rows = [line for line in isolated[1].splitlines() if line.startswith("| ") and "images/s" not in line]
    assert rows and rows[0].startswith("| VMamba-mini (numba) | ") and "| 1.00x |" in rows[0], rows
    assert all(float(row.split("|")[2]) > 0 for row in rows), rows
    # In inference also the other bfloat16 path, the model cast once, in the same rounds.
    cast_once = [line for line in result.stdout.splitlines() if "as a bfloat16 model" in line]
    assert len(cast_once) == 1 and "over float32, the same rounds:" in cast_once[0], cast_once


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_torchvision_models_import_beside_the_cpu_torch_build_in_the_benchmarks():
    # What bench_models_cpu (the peers) and bench_official_cpu (timm, which imports torchvision)
    # do before they import it; a failed import raised from torchvision's own meta registrations.
    code = (
        "import sys; sys.path.insert(0, 'benchmarks')\n"
        "from cpu_torchvision import skip_torchvision_meta_registrations\n"
        "print('stand-in', skip_torchvision_meta_registrations())\n"
        "from torchvision.models import convnext_tiny\n"
        "print('built', type(convnext_tiny()).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built ConvNeXt" in result.stdout, result.stdout


def test_bench_official_cpu_refuses_a_folder_that_is_not_the_official_checkout(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_official_cpu.py"), "--official", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"--official {tmp_path}: no classification/models/vmamba.py there" in result.stderr, result.stderr[-3000:]
    assert "img/s" not in result.stdout  # nothing timed


def test_bench_official_cpu_times_both_models_on_the_same_weights(official_checkout, official_stand_ins):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_official_cpu.py"), "--official", str(official_checkout),
         "--batches", "1", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(official_stand_ins)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "torch.cuda.device(<cpu device>) is a no-op context" in result.stdout  # what it changed, said
    [row] = [line.split() for line in result.stdout.splitlines() if re.match(r"\s+1\s", line)]
    official, ours, ratio = float(row[1]), float(row[2]), float(row[3].rstrip("x"))
    assert official > 0 and ours > 0 and ratio > 0, row


def _bench_models_cpu(monkeypatch):
    """benchmarks/bench_models_cpu.py as a module, its folder on the path as when run."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_models_cpu", ROOT / "benchmarks" / "bench_models_cpu.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_models_cpu", module)  # where its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _scan_operators(model, images):
    """How many SS2D cores and batched products (the scan's projections, x_proj and dt_proj:
    the model's only `bmm`) one forward runs, by the profiler, and the logits."""
    import torch

    with torch.no_grad(), torch.profiler.profile() as profile:
        logits = model(images)  # (b, classes)
    counts = {event.key: event.count for event in profile.key_averages()}
    return {"core": counts.get("vmamba::ss2d_core_fwd", 0), "projections": counts.get("aten::bmm", 0)}, logits


@pytest.mark.parametrize("part", ["core", "scan"])
def test_the_bounds_skip_their_part_of_the_scan_in_a_copy(monkeypatch, part):
    # `without(model, part)` must skip exactly that part in every SS2D block, run every other
    # layer, and leave the model it copies as it was.
    import torch

    from vmamba_ref import vmamba_mini
    from vmamba_ref.ss2d import SS2D

    without = _bench_models_cpu(monkeypatch).without
    torch.manual_seed(0)
    model = vmamba_mini(backend="numba").eval()
    images = torch.randn(2, 3, 64, 64)
    blocks = sum(isinstance(m, SS2D) for m in model.modules())
    counted, before = _scan_operators(model, images)
    assert counted == {"core": blocks, "projections": 2 * blocks}, counted
    counted, logits = _scan_operators(without(model, part), images)
    # The core skipped is never called; with the whole scan skipped, nothing under it is either.
    assert counted == {"core": 0, "projections": 0 if part == "scan" else 2 * blocks}, counted
    assert logits.shape == before.shape and torch.isfinite(logits).all()
    assert not torch.equal(logits, before)  # the skipped part did change the numbers
    _, after = _scan_operators(model, images)
    assert torch.equal(after, before)  # the model itself is untouched
    with pytest.raises(ValueError, match=r"without: part must be one of \['core', 'scan'\], got 'mlp'"):
        without(model, "mlp")


def test_bench_models_cpu_prints_the_bounds_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_models_cpu.py"), "--quick", "--bounds"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "## What a free scan would give: inference, float32, batch 2 at 64x64" in result.stdout, result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| VMamba-mini (numba)")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| VMamba-mini (numba)",
        "| VMamba-mini (numba), SS2D core skipped (a bound)",
        "| VMamba-mini (numba), whole scan skipped (a bound)",
    ], rows
    assert all(float(row.split(" | ")[1]) > 0 for row in rows), rows
    assert "## inference, float32" not in result.stdout  # only the bounds
