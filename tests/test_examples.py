"""The CPU examples run end to end in their quick mode, in a subprocess as a user runs them, and
write their figure. (Full runs are timed by hand; their times are in docs/examples.md.)

The quick runs pass `--backend ref`, the backend that needs no compilation, so that CI time does
not depend on a JIT cache; the default backend is checked to be the fastest installed one.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmamba_ref import fastest_backend

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MINE = ("train_digits", "effective_receptive_field", "initialization_robustness")


def run_quick(name: str, out: Path) -> str:
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--backend", "ref", "--out", str(out)],
        cwd=out, capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", MINE)
def test_default_backend_is_the_fastest_installed(name):
    args = load(name).parse_args([])
    assert args.backend == fastest_backend("cpu")
    assert not args.quick


def test_train_digits_quick(tmp_path):
    out = run_quick("train_digits", tmp_path)
    assert "backend 'ref'" in out
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert 0.0 <= accuracy <= 100.0
    assert (tmp_path / "train_digits.png").read_bytes()[:8] == PNG_MAGIC


def test_effective_receptive_field_quick(tmp_path):
    out = run_quick("effective_receptive_field", tmp_path)
    rows = re.findall(r"^\| (CNN|VMamba) +\| +([\d.]+)% \| +([\d.]+)% \| +([\d.]+)% \|$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["CNN", "VMamba"]
    for _, accuracy, before, after in rows:
        assert 0 <= float(accuracy) <= 100 and 0 < float(before) <= 100 and 0 < float(after) <= 100
    assert (tmp_path / "effective_receptive_field.png").read_bytes()[:8] == PNG_MAGIC


def test_initialization_robustness_quick(tmp_path):
    out = run_quick("initialization_robustness", tmp_path)
    rows = re.findall(r"^\| (mamba|random|zero) +\| (\w+) +\| +([\d.]+)% \|", out, re.MULTILINE)
    assert sorted(r[0] for r in rows) == ["mamba", "random", "zero"]
    assert "range of the mean accuracies" in out
    assert (tmp_path / "initialization_robustness.png").read_bytes()[:8] == PNG_MAGIC


def test_each_example_has_a_quick_flag_and_a_docstring_with_its_command():
    for name in MINE:
        text = (EXAMPLES / f"{name}.py").read_text()
        assert f"python examples/{name}.py --quick" in text
        assert load(name).__doc__


def test_check_my_kernel_quick(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "check_my_kernel.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "caught after" in out and "-> passed" in out
    assert "not tested: gradients through output[1]" in out  # the third-party kernel, as it is
    assert "note: output" in out  # its float16 outputs
    rows = re.findall(r"^   (\w+) +\w+ +(\d+) +[\d.]+  (yes|NO):", out, re.MULTILINE)
    assert len(rows) >= 12 and all(named == "yes" for _, _, named in rows)
    assert "python examples/check_my_kernel.py [--quick]" in (EXAMPLES / "check_my_kernel.py").read_text()


def test_long_range_pathfinder_quick(tmp_path):
    out = run_quick("long_range_pathfinder", tmp_path)
    assert "backend 'ref'" in out
    counts = dict(re.findall(r"^  (.+?) +([\d,]+) parameters", out, re.MULTILINE))
    assert list(counts) == ["VMamba-mini", "VMamba-mini, no scan", "CNN", "ViT"]
    sizes = [int(c.replace(",", "")) for c in counts.values()]
    assert all(0.8 <= size / sizes[0] <= 1.2 for size in sizes)  # the baselines match VMamba-mini's size
    rows = re.findall(r"^\| (VMamba-mini|VMamba-mini, no scan|CNN|ViT) +\| +[\d,]+ \| +([\d.]+)% \|", out, re.MULTILINE)
    assert [r[0] for r in rows] == list(counts)
    assert all(0 <= float(accuracy) <= 100 for _, accuracy in rows)
    assert (tmp_path / "long_range_pathfinder.png").read_bytes()[:8] == PNG_MAGIC
    assert "python examples/long_range_pathfinder.py --quick" in (EXAMPLES / "long_range_pathfinder.py").read_text()
    assert load("long_range_pathfinder").parse_args([]).backend == fastest_backend("cpu")


@pytest.mark.parametrize("name", ["initialization_robustness", "effective_receptive_field"])
def test_studies_run_on_pathfinder_quick(tmp_path, name):
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--backend", "ref", "--out", str(tmp_path),
         "--task", "pathfinder", "--d-state", "2"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pathfinder" in result.stdout and "d_state 2" in result.stdout
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert load(name).parse_args([]).task == "digits"  # the default keeps the digits
