"""Claims of `vmamba train --resume` (vmamba_ref/tools/train_cli.py): a resume with settings that
would change the run is refused, listing the differing fields, unless --allow-config-change lets
it through (then the new values take effect and the checkpoint records the change); Ctrl-C saves
a resumable checkpoint and exits with 130, and the resumed run ends bit-identical to an
uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from vmamba_ref.checkpoint import load_model, read_saved
from vmamba_ref.tools.cli import main

pytest.importorskip("sklearn", reason="the digits data need scikit-learn (vmamba[demo])")

TRAIN = ["train", "--model", "vmamba_mini", "--backend", "torch", "--epochs", "1", "--batch-size", "8",
         "--image-size", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture()
def stopped_run(tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--max-steps", "2"]) == 0
    return out


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        (["--batch-size", "16"], ["batch_size 8 -> 16"]),
        (["--seed", "1"], ["seed 0 -> 1"]),
        (["--lr", "0.01"], ["lr 0.003 -> 0.01"]),
        (["--batch-size", "4", "--seed", "2"], ["batch_size 8 -> 4", "seed 0 -> 2"]),
        (["--image-size", "32"], ["image_size 16 -> 32"]),
    ],
)
def test_resume_with_changed_settings_is_refused_listing_them(stopped_run, capsys, change, fields):
    before = (stopped_run / "last.pt").read_bytes()
    args = [*TRAIN, "--out", str(stopped_run), "--max-steps", "3", "--resume"]
    assert main([*args, *change]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--allow-config-change" in err
    assert all(field in err for field in fields), err
    assert (stopped_run / "last.pt").read_bytes() == before, "a refused resume touched the checkpoint"


def test_an_allowed_change_takes_effect_and_is_recorded(stopped_run):
    args = [*TRAIN, "--out", str(stopped_run), "--max-steps", "3", "--resume", "--allow-config-change"]
    assert main([*args, "--lr", "0.01", "--weight-decay", "0.1"]) == 0
    checkpoint = read_saved(stopped_run / "last.pt")
    assert checkpoint["train_config"]["lr"] == 0.01 and checkpoint["step"] == 3
    assert checkpoint["config_changes"] == [
        {"step": 2, "field": "lr", "old": 0.003, "new": 0.01},
        {"step": 2, "field": "weight_decay", "old": 0.05, "new": 0.1},
    ]
    for group in checkpoint["optimizer"]["param_groups"]:
        assert group["initial_lr"] == 0.01 and group["weight_decay"] == 0.1
    assert checkpoint["scheduler"]["base_lrs"] == [0.01] * len(checkpoint["optimizer"]["param_groups"])


def test_an_unchanged_resume_needs_no_flag_and_max_steps_may_differ(stopped_run):
    assert main([*TRAIN, "--out", str(stopped_run), "--max-steps", "3", "--resume"]) == 0
    checkpoint = read_saved(stopped_run / "last.pt")
    assert checkpoint["step"] == 3 and checkpoint["config_changes"] == []


STEPS = 40


def _cli(out, *extra) -> list[str]:
    return [sys.executable, "-m", "vmamba_ref.tools.cli", "-v", *TRAIN, "--out", str(out), "--max-steps", str(STEPS), *extra]


def test_sigint_saves_a_checkpoint_and_the_resumed_run_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.Popen(_cli(tmp_path / "cut"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in run.stderr:
        seen.append(line)
        if "step 1/" in line:
            run.send_signal(signal.SIGINT)
            break
    rest_out, rest_err = run.communicate(timeout=300)
    err = "".join(seen) + rest_err
    assert run.returncode == 130, f"exit {run.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vmamba train: interrupted after step") and "--resume" in last, last
    stopped_at = read_saved(tmp_path / "cut" / "last.pt")["step"]
    assert 1 <= stopped_at < STEPS, f"the interrupt came too late to test anything (step {stopped_at})"

    resumed = subprocess.run(_cli(tmp_path / "cut", "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = subprocess.run(_cli(tmp_path / "straight"), env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    a, b = read_saved(tmp_path / "cut" / "last.pt"), read_saved(tmp_path / "straight" / "last.pt")
    assert a["step"] == b["step"] == STEPS
    assert a["history"]["step_loss"] == b["history"]["step_loss"]
    one, two = load_model(tmp_path / "cut" / "last.pt", backend="torch"), load_model(tmp_path / "straight" / "last.pt", backend="torch")
    unequal = [name for (name, p), q in zip(one.named_parameters(), two.parameters(), strict=True) if not torch.equal(p, q)]
    assert not unequal, f"resumed run differs from the uninterrupted one in {unequal[:5]}"
    for key in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(a["optimizer"]["state"][i][key], b["optimizer"]["state"][i][key]) for i in a["optimizer"]["state"])
