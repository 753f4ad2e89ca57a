"""Claims of vmamba_ref/tools/train_cli.py (`vmamba train`): two processes launched by torchrun on the
loopback interface (gloo) train the mini VMamba with DistributedDataParallel and end with
identical parameters; rank 0 checkpoints; a run resumes from its checkpoint.

The two-process test runs this file as torchrun's worker script (see `worker` below), so that
each rank's final weights come back to the test for comparison.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmamba_ref.checkpoint import load_model, read_saved
from vmamba_ref.model import vmamba_mini
from vmamba_ref.testing.tolerances import RESUMED_TRAINING
from vmamba_ref.tools.cli import main as cli_main
from vmamba_ref.tools.train import TrainConfig
from vmamba_ref.tools.train_cli import RunConfig, train

pytest.importorskip("sklearn", reason="the digits data need scikit-learn (vmamba[demo])")

STEPS = 3
WORLD = 2


def run_config(out: Path, **changes) -> RunConfig:
    """A few steps of the mini model on 16x16 digits, 8 images per process and step. At 16x16
    the last two stages are 1x1 maps: every parameter must still get a gradient, or DDP stops."""
    options = dict(
        model="vmamba_mini", backend="torch", image_size=16, train=TrainConfig(epochs=1, batch_size=8), out=out,
        max_steps=STEPS, device="cpu", progress=False, timeout_s=60.0,
    )
    return RunConfig(**{**options, **changes})


def worker(out: Path) -> None:
    """One torchrun rank: train, then save this rank's weights and what it saw."""
    torch.set_num_threads(1)
    result = train(run_config(out))
    torch.save(
        {"state": result.model.state_dict(), "steps": result.steps, "world": result.world_size,
         "difference": result.replica_difference},
        out / f"rank{result.rank}.pt",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback_keep_identical_parameters(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--max_restarts=0",
        __file__, str(tmp_path),
    ]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["world"] for r in ranks] == [WORLD] * WORLD and [r["steps"] for r in ranks] == [STEPS] * WORLD
    assert [r["difference"] for r in ranks] == [0.0] * WORLD
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert list(first) == list(second)
    unequal = [k for k in first if not torch.equal(first[k], second[k])]
    assert not unequal, f"parameters differ across ranks: {unequal[:5]}"

    torch.manual_seed(0)
    initial = vmamba_mini(backend="torch", in_chans=1, num_classes=10).state_dict()
    assert any(not torch.equal(first[k], initial[k]) for k in first), "training changed nothing"

    checkpoint = read_saved(tmp_path / "last.pt")  # written by rank 0 only
    assert checkpoint["step"] == STEPS and checkpoint["world_size"] == WORLD
    assert all(torch.equal(checkpoint["model"][k], first[k]) for k in first)
    assert len(checkpoint["history"]["step_loss"]) == STEPS


def test_a_single_process_run_resumes_where_it_stopped(tmp_path):
    """`vmamba train` without torchrun: stop after 2 steps, resume to 3; the weights equal an
    uninterrupted 3-step run, since data order, optimizer and schedule are restored."""
    args = ["train", "--model", "vmamba_mini", "--backend", "torch", "--epochs", "1", "--batch-size", "8",
            "--image-size", "16", "--device", "cpu", "--no-progress"]
    assert cli_main([*args, "--out", str(tmp_path / "cut"), "--max-steps", "2"]) == 0
    assert read_saved(tmp_path / "cut" / "last.pt")["step"] == 2
    assert cli_main([*args, "--out", str(tmp_path / "cut"), "--max-steps", "3", "--resume"]) == 0
    straight = train(run_config(tmp_path / "straight", train=TrainConfig(epochs=1, batch_size=8)))
    resumed = load_model(tmp_path / "cut" / "last.pt", backend="torch")
    assert read_saved(tmp_path / "cut" / "last.pt")["step"] == STEPS
    for (name, p), q in zip(resumed.named_parameters(), straight.model.parameters(), strict=True):
        torch.testing.assert_close(
            p, q, rtol=RESUMED_TRAINING.rtol, atol=RESUMED_TRAINING.atol, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_a_full_epoch_evaluates_and_checkpoints_at_its_end(tmp_path, capsys):
    """Two steps of 512 images at 16x16 make the epoch (the digits' 1,438 training images, the
    last partial batch dropped)."""
    result = train(run_config(tmp_path, train=TrainConfig(epochs=1, batch_size=512), max_steps=None))
    checkpoint = read_saved(tmp_path / "last.pt")
    assert result.steps == 1438 // 512
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]) == (1, 0, result.steps)
    accuracy = checkpoint["history"]["epoch_accuracy"]
    assert len(accuracy) == 1 and 0.0 <= accuracy[0] <= 1.0
    assert "epoch 1/1: loss" in capsys.readouterr().out


def test_resume_without_a_checkpoint_and_bad_settings_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train(run_config(tmp_path, resume=True))
    with pytest.raises(ValueError, match="model must be one of"):
        run_config(tmp_path, model="vmamba_huge")
    with pytest.raises(ValueError, match="max_steps"):
        run_config(tmp_path, max_steps=0)


if __name__ == "__main__":  # torchrun's worker entry point for the two-process test
    worker(Path(sys.argv[1]))
