"""The kit as users meet it: the opt-in pytest plugin, the profiles, the worked example, the docs.

- the plugin works when enabled with `-p` and is not registered otherwise (no entry point);
- `dev`, `ci` and `thorough` exist with `deadline=None`, and `ci` is picked under `CI`;
- `examples/check_my_kernel.py --quick` catches its planted bug, passes the fix, and names
  every mutant's bug, well under a minute;
- every Python block of docs/testing.md runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

from vmamba_ref.testing.mutants import MUTANTS
from vmamba_ref.testing.profiles import PROFILE_NAMES, default_profile

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_USER_TESTS = """
    from vmamba_ref import cross_scan
    from vmamba_ref.testing import make_test

    calls = []


    def counting_cross_scan(x):
        calls.append(x.shape)
        return cross_scan(x)


    test_made = make_test(counting_cross_scan, op="cross_scan")


    def test_option_reached_make_test():
        assert len(calls) == 3


    def test_fixtures(check_cross_scan, vmamba_examples, nan_empty):
        import torch

        assert vmamba_examples == 3
        assert check_cross_scan(cross_scan).examples == 3
        assert torch.empty(2).isnan().all()
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_user_kernel.py").write_text(textwrap.dedent(PLUGIN_USER_TESTS))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
            "test_user_kernel.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_plugin_enabled_with_p_gives_fixtures_and_option(tmp_path):
    run = _pytest(tmp_path, "-p", "vmamba_ref.testing.pytest_plugin", "--vmamba-examples", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


def test_plugin_is_not_registered_automatically(tmp_path):
    run = _pytest(tmp_path, "--vmamba-examples", "3")
    assert run.returncode == 4  # pytest's usage error: the option does not exist
    assert "unrecognized arguments: --vmamba-examples" in run.stderr
    plugins = [ep.value for ep in importlib.metadata.entry_points(group="pytest11")]
    assert not any(value.startswith("vmamba") for value in plugins)


def test_profiles_are_registered_without_deadlines():
    for name in PROFILE_NAMES:
        assert settings.get_profile(name).deadline is None
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.database is None
    assert settings.get_profile("thorough").max_examples > settings.get_profile("dev").max_examples


def test_ci_profile_is_picked_under_ci(monkeypatch):
    monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert default_profile() == "ci"
    monkeypatch.delenv("CI")
    assert default_profile() == "dev"
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "thorough")
    assert default_profile() == "thorough"


def test_worked_example_runs_quickly():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "check_my_kernel.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "x=float32[1, 1, 1, 2]" in out  # shrunk to two pixels
    assert "check the reversed index" in out
    assert "-> passed: 25 examples" in out
    for mutant in MUTANTS:
        assert re.search(rf"{mutant.name}\s+{mutant.op}\s+\d+\s+[\d.]+\s+yes", out), mutant.name


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(_python_blocks(ROOT / "docs" / "testing.md"))))
def test_docs_code_block_runs(index):
    block = _python_blocks(ROOT / "docs" / "testing.md")[index]
    exec(compile(block, f"docs/testing.md block {index}", "exec"), {"__name__": "docs_block"})
