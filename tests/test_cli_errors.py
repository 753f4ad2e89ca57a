"""Claims of vmamba_ref/tools/cli.py and the subcommands: every user error (a bad value, an output
path that cannot be written, a missing file, device or backend) is found before any work and
reported on one line of stderr with exit code 2, never with a traceback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from vmamba_ref.tools.cli import main as cli_main


def main(argv: list[str]) -> int:
    """The exit code of `vmamba ARGV`, whether returned or raised by argparse as SystemExit."""
    try:
        return cli_main(argv)
    except SystemExit as exit_:
        return exit_.code

pytest.importorskip("sklearn", reason="the digits data need scikit-learn (vmamba[demo])")


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


TRAIN = ["train", "--epochs", "1", "--batch-size", "8", "--image-size", "16", "--device", "cpu", "--no-progress"]
BAD = {
    "demo": [
        ["--backend", "fast"], ["--epochs", "0"], ["--epochs", "x"], ["--seed", "-1"],
        ["--out", "{file}"], ["--out", "{file}/sub"],
    ],
    "train": [
        ["--epochs", "0"], ["--epochs", "1.5"], ["--batch-size", "0"], ["--batch-size", "100000"],
        ["--lr", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--lr", "inf"], ["--weight-decay", "-0.1"],
        ["--weight-decay", "nan"], ["--seed", "-1"], ["--image-size", "4"], ["--max-steps", "0"],
        ["--device", "bogus"], ["--device", "tpu"], ["--model", "vmamba_huge"], ["--backend", "fast"],
        ["--out", "{file}"], ["--out", "{file}/sub"], ["--resume", "--out", "{tmp}/nothing"],
        ["--allow-config-change"],
    ],
    "flops": [
        ["vmamba_huge"], ["vmamba_mini", "--resolution", "0"], ["vmamba_mini", "--batch-size", "x"],
        ["vmamba_mini", "--depth", "0"], ["vmamba_mini", "--backend", "fast"], [],
    ],
    "bench": [
        ["vmamba_mini", "--iters", "0"], ["vmamba_mini", "--warmup", "-1"], ["vmamba_mini", "--dtype", "float8"],
        ["vmamba_mini", "--device", "bogus"], ["vmamba_mini", "--json", "{file}/report.json"],
        ["vmamba_mini", "--json", "{tmp}"], ["vmamba_mini", "--batch-size", "0"],
    ],
    "erf": [
        ["vmamba_mini", "--resolution", "16"], ["vmamba_mini", "--num-images", "0"],
        ["vmamba_mini", "--num-classes", "-1"], ["vmamba_mini", "--checkpoint", "{tmp}/missing.pt"],
        ["vmamba_mini", "--checkpoint", "{file}"], ["vmamba_mini", "--images", "{tmp}/missing"],
        ["vmamba_mini", "--images", "{tmp}"], ["vmamba_mini", "--out", "{file}/erf.png"],
        ["vmamba_mini", "--out", "{tmp}/erf.txt"], ["vmamba_mini", "--device", "bogus"],
        ["vmamba_mini", "--backend", "fast"], ["vmamba_mini", "--in-chans", "2"], ["vmamba_huge"],
    ],
}
CASES = [(command, args) for command, table in BAD.items() for args in table]


@pytest.mark.parametrize(("command", "args"), CASES, ids=[f"{c}:{' '.join(a)}" for c, a in CASES])
def test_bad_arguments_exit_2_with_one_line_and_no_traceback(tmp_path, a_file, capsys, command, args):
    args = [a.format(file=a_file, tmp=tmp_path) for a in args]
    base = TRAIN[1:] + ["--out", str(tmp_path / "run")] if command == "train" else []
    start = time.perf_counter()
    code = main([command, *base, *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert len(lines) == 1 and "Traceback" not in err, f"stderr is not one line:\n{err}"
    assert lines[0].startswith(f"vmamba {command}"), lines[0]
    assert time.perf_counter() - start < 30, "the error came after work had started"


def test_a_bad_out_fails_before_training(tmp_path, a_file, capsys):
    start = time.perf_counter()
    assert main([*TRAIN, "--epochs", "50", "--out", str(a_file)]) == 2
    assert "--out" in capsys.readouterr().err and time.perf_counter() - start < 10


def test_a_user_error_through_python_m_has_no_traceback(tmp_path, a_file):
    done = subprocess.run(
        [sys.executable, "-m", "vmamba_ref.tools.cli", *TRAIN, "--out", str(a_file)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"vmamba train: --out {a_file}: expected a folder, but it is a file"]
