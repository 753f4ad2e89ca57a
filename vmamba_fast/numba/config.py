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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numba

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


@contextmanager
def threads_for(elements: int) -> Iterator[None]:
    """Run the kernels launched inside on one thread when the problem has fewer than
    `parallel_threshold` elements; otherwise leave Numba's thread count alone. Results do not
    depend on the thread count (tests/test_numba_threads.py), only the time does."""
    if elements >= active().parallel_threshold:
        yield
        return
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)
