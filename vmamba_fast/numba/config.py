"""Compilation flags and tile sizes of the Numba backend, in one place.

Every kernel in `vmamba_fast.numba` is compiled with the options below; nothing else in the
package passes flags to `numba.njit`. The fast and the debugging configuration differ only here:
set `NUMBA_DISABLE_JIT=1` in the environment to run every kernel as plain Python (slow, but
steppable and visible to coverage).

Why each flag (the kernels' timings with them: `docs/kernels.md`, section "On a 2-core CPU"):

- `fastmath`: contraction into FMAs (`contract`), reassociation (`reassoc`, so that sums over
  time vectorize), approximate functions (`afn`), reciprocals (`arcp`) and no signed zeros
  (`nsz`). It leaves out `nnan` and `ninf`: NaN and infinity in an input must reach the output
  exactly where the reference puts them, and the exp clamps rely on comparisons with NaN being
  false. The softplus in `numerics.py` is written so that reassociation cannot cancel it.
- `error_model="numpy"`: Python's divide-by-zero check blocks SIMD.
- `cache=True`: cold compilation costs 0.5-2.6 s per signature; the cache keeps it to the first
  run. The cache is keyed on each kernel's own source file, so after editing a helper in another
  file, delete `vmamba_fast/numba/__pycache__`.
- `parallel=True` only on the launchers, whose one `prange` runs over (batch, channel block).
- `wide_simd()`, called first in every function whose loops run along memory: 512-bit vectors
  on every CPU with AVX-512, not only on those whose LLVM tuning already prefers them (below).

Threading layers (docs/kernels.md, "Threading layer"): the launchers run on whichever layer
Numba resolves, and the library never chooses one. Two of them kill the process in common
patterns, so `threads_for` and `launch` steer around them:

- GNU OpenMP ("omp"): a child `fork()`ed after the parent ran a parallel launcher is aborted
  when it starts one, and hangs in the first parallel torch operation: torch runs its
  intra-op parallelism on the same libgomp, whose thread pool the fork left behind (measured:
  a 10M-element `torch.exp` or a 1000x1000 `torch.matmul` in the child never returns; the same
  happens after a parallel torch op alone, without Numba). `os.register_at_fork` marks such a
  child and sets torch to one thread there (the child only; the parent keeps its settings),
  and `launch` gives it a single-threaded twin of each launcher (compiled there on first use,
  not cached), so a fork child or a `multiprocessing` "fork" pool runs the kernels and the
  torch code around them on one thread each. A child that raises torch's thread count again
  would hang, so `threads_for` raises `ForkAfterOpenMPError` there instead.
- workqueue: concurrent launches from several Python threads abort. `threads_for` holds a lock
  around every launch while the layer is workqueue (or not chosen yet).

On GNU OpenMP, starting Numba's thread pool also resets the calling thread's OpenMP thread
count, which is torch's; `threads_for` puts torch's back, so a kernel call never changes the
thread count a user gave torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numba
import torch
from numba import types
from numba.extending import intrinsic, overload

FASTMATH = frozenset({"contract", "reassoc", "afn", "arcp", "nsz"})


@dataclass(frozen=True)
class NumbaConfig:
    """Flags handed to `numba.njit` and the work decomposition of the scan kernels."""

    fastmath: frozenset[str] = FASTMATH  # no nnan/ninf: NaN and inf propagate like the reference
    error_model: str = "numpy"  # no divide-by-zero branch in the loops
    cache: bool = True  # compiled kernels persist in __pycache__
    parallel: bool = True  # prange over (batch, channel block) in the launchers
    # Independent recurrences advanced together; a channel block holds max(1, chains // n)
    # channels, so that cb*n >= chains chains hide the FMA latency.
    chains: int = 16
    # Time steps per tile: a whole route up to 4096 steps (VMamba at 224x224 has l <= 3136).
    # An item then streams each of its rows of u, delta and y once, start to end, which the
    # hardware prefetchers follow; at VMamba-T stage 1 (n=1) tiles of 512, whose scratch stays
    # in L2, measured 1.2x slower forward and backward. The scratch is about
    # 7*chains*time_tile floats per thread (1.4 MiB at 16 chains and l=3136).
    time_tile: int = 4096
    # Partial sums of dB and dC per route in the backward. Fixed, not the thread count, so
    # that results do not depend on how many threads run.
    reduction_groups: int = 4
    # Problems with fewer scan elements (b*k*d*l) run on one thread: a parallel launch costs
    # tens of microseconds, and on a busy machine a descheduled worker stalls the whole call.
    parallel_threshold: int = 1 << 16

    def jit(self, parallel: bool = False) -> dict:
        """Keyword arguments for `numba.njit`; `parallel=True` for a prange launcher."""
        return {
            "fastmath": set(self.fastmath),
            "error_model": self.error_model,
            "cache": self.cache,
            "nogil": True,
            "parallel": parallel and self.parallel,
        }


CONFIG = NumbaConfig()
JIT = CONFIG.jit()  # helpers and tile routines
PARALLEL_JIT = CONFIG.jit(parallel=True)  # launchers with a prange


def wide_simd() -> None:
    """Vectorize the calling Numba function's loops with the widest registers the CPU has.

    LLVM's tuning for Intel's AVX-512 CPUs (Skylake-SP to Emerald Rapids) prefers 256-bit
    vectors, against the clock drop that 512-bit code caused on the first of them; AMD's Zen 4
    gets 512 bits already. So on those Intel CPUs every Numba loop ran on half the lanes the
    CPU has. Called first in a function whose loops run along memory, this sets
    `"prefer-vector-width"="512"` on that function alone (`_prefer_512_bit_vectors`):

    - a CPU without AVX-512 keeps the widest vectors it has: the attribute is a preference;
    - nothing else in the process changes. Numba's own switch (the environment variable
      `NUMBA_CPU_FEATURES=-prefer-256-bit`) would retune every function of every library, and
      the library never changes process-wide settings.

    It marks only the function that calls it, since Numba compiles and vectorizes each
    function on its own before inlining it: a launcher's attribute would not reach its tile
    routines. Measured on a 2-vCPU Emerald Rapids host, both variants in one process, calls
    interleaved: the discretization 1.40-1.49x faster per element while its tile stays in L1
    and L2 (up to 1,024 steps), no faster at 3,136 steps, where it waits on the caches; the
    fused core 1.03-1.16x forward and 1.05-1.11x backward per call at VMamba-T's four stages
    (batch 8); the VMamba-T forward 1.02-1.03x at batch 8 and 1.03x at batch 1, with bitwise
    the same logits. In plain Python (`NUMBA_DISABLE_JIT=1`) it does nothing.
    """


@intrinsic
def _prefer_512_bit_vectors(typingctx):
    """Set `"prefer-vector-width"="512"` on the LLVM function being compiled (`wide_simd`).

    llvmlite's attribute set accepts only LLVM's enumerated attributes by name, and this one is
    a string attribute, which LLVM's IR writes the same way in the function's attribute list:
    it is added to the set as such, past that check."""

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@overload(wide_simd, inline="always")  # inlined, so that the intrinsic marks the caller
def _wide_simd_impl():
    return lambda: _prefer_512_bit_vectors()


_active = [CONFIG]


def active() -> NumbaConfig:
    """The configuration the launchers use now: CONFIG, or the innermost `override`."""
    return _active[-1]


@contextmanager
def override(**changes: int) -> Iterator[NumbaConfig]:
    """Run the kernels with other work-decomposition sizes inside the block, e.g.

        with override(time_tile=3):   # a tile boundary every 3 steps: what tests need
            y = selective_scan(...)

    Only the work-decomposition fields can change here: they are run-time arguments of the
    kernels, so nothing recompiles. The compilation flags are fixed when the module is imported.
    """
    tunable = {"chains", "time_tile", "reduction_groups", "parallel_threshold"}
    unknown = set(changes) - tunable
    if unknown:
        raise ValueError(f"override: only {sorted(tunable)} can change, got {sorted(unknown)}")
    for name, value in changes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"override: {name} must be an int >= 0, got {value!r}")
        if value == 0 and name != "parallel_threshold":
            raise ValueError(f"override: {name} must be at least 1, got 0")
    _active.append(replace(active(), **changes))
    try:
        yield _active[-1]
    finally:
        _active.pop()


def threading_layer() -> str | None:
    """The layer Numba resolved ("omp", "tbb", "workqueue"), or None before any parallel
    launch (Numba chooses it on the first one)."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


