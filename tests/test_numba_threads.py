"""Results of the Numba backend are identical, bit for bit, with 1 and 2 Numba threads; and a
kernel call leaves torch's thread count as the user set it.

Every work item owns its outputs and sums in a fixed order (the backward's dB, dC partials are
split into a fixed number of groups, not one per thread), so the thread count only changes
which thread runs an item. The shapes give several items per thread and several tiles per item.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numba
import pytest
import torch

from vmamba_fast.numba import cross_merge, cross_scan, selective_scan, ss2d_core
from vmamba_fast.numba.config import override
from vmamba_ref.testing.cases import SelectiveScanCase, SS2DCoreCase

THREADS = (1, min(2, numba.config.NUMBA_NUM_THREADS))


def _run_with_threads(threads, fn, inputs):
    """fn's outputs and the gradients of a fixed function of them, with `threads` threads."""
    leaves = {
        k: v.detach().clone().requires_grad_()
        for k, v in inputs.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }
    args = {**inputs, **leaves}
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with override(time_tile=7, parallel_threshold=0):  # really use the threads
            out = fn(**args)
            outs = out if isinstance(out, tuple) else (out,)
            loss = sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs)
            grads = torch.autograd.grad(loss, list(leaves.values()))
    finally:
        numba.set_num_threads(saved)
    return [o.detach() for o in outs], list(grads)


def _assert_identical(fn, inputs):
    (outs1, grads1), (outs2, grads2) = (_run_with_threads(t, fn, inputs) for t in THREADS)
    for a, b in zip(outs1 + grads1, outs2 + grads2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("n", [1, 5, 16])
def test_selective_scan_is_thread_count_independent(n):
    inputs = SelectiveScanCase(
        batch=2, routes=4, channels=20, length=40, state=n, with_initial_state=True,
        return_last_state=True,
    ).build()  # fmt: skip
    _assert_identical(selective_scan, inputs)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("n", [1, 16])
def test_ss2d_core_is_thread_count_independent(n):
    inputs = SS2DCoreCase(batch=2, channels=40, height=6, width=9, state=n).build()
    _assert_identical(ss2d_core, inputs)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("n", [1, 16])
def test_ss2d_core_with_channels_innermost_steps_is_thread_count_independent(n, monkeypatch):
    """The channels-in-lanes kernels (delta stored (b, k, h, w, d)): the forward's chunks follow
    the thread count, and give bitwise the same y for any chunk; the backward's chunks are fixed
    by the shapes (here forced to 16 channels, three chunks whose dB and dC partials are summed)."""
    core = sys.modules["vmamba_fast.numba.ss2d_core"]
    monkeypatch.setattr(core, "KEPT_STATES", 16 * 54 * n)  # 16 channels per backward item
    assert core.positions_bwd_chunk(2, 40, n, 54) == 16
    inputs = SS2DCoreCase(batch=2, channels=40, height=6, width=9, state=n).build()
    delta = inputs["delta"]
    inputs["delta"] = delta.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    assert core.channels_last_steps(inputs["delta"])
    _assert_identical(ss2d_core, inputs)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_cross_scan_and_merge_are_thread_count_independent():
    x = torch.randn(3, 8, 7, 5)
    _assert_identical(lambda x: cross_merge(cross_scan(x).reshape(3, 4, 8, 7, 5)), {"x": x})


USER_SETS_ONE_TORCH_THREAD = """
import sys, torch
torch.set_num_threads(1)
torch.randn(1 << 20).exp()  # the user's torch work (one parallel region) before the first kernel call
assert torch.get_num_threads() == 1
from vmamba_fast.numba import selective_scan
l = int(sys.argv[1])  # 1100: above parallel_threshold, a parallel launch; 16: a one-thread launch
g = torch.Generator().manual_seed(0)
b, k, d, n = 1, 4, 16, 2
selective_scan(torch.randn(b, k * d, l, generator=g), torch.randn(b, k * d, l, generator=g),
               -torch.rand(k * d, n, generator=g), torch.randn(b, k, n, l, generator=g),
               torch.randn(b, k, n, l, generator=g))
print("torch threads after the call:", torch.get_num_threads())
"""


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("length", [1100, 16], ids=["parallel-launch", "one-thread-launch"])
def test_the_call_that_starts_numbas_pool_keeps_the_users_torch_threads(length):
    """Starting Numba's pool on GNU OpenMP set torch's count to Numba's: 1 became 2. A fresh
    process, since the pool starts once per process."""
    result = subprocess.run(
        [sys.executable, "-c", USER_SETS_ONE_TORCH_THREAD, str(length)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch threads after the call: 1" in result.stdout, result.stdout
