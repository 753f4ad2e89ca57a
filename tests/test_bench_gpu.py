"""Claims of the GPU table's scripts (benchmarks/bench_gpu.py, gpu_model_rows.py,
build_official_kernels.py, gpu_table.sh) that a CPU can check; the timing itself needs the GPU.

The official VMamba checkout and the stand-ins its model file needs here come from the
fixtures `official_checkout` and `official_stand_ins` (tests/conftest.py); the tests that need
a checkout skip without one.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmark scripts as modules: (bench_gpu, gpu_model_rows, build_official_kernels)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    names = ("bench_gpu", "gpu_model_rows", "build_official_kernels")
    return tuple(importlib.import_module(name) for name in names)


def fake_checkout(root: Path, modes: str = '["oflex"]') -> Path:
    """A folder laid out as the official checkout's kernels/, with a setup.py listing `modes`."""
    setup = root / "kernels" / "selective_scan" / "setup.py"
    setup.parent.mkdir(parents=True)
    setup.write_text(f"MODES = {modes}\n")
    return root


# ------------------------------------------------------------------------------------------------
# build_official_kernels.py
# ------------------------------------------------------------------------------------------------


def test_builder_dry_run_prints_the_command_for_the_detected_arch_and_builds_nothing(tmp_path):
    official = fake_checkout(tmp_path / "official")
    build = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "build_official_kernels.py"), "--official", str(official),
         "--build-dir", str(build), "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"setup.py: {official.resolve() / 'kernels' / 'selective_scan' / 'setup.py'}" in out
    assert "MODES = ['oflex']" in out
    assert "torch.cuda.get_device_capability()" in out
    command = out.split("command, in ")[1]
    assert "TORCH_CUDA_ARCH_LIST=" in command and "MAX_JOBS=" in command
    assert f"setup.py build_ext --build-lib {build.resolve() / 'lib'}" in command
    assert not build.exists(), "a dry run must not create the build folder"


def test_builder_sets_the_arch_list_to_the_gpus_capability_only(bench, tmp_path, monkeypatch):
    _, _, builder = bench
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (9, 0))
    arch = builder.detected_arch()
    assert arch == "9.0"
    plan = builder.make_plan(fake_checkout(tmp_path / "official"), tmp_path / "build", arch)
    assert plan.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert plan.command[1:3] == ("setup.py", "build_ext") and plan.src == (tmp_path / "build" / "src")
    assert plan.source == (tmp_path / "official" / "kernels" / "selective_scan").resolve()


