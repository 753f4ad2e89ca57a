"""The README's first command: `vmamba demo` trains the mini model on digits to >= 90% accuracy.
(Its time, about half a minute on 2 idle cores, is measured by hand, never asserted by a test.)"""

import re

import pytest

from vmamba_ref import load_checkpoint, vmamba_mini
from vmamba_ref.tools.cli import main
from vmamba_ref.tools.demo import WEIGHTS


def test_demo_quick_mode_runs_and_saves_the_plot(tmp_path, capsys):
    assert main(["demo", "--quick", "--backend", "ref", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out
    assert "compiling" not in out  # the reference backend has nothing to compile
    assert (tmp_path / "loss_curve.png").stat().st_size > 10_000
    model = vmamba_mini(in_chans=1)
    assert load_checkpoint(model, tmp_path / WEIGHTS).ok  # the saved weights fit the mini model
    assert str(tmp_path / WEIGHTS) in out


def test_demo_says_when_it_compiles_the_numba_kernels(tmp_path, capsys):
    pytest.importorskip("numba")
    assert main(["demo", "--quick", "--backend", "numba", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # The compile is announced and timed before training, so it never counts as a step.
    assert re.search(r"compiling the numba kernels.*\ncompiled in [\d.]+ s\n", out)
    assert out.index("compiled in") < out.index("test accuracy:")
    assert load_checkpoint(vmamba_mini(in_chans=1), tmp_path / WEIGHTS).ok


@pytest.mark.slow
def test_demo_reaches_90_percent_as_users_run_it(tmp_path, capsys):
    """The README's demo on its default backend, numba (ref and torch train the same model:
    the backends' equality is tested elsewhere; ref takes half again as long)."""
    assert main(["demo", "--backend", "numba", "--out", str(tmp_path)]) == 0
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", capsys.readouterr().out).group(1))
    assert accuracy >= 90.0


def test_unknown_backend_is_refused(tmp_path, capsys):
    assert main(["demo", "--quick", "--backend", "fast", "--out", str(tmp_path)]) == 2
    assert "backend must be one of" in capsys.readouterr().err
