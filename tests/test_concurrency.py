"""The Numba backend under fork and under several Python threads, whatever threading layer
Numba resolves (vmamba_fast/numba/config.py, docs/kernels.md "Threading layer").

Each scenario runs in a fresh interpreter with a timeout, so that a process the threading layer
kills (GNU OpenMP after fork, workqueue under concurrent launches), a fork child that hangs in a
parallel torch operation (GNU OpenMP's pool does not survive fork) or a pool that never returns
fails its test instead of the test run. Problem sizes are above `parallel_threshold`, so the
parallel launchers really run.

The interpreter first compiles the kernels it will use and says so; the hang timeout starts
then. Compiling is not hanging, and its time varies tenfold: a cold Numba cache (after any edit
of `vmamba_fast/numba`) on a busy machine took over a minute and failed scenarios as "hung".
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILE_TIMEOUT = 600  # seconds to start the interpreter and compile the kernels, cache cold
TIMEOUT = 60  # seconds per scenario once compiled: the hang timeout
COMPILED = "COMPILED"  # what the interpreter prints when it has compiled

SETUP = """
import os, sys, threading
import multiprocessing as mp
import torch
from vmamba_fast.numba import selective_scan, ss2d_core

def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    b, k, d, l, n = 1, 4, 16, 1100, 2          # b*k*d*l = 70400 elements: a parallel launch
    return (torch.randn(b, k * d, l, generator=g), torch.randn(b, k * d, l, generator=g),
            -torch.rand(k * d, n, generator=g), torch.randn(b, k, n, l, generator=g),
            torch.randn(b, k, n, l, generator=g))

def scan(seed):
    return selective_scan(*inputs(seed))

def core(seed):
    g = torch.Generator().manual_seed(seed)
    b, d, h, w, n = 1, 8, 48, 48, 2             # 4*b*d*h*w = 73728 elements
    x = torch.randn(b, d, h, w, generator=g, requires_grad=True)
    args = (torch.randn(b, 4, d, h, w, generator=g), -torch.rand(4 * d, n, generator=g),
            torch.randn(b, 4, n, h, w, generator=g), torch.randn(b, 4, n, h, w, generator=g))
    y = ss2d_core(x, *args)
    (dx,) = torch.autograd.grad(y.square().sum(), x)
    return y.detach(), dx

scan(0), core(0)  # compile (or load from the cache) every kernel the scenarios launch
print("COMPILED", flush=True)
"""


def _drain(stream, lines: list[str], compiled: threading.Event) -> None:
    """Collect a pipe's lines; set `compiled` at the COMPILED line or when the pipe closes."""
    for line in stream:
        lines.append(line)
        if line.strip() == COMPILED:
            compiled.set()
    compiled.set()


def _run(body: str, layer: str | None = None) -> str:
    """Run SETUP + body in a fresh interpreter: COMPILE_TIMEOUT until it has compiled, then
    TIMEOUT for the scenario. Fails on a timeout, a non-zero exit or no "OK"."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    script = SETUP + textwrap.dedent(body)
    out: list[str] = []
    err: list[str] = []
    compiled = threading.Event()
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        readers = [
            threading.Thread(target=_drain, args=(process.stdout, out, compiled)),
            threading.Thread(target=_drain, args=(process.stderr, err, threading.Event())),
        ]
        for reader in readers:
            reader.start()
        started = time.monotonic()
        try:
            if not compiled.wait(COMPILE_TIMEOUT):
                raise subprocess.TimeoutExpired(process.args, COMPILE_TIMEOUT)
            compile_s = time.monotonic() - started
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            for reader in readers:
                reader.join()
            what = (
                f"hung for {TIMEOUT} s after compiling"
                if compiled.is_set()
                else f"not compiled after {COMPILE_TIMEOUT} s"
            )
            pytest.fail(f"{what} (layer {layer}):\n{''.join(out)}\n{''.join(err)}")
        for reader in readers:
            reader.join()
    stdout, stderr = "".join(out), "".join(err)
    assert process.returncode == 0, (
        f"exit {process.returncode} (layer {layer}, compiled in {compile_s:.1f} s):\n"
        f"{stdout[-3000:]}\n{stderr[-3000:]}"
    )
    assert COMPILED in stdout and "OK" in stdout, stdout[-3000:]
    return stdout


LAYERS = [None, "workqueue"]  # None: what Numba picks here (GNU OpenMP)


@pytest.mark.parametrize("layer", LAYERS, ids=["default-layer", "workqueue"])
def test_a_fork_child_runs_the_kernels_after_the_parent_did(layer):
    _run(
        """
        expected = scan(0), core(1)
        pid = os.fork()
        if pid == 0:
            ok = all(torch.equal(a, b) for a, b in zip(scan(0), expected[0])) and all(
                torch.equal(a, b) for a, b in zip(core(1), expected[1]))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("OK")
        """,
        layer,
    )


@pytest.mark.parametrize("layer", LAYERS, ids=["default-layer", "workqueue"])
def test_a_fork_pool_maps_numba_calls(layer):
    _run(
        """
        expected = [scan(s)[0] for s in range(4)]
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(scan, range(4))
        assert all(torch.equal(g[0], e) for g, e in zip(got, expected))
        print("OK")
        """,
        layer,
    )


def test_a_fork_child_of_an_openmp_process_refuses_more_torch_threads_instead_of_hanging():
    _run(
        """
        from vmamba_fast.numba import config
        threads = torch.get_num_threads()
        scan(0)
        pid = os.fork()
        if pid == 0:
            if config.threading_layer() != "omp":  # nothing to refuse on other layers
                os._exit(0)
            assert torch.get_num_threads() == 1  # set by the at-fork hook, in the child only
            torch.set_num_threads(2)
            try:
                scan(0)
            except config.ForkAfterOpenMPError as e:
                os._exit(0 if "forkserver" in str(e) and "NUMBA_THREADING_LAYER" in str(e) else 4)
            os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert torch.get_num_threads() == threads  # the parent keeps its settings
        print("OK")
        """
    )


@pytest.mark.parametrize("layer", LAYERS, ids=["default-layer", "workqueue"])
def test_four_threads_give_the_serial_results_bit_for_bit(layer):
    _run(
        """
        calls = 20
        serial = [(scan(i % 5)[0], core(i % 3)) for i in range(calls)]
        results = [[None] * calls for _ in range(4)]
        def worker(t):
            for i in range(calls):
                results[t][i] = (scan(i % 5)[0], core(i % 3))
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        for per_thread in results:
            for (y, (cy, cdx)), (ey, (ecy, ecdx)) in zip(per_thread, serial):
                assert torch.equal(y, ey) and torch.equal(cy, ecy) and torch.equal(cdx, ecdx)
        print("OK")
        """,
        layer,
    )