def test_builder_refuses_a_missing_checkout_naming_the_argument(bench, tmp_path, capsys):
    _, _, builder = bench
    with pytest.raises(SystemExit) as exit_:
        builder.main(["--official", str(tmp_path / "nowhere"), "--build-dir", str(tmp_path / "b")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--official" in err and "kernels/selective_scan/setup.py" in err


def test_builder_refuses_a_setup_py_that_does_not_build_oflex(bench, tmp_path):
    _, _, builder = bench
    official = fake_checkout(tmp_path / "official", modes='["core"]')
    with pytest.raises(SystemExit, match=r"MODES = \['core'\] lacks 'oflex'"):
        builder.main(["--official", str(official), "--build-dir", str(tmp_path / "b"), "--dry-run"])


def test_builder_force_includes_the_cub3_header_keeping_the_users_nvcc_flags(
    bench, tmp_path, monkeypatch
):
    # nvcc 13 (CUB 3.0) stops on the official reverse_scan.cuh's cub::CTA_SYNC and cub::LaneId;
    # the header of ours that defines them goes to nvcc through NVCC_APPEND_FLAGS.
    _, _, builder = bench
    header = builder.CUB3_COMPAT
    text = header.read_text()
    assert header.parent == BENCHMARKS and "#if CUB_VERSION >= 300000" in text
    assert "void CTA_SYNC()" in text and "unsigned int LaneId()" in text
    official = fake_checkout(tmp_path / "official")
    monkeypatch.delenv("NVCC_APPEND_FLAGS", raising=False)
    plan = builder.make_plan(official, tmp_path / "build", "9.0")
    assert plan.env["NVCC_APPEND_FLAGS"] == f"-include {header}"
    monkeypatch.setenv("NVCC_APPEND_FLAGS", "-lineinfo")
    plan = builder.make_plan(official, tmp_path / "build", "9.0")
    assert plan.env["NVCC_APPEND_FLAGS"] == f"-lineinfo -include {header}"


def run_builder(builder, tmp_path, monkeypatch, setup_body: str) -> tuple[int, dict]:
    """Run build_official_kernels.main() as if on a GPU, on a checkout whose setup.py runs
    `setup_body`; (exit code, the status file's contents)."""
    official = fake_checkout(tmp_path / "official")
    setup = official / "kernels" / "selective_scan" / "setup.py"
    setup.write_text(setup.read_text() + setup_body)
    monkeypatch.setattr(builder, "detected_arch", lambda: "9.0")
    build = tmp_path / "build"
    build.mkdir()
    (build / builder.STATUS_FILE).write_text('{"ok": true}')  # a stale one, from an earlier build
    code = builder.main(["--official", str(official), "--build-dir", str(build)])
    return code, json.loads((build / builder.STATUS_FILE).read_text())


def test_a_failing_build_writes_a_status_that_says_why(bench, tmp_path, monkeypatch):
    _, _, builder = bench
    code, status = run_builder(builder, tmp_path, monkeypatch, "raise SystemExit(3)\n")
    assert code == 1 and status["ok"] is False and status["module"] is None
    assert status["reason"].startswith("build FAILED after") and "(exit 3)" in status["reason"]


def test_a_build_without_a_module_writes_a_failed_status(bench, tmp_path, monkeypatch):
    _, _, builder = bench
    code, status = run_builder(builder, tmp_path, monkeypatch, "")
    assert code == 1 and status["ok"] is False
    assert status["reason"].startswith("expected one selective_scan_cuda_oflex module")


def test_a_successful_build_writes_its_module_and_time(bench, tmp_path, monkeypatch):
    _, _, builder = bench
    monkeypatch.setattr(builder, "check_import", lambda lib: None)  # the file below is no module
    body = (
        "import sys, pathlib\n"
        "lib = pathlib.Path(sys.argv[sys.argv.index('--build-lib') + 1])\n"
        "lib.mkdir(parents=True)\n"
        "(lib / 'selective_scan_cuda_oflex.cpython-311-x86_64-linux-gnu.so').write_text('')\n"
    )
    code, status = run_builder(builder, tmp_path, monkeypatch, body)
    assert code == 0 and status["ok"] is True and status["seconds"] > 0
    assert status["module"].startswith(str((tmp_path / "build" / "lib").resolve()))


def test_the_built_module_is_imported_after_torch(tmp_path):
    # The compiled module links against torch's libc10.so, which the dynamic loader finds only
    # once torch is loaded: imported first, it failed on the H200 with "libc10.so: cannot open
    # shared object file". A fresh process (this one has torch loaded) records what was loaded
    # when the module's import began; a finder stands in for the compiled file.
    (tmp_path / "selective_scan_cuda_oflex.cpython-312-x86_64-linux-gnu.so").write_text("")
    code = f"""
import importlib.abc, importlib.machinery, sys, types
from pathlib import Path
sys.path.insert(0, {str(BENCHMARKS)!r})
import gpu_model_rows

class StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "selective_scan_cuda_oflex":
            print("torch loaded before the module:", "torch" in sys.modules)
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        return types.ModuleType(spec.name)
    def exec_module(self, module):
        pass

assert "torch" not in sys.modules
sys.meta_path.insert(0, StandIn())
gpu_model_rows.import_built_oflex(Path({str(tmp_path)!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "torch loaded before the module: True"


# ------------------------------------------------------------------------------------------------
# gpu_model_rows.py: one row's timing, on the CPU
# ------------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """A classifier with the `num_classes` attribute the rows read for their labels."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        )

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_row_steps_the_optimizer_and_leaves_no_gradients(bench, precision):
    _, rows, _ = bench
    torch.manual_seed(0)
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    timing = rows.Timing(batch=2, image=8, warmup=1, iters=2)
    fields = rows.measure(model, rows.PRECISIONS[precision], "training", timing, "cpu", None)
    assert fields["status"] == "ok" and fields["images_per_s"] > 0
    assert fields["images_per_s"] == pytest.approx(2 / (fields["ms_per_iter"] / 1e3))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_an_inference_row_leaves_the_weights_alone(bench):
    _, rows, _ = bench
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    timing = rows.Timing(batch=2, image=8, warmup=0, iters=1)
    fields = rows.measure(model, rows.PRECISIONS["tf32"], "inference", timing, "cpu", None)
    assert fields["status"] == "ok" and not model.training
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_a_row_that_would_end_after_the_deadline_stops_at_its_third_iteration(bench):
    _, rows, _ = bench
    calls = []
    timing = rows.Timing(batch=1, image=8, warmup=5, iters=5)
    step = lambda: (calls.append(1), time.sleep(0.02))  # noqa: E731
    result = rows.time_iterations(step, timing.warmup, timing.iters, "cpu", deadline=time.time() + 0.1)
    assert isinstance(result, str) and result.startswith("skipped: would end after the time budget")
    assert len(calls) == 3
    calls.clear()
    times = rows.time_iterations(step, timing.warmup, timing.iters, "cpu", deadline=time.time() + 60)
    assert len(times) == 5 and len(calls) == 10 and min(times) >= 0.02


def test_rows_round_trip_through_the_worker_protocol(bench):
    _, rows, _ = bench
    row = rows.Row("ours", "tiny", "VMamba-T", "bf16", "training", "ok", 2000.5, 64.0, 9000.0, 1, False)
    assert rows.parse_row(rows.ROW_PREFIX + json.dumps(row.__dict__)) == row
    assert rows.parse_row("some other output") is None


# ------------------------------------------------------------------------------------------------
# bench_gpu.py: the plan and the table
# ------------------------------------------------------------------------------------------------


def test_plan_runs_vmamba_t_first_and_the_official_code_first_within_each_stage(bench):
    bench_gpu, _, _ = bench
    jobs = [(j.impl, j.size, j.modes) for j in bench_gpu.plan(bench_gpu.FULL)]
    both = ("inference", "training")
    tiny = [(impl, "tiny", both) for impl in ("official", "official+ours", "ours", "timm")]
    assert jobs[:4] == tiny
    later = [(size, mode) for mode in both for size in ("small", "base")]
    assert jobs[4:] == [
        (impl, size, (mode,)) for size, mode in later for impl in ("official", "official+ours", "ours")
    ]
    rows = sum(len(bench_gpu.expected_rows(j, bench_gpu.FULL, "")) for j in bench_gpu.plan(bench_gpu.FULL))
    # tiny: 3 VMamba variants + 2 timm peers, 2 modes, 3 precisions; small and base: 3 variants
    assert rows == (3 + 2) * 2 * 3 + 2 * 3 * 2 * 3


def test_while_the_official_build_runs_its_rows_come_last_in_each_stage(bench):
    bench_gpu, _, _ = bench
    jobs = [(j.impl, j.size) for j in bench_gpu.plan(bench_gpu.FULL, build_pending=True)]
    assert jobs[:4] == [(impl, "tiny") for impl in ("official+ours", "ours", "timm", "official")]
    assert jobs[4:7] == [("official+ours", "small"), ("ours", "small"), ("official", "small")]
    assert sorted(jobs) == sorted((j.impl, j.size) for j in bench_gpu.plan(bench_gpu.FULL))


def test_waiting_for_the_build_reads_its_status_or_gives_up_at_the_deadline(bench, tmp_path):
    bench_gpu, _, builder = bench
    status = tmp_path / builder.STATUS_FILE
    said = []

    def finish(ok: bool, reason: str) -> None:
        time.sleep(0.3)
        builder.write_status(tmp_path, ok, reason, 61.5 if ok else None)

    writer = threading.Thread(target=finish, args=(True, "built"))
    writer.start()
    assert bench_gpu.wait_for_build(tmp_path, time.time() + 60, said.append) == ""
    writer.join()
    assert said[0].strip().startswith("waiting for the official build")
    assert said[1].startswith("official build: done in 62 s")
    status.unlink()
    builder.write_status(tmp_path, False, "build FAILED after 9 s (exit 1)")
    why = bench_gpu.wait_for_build(tmp_path, None, said.append)
    assert why == "skipped: the official build failed (build FAILED after 9 s (exit 1))"
    status.unlink()
    start = time.time()
    why = bench_gpu.wait_for_build(tmp_path, start + 0.5, said.append)
    assert why == "skipped: the official build had not ended within the time budget"
    assert 0.5 <= time.time() - start < 5


def test_the_kernel_comparison_runs_once_before_the_first_official_job(bench, tmp_path, monkeypatch):
    bench_gpu, _, builder = bench
    calls = []
    monkeypatch.setattr(bench_gpu, "run_job", lambda job, *_: calls.append((job.impl, job.size)) or [])
    args = argparse.Namespace(dry_run=False, wait_for_build=True, official_build=tmp_path, official=None)
    builder.write_status(tmp_path, True, "built", 55.0)
    jobs = bench_gpu.plan(bench_gpu.FULL, build_pending=True)
    bench_gpu.run_jobs(jobs, args, bench_gpu.FULL, "cuda", None, lambda: calls.append("kernels"))
    first = calls.index(("official", "tiny"))
    assert calls.count("kernels") == 1 and calls[first - 1] == "kernels"
    calls.clear()  # a failed build: no comparison, and no official job starts
    builder.write_status(tmp_path, False, "build FAILED after 9 s (exit 1)")
    rows = bench_gpu.run_jobs(jobs, args, bench_gpu.FULL, "cuda", None, lambda: calls.append("kernels"))
    assert "kernels" not in calls and all(impl != "official" for impl, _ in calls)
    assert {r.status for r in rows if r.impl == "official"} == {
        "skipped: the official build failed (build FAILED after 9 s (exit 1))"
    }


def test_the_scan_kernels_against_a_stand_in_for_the_official_module(bench, capsys):
    # On the GPU the official module is the compiled oflex; here the reference loop stands in
    # for it behind the same binding, and ours runs the CPU kernels.
    bench_gpu, _, _ = bench
    from vmamba_fast.compat import OflexModule

    stand_in = OflexModule("selective_scan_cuda_oflex", backend="ref")
    shapes = bench_gpu.INTERPRET
    lines = bench_gpu.bench_scan_against_official(shapes, "cpu", bench_gpu.timer("cpu"), stand_in)
    assert [line.split(",")[1] for line in lines] == [" float32", " bfloat16"]
    assert all("x the official compiled kernel's speed forward" in line for line in lines)
    out = capsys.readouterr().out
    apart = [line.split(": ", 1)[1] for line in out.splitlines() if "max |ours - official|" in line]
    assert len(apart) == 2
    for part in apart:
        values = dict(item.split() for item in part.split(", "))
        assert list(values) == ["out", "du", "ddelta", "dA", "dB", "dC"]
        assert all(float(v) < 2e-2 for v in values.values()), part  # bfloat16 gradients round


def test_the_table_gives_ratios_to_the_official_row_of_the_same_setting(bench):
    bench_gpu, rows, _ = bench
    Row = rows.Row
    measured = [
        Row("official", "tiny", "VMamba-T", "fp32", "inference", "ok", 1000.0, 128.0, 5000.0),
        Row("ours", "tiny", "VMamba-T", "fp32", "inference", "ok", 1500.0, 85.3, 4000.0),
        Row("ours", "tiny", "VMamba-T", "bf16", "inference", "ok", 1800.0, 71.1, 3000.0),
        Row("timm", "tiny", "Swin-T", "fp32", "inference", "ok", 2500.0, 51.2, 2000.0),
        Row("official", "small", "VMamba-S", "fp32", "inference", "skipped: the time budget is spent"),
    ]
    lines = bench_gpu.table(measured)
    assert lines[2].startswith("| VMamba-T | official, compiled oflex scan | fp32 | inference | 1,000 | 1.00x |")
    assert "| 1,500 | 1.50x | 4,000 | ok |" in lines[3]
    assert "| 1,800 | n/a |" in lines[4], "no official bf16 row: no ratio"
    assert "| Swin-T | timm | fp32 | inference | 2,500 | 2.50x |" in lines[5]
    assert lines[6].endswith("| n/a |  | skipped: the time budget is spent |")
    notes = bench_gpu.notes(measured, {"float32": 0.61})
    assert any("0.60x the H100/H200 target (2,500)" in n for n in notes)
    assert any("61% of the measured bandwidth roofline" in n for n in notes)


def test_a_dry_run_fails_when_the_official_model_has_other_parameters(bench, capsys):
    bench_gpu, rows, _ = bench
    built = "dry run: built, not timed"
    same = [
        rows.Row("ours", "tiny", "VMamba-T", "fp32", "inference", built, params=30),
        rows.Row("official+ours", "tiny", "VMamba-T", "fp32", "inference", built, params=30),
    ]
    assert bench_gpu.compare_parameters(same) == []
    other = same + [rows.Row("official", "tiny", "VMamba-T", "fp32", "inference", built, params=31)]
    assert len(bench_gpu.compare_parameters(other)) == 1
    assert ": DIFFER" in capsys.readouterr().out


def test_timm_peers_are_skipped_with_a_reason_when_timm_does_not_import(bench, monkeypatch):
    _, rows, _ = bench
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(rows.Skip, match=r"^skipped: timm not importable"):
        rows.build_timm("convnext_tiny")
    assert rows.planned_models("timm", "tiny") == ["ConvNeXt-T", "Swin-T"]
    assert rows.planned_models("timm", "small") == []


# ------------------------------------------------------------------------------------------------
# The official model, built on the CPU through our drop-in modules
# ------------------------------------------------------------------------------------------------

def test_the_official_vmamba_t_builds_on_our_kernels_with_our_parameter_count(
    bench, official_checkout, official_stand_ins
):
    _, rows, _ = bench
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_model_rows.py"), "--impl", "official+ours",
         "--size", "tiny", "--modes", "inference", "--precisions", "fp32", "--device", "cpu",
         "--official", str(official_checkout), "--dry-run"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(official_stand_ins)}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    [row] = [r for r in map(rows.parse_row, result.stdout.splitlines()) if r is not None]
    assert row.status == "dry run: built, not timed", result.stdout[-3000:] + result.stderr[-3000:]
    from vmamba_ref.model import vmamba_tiny

    assert row.params == sum(p.numel() for p in vmamba_tiny().parameters())


# ------------------------------------------------------------------------------------------------
# gpu_table.sh --dry-run: the one-call script, end to end on the CPU
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_one_call_script_dry_run_writes_its_outputs(tmp_path):
    official = fake_checkout(tmp_path / "official")
    (official / "classification" / "models").mkdir(parents=True)
    (official / "classification" / "models" / "vmamba.py").write_text("")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "BUILD_DIR": str(tmp_path / "b")}
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_table.sh"), "--dry-run", str(official), "--sizes", "mini",
         "--impls", "ours"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "bench.log", "build.log", "gpu_rows.json", "gpu_table.md"
    ]
    build_log = (out / "build.log").read_text()
    assert "TORCH_CUDA_ARCH_LIST" in build_log and f"--build-lib {tmp_path / 'b' / 'lib'}" in build_log
    rows = json.loads((out / "gpu_rows.json").read_text())["rows"]
    assert len(rows) == 2 * 3 and {r["status"] for r in rows} == {"dry run: built, not timed"}
    assert "TF32 off" in (out / "gpu_table.md").read_text()
    missing = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_table.sh"), str(tmp_path / "nowhere")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "OFFICIAL" in missing.stderr


