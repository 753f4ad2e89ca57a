"""`wide_simd` (vmamba_fast/numba/config.py): the loops of the Numba kernels that run along memory
ask LLVM for 512-bit vectors, on their own functions only.

Claims checked here:
- a function that calls `wide_simd()` carries `"prefer-vector-width"="512"`; one that does not
  call it is left as LLVM tunes it (no process-wide setting);
- every tile routine and copy whose loops run along memory calls it;
- on a CPU with AVX-512, the discretization's loops then use 512-bit (zmm) registers, which
  LLVM's tuning for Intel's AVX-512 CPUs otherwise avoids;
- in plain Python (`NUMBA_DISABLE_JIT=1`) it is a no-op.
"""

from __future__ import annotations

import importlib
import inspect

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
import torch

from vmamba_fast.numba import tiles
from vmamba_fast.numba.config import JIT, wide_simd
from vmamba_ref.testing.tolerances import tolerance

ss2d_core = importlib.import_module("vmamba_fast.numba.ss2d_core")  # the package exports a function by that name

ATTRIBUTE = '"prefer-vector-width"="512"'
FRESH = {**JIT, "cache": False}  # compiled in this process, so its IR and assembly can be read

LOOPS_ALONG_MEMORY = [
    tiles.load_rows,
    tiles.store_rows,
    tiles.discretize,
    tiles.readout_row,
    tiles.gradients,
    tiles.tile_bwd,
    ss2d_core.load_band,
    ss2d_core.store_band,
    ss2d_core.load_channels,
    ss2d_core.store_channels,
    ss2d_core._position_route,
    ss2d_core._position_route_1,
    ss2d_core._position_route_bwd,
]


def _ir(dispatcher) -> str:
    return dispatcher.inspect_llvm(dispatcher.signatures[0])


def test_only_the_function_that_calls_it_is_marked():
    def scaled(a, out):
        wide_simd()
        for i in range(a.shape[0]):
            out[i] = a[i] * np.float32(2.0)

    def plain(a, out):
        for i in range(a.shape[0]):
            out[i] = a[i] * np.float32(2.0)

    marked, unmarked = numba.njit(**FRESH)(scaled), numba.njit(**FRESH)(plain)
    a = np.arange(64, dtype=np.float32)
    for fn in (marked, unmarked):
        out = np.empty_like(a)
        fn(a, out)
        np.testing.assert_array_equal(out, 2 * a)
    assert ATTRIBUTE in _ir(marked)
    assert ATTRIBUTE not in _ir(unmarked)


def test_in_plain_python_it_does_nothing():
    assert wide_simd() is None


@pytest.mark.parametrize("fn", LOOPS_ALONG_MEMORY, ids=lambda fn: fn.__name__)
def test_every_loop_along_memory_asks_for_wide_vectors(fn):
    body = inspect.getsource(fn.py_func)
    assert "\n    wide_simd()\n" in body, f"{fn.__name__} does not call wide_simd() first"


def test_the_discretization_runs_on_the_widest_vectors():
    discretize = numba.njit(**FRESH)(tiles.discretize.py_func)  # the tile routine, compiled afresh
    cb, n, T = 4, 1, 96
    rng = np.random.default_rng(0)
    u, x = rng.standard_normal((2, cb, T), dtype=np.float32)  # (cb, T) each
    B = rng.standard_normal((n, T), dtype=np.float32)  # (n, T)
    A = -np.ones((cb, n), np.float32)  # (cb, n)
    bias = np.zeros(cb, np.float32)  # (cb,)
    dtb, dAb, dBub = np.empty((3, cb, T), np.float32)  # (cb, T) each
    discretize(u, 0, 0, x, 0, 0, B, 0, 0, A, bias, True, T, dtb, dAb, dBub, dtb, False)
    reference = np.log1p(np.exp(x.astype(np.float64)))  # softplus, (cb, T)
    tol = tolerance(torch.float32, backend="numba")
    np.testing.assert_allclose(dtb, reference, rtol=tol.rtol, atol=tol.atol)
    assert ATTRIBUTE in _ir(discretize)
    if llvm.get_host_cpu_features().get("avx512f"):
        assembly = discretize.inspect_asm(discretize.signatures[0])
        assert "zmm" in assembly, "no 512-bit register in the discretization on an AVX-512 CPU"