class ForkAfterOpenMPError(RuntimeError):
    """A fork child of a process that launched on GNU OpenMP asked for more than one torch
    thread: its first parallel region would hang."""


_forked_from_omp = False  # this process is a fork child of one that launched on OpenMP
_pid = os.getpid()  # the process the flag above describes


def _after_fork_in_child() -> None:
    """In a fork child of a process that launched on GNU OpenMP: mark it, for `launch`, and run
    torch on one thread, since libgomp's thread pool did not survive the fork. Changes only the
    child, which would otherwise hang in its first parallel torch operation."""
    global _forked_from_omp, _pid
    _pid = os.getpid()
    _forked_from_omp = _forked_from_omp or threading_layer() == "omp"
    if _forked_from_omp:
        torch.set_num_threads(1)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_fork_child() -> None:
    """Before a launch: catch up on a fork that bypassed `os.register_at_fork` (a `fork()` from
    C), and refuse to run torch on several threads in a fork child of an OpenMP process."""
    if os.getpid() != _pid:
        _after_fork_in_child()
    if _forked_from_omp and torch.get_num_threads() > 1:
        raise ForkAfterOpenMPError(
            f"this process was fork()ed from one that ran Numba kernels on GNU OpenMP, and asks "
            f"for {torch.get_num_threads()} torch threads: GNU OpenMP's thread pool does not "
            "survive fork, so the first parallel region would hang. Keep torch.set_num_threads(1) "
            "in the child (as vmamba_fast sets it there); or start workers with the 'spawn' or "
            "'forkserver' method of multiprocessing; or set NUMBA_THREADING_LAYER=workqueue (or "
            "tbb) in the environment before the parent's first call"
        )