@pytest.mark.slow
def test_the_one_call_script_measures_beside_a_build_that_fails_and_says_why(tmp_path):
    # Not a dry run: the build starts in the background and the table goes on without waiting.
    # This checkout's setup.py builds no "oflex", so the builder exits before writing its status;
    # gpu_table.sh writes one for it, and the official rows say why they were skipped.
    official = fake_checkout(tmp_path / "official", modes='["core"]')
    (official / "classification" / "models").mkdir(parents=True)
    (official / "classification" / "models" / "vmamba.py").write_text("")
    out, build = tmp_path / "out", tmp_path / "b"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "BUILD_DIR": str(build)}
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_table.sh"), str(official), "--interpret", "--sizes", "mini",
         "--impls", "official,ours"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert "lacks 'oflex'" in (out / "build.log").read_text()
    rows = json.loads((out / "gpu_rows.json").read_text())["rows"]
    assert [(r["impl"], r["status"]) for r in rows] == [
        ("ours", "ok"),
        ("official", "skipped: the official build failed (build_official_kernels.py exited with 1 "
         "before its status (see build.log))"),
    ]  # fmt: skip
    assert "built on the host's CPU while the rows before the official ones ran" in (
        out / "gpu_table.md"
    ).read_text()


@pytest.mark.slow
def test_a_built_module_that_does_not_load_is_a_note_and_the_rows_go_on(tmp_path):
    # bench_gpu.py end to end in the interpreter: the build says it succeeded, but its module
    # is no module; the kernel comparison's failure lands in the notes, and the run goes on.
    build = tmp_path / "b"
    build.mkdir()
    (build / "selective_scan_cuda_oflex.cpython-311-x86_64-linux-gnu.so").write_text("")
    (build / "status.json").write_text('{"ok": true, "reason": "built", "seconds": 1.0, "module": null}')
    table = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--interpret", "--sizes", "mini",
         "--impls", "ours,official", "--official-build", str(build), "--wait-for-build",
         "--table", str(table)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    text = table.read_text()
    assert "scan kernels against the official ones: failed (ImportError(" in text
    assert "| VMamba-mini | ours, backend=triton | fp32 | inference |" in text
