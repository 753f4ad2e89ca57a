"""Compilation flags and tile sizes of the Numba backend, in one place.

Every kernel in `vmamba_fast.numba` is compiled with the options below; nothing else in the
package passes flags to `numba.njit`. The fast and the debugging configuration differ only here:
set `NUMBA_DISABLE_JIT=1` in the environment to run every kernel as plain Python (slow, but
steppable and visible to coverage).

Why each flag (measured facts in `perf_notes.md`):

- `fastmath`: contraction into FMAs (`contract`), reassociation (`reassoc`, so that sums over
  time vectorize), approximate functions (`afn`), reciprocals (`arcp`) and no signed zeros
  (`nsz`). It leaves out `nnan` and `ninf`: NaN and infinity in an input must reach the output
  exactly where the reference puts them, and the exp clamps rely on comparisons with NaN being
  false. The softplus in `selective_scan.py` is written so that reassociation cannot cancel it.
- `error_model="numpy"`: Python's divide-by-zero check blocks SIMD.
- `cache=True`: cold compilation costs 0.5-2.6 s per signature; the cache keeps it to the first
  run. The cache is keyed on each kernel's own source file, so after editing a helper in another
  file, delete `vmamba_fast/numba/__pycache__`.
- `parallel=True` only on the launchers, whose one `prange` runs over (batch, channel block).
"""

from __future__ import annotations

from dataclasses import dataclass

FASTMATH = frozenset({"contract", "reassoc", "afn", "arcp", "nsz"})


@dataclass(frozen=True)
class NumbaConfig:
    """Flags handed to `numba.njit` and the work decomposition of the scan kernels."""

    fastmath: frozenset[str] = FASTMATH  # no nnan/ninf: NaN and inf propagate like the reference
    error_model: str = "numpy"  # no divide-by-zero branch in the loops
    cache: bool = True  # compiled kernels persist in __pycache__
    parallel: bool = True  # prange over (batch, channel block) in the launchers
    chains: int = 16  # independent recurrences per work item: channel block = max(1, chains // n)
    time_tile: int = (
        128  # time steps per tile; the tile's scratch, 3*chains*time_tile floats, stays in L1/L2
    )

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