_serial_twins: dict[Callable, Callable] = {}


def launch(kernel: Callable) -> Callable:
    """The launcher to call for `kernel` (a `parallel=True` njit function): itself, or in a
    fork child of an OpenMP process (where a parallel launch aborts) its single-threaded twin,
    compiled from the same source without `parallel` and without the on-disk cache (whose
    entries are keyed by signature, not flags)."""
    if not _forked_from_omp:
        return kernel
    twin = _serial_twins.get(kernel)
    if twin is None:
        twin = numba.njit(**{**CONFIG.jit(parallel=False), "cache": False})(kernel.py_func)
        _serial_twins[kernel] = twin
    return twin


_launch_lock = threading.Lock()


@contextmanager
def _exclusive_on_workqueue() -> Iterator[None]:
    """Serialise launches while the layer is workqueue, or not chosen yet (the first launch
    chooses it): workqueue aborts the process when several threads launch at once."""
    if threading_layer() in ("omp", "tbb") or _forked_from_omp:
        yield
        return
    with _launch_lock:
        yield


@contextmanager
def _torch_threads_kept_while_the_pool_starts() -> Iterator[None]:
    """Leave torch's thread count as the caller set it when this block starts Numba's pool.

    Numba starts its thread pool on the first parallel launch (or `numba.get_num_threads()`).
    On GNU OpenMP, the library torch runs its own threads on, starting it sets the calling
    thread's OpenMP thread count to Numba's: measured, a user's `torch.set_num_threads(1)`
    became 2 after the first kernel call. Later launches leave it alone, so only the block that
    starts the pool saves and restores torch's count.
    """
    if threading_layer() is not None:  # the pool runs already
        yield
        return
    torch_threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


@contextmanager
def threads_for(elements: int) -> Iterator[None]:
    """Run the kernels launched inside on one thread when the problem has fewer than
    `parallel_threshold` elements; otherwise leave Numba's thread count alone. Results do not
    depend on the thread count (tests/test_numba_threads.py), only the time does. Launches from
    several Python threads are serialised on the workqueue layer; in a fork child of an OpenMP
    process, a torch thread count above one raises `ForkAfterOpenMPError` (module docstring)."""
    _check_fork_child()
    with _exclusive_on_workqueue(), _torch_threads_kept_while_the_pool_starts():
        if elements >= active().parallel_threshold or _forked_from_omp:
            yield
            return
        saved = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(saved)
