"""CPU benchmark of backend="numba": the selective scan against its baselines and its roofline,
the fused SS2D core against the three separate ops, and VMamba end to end.

    python benchmarks/bench_cpu.py            # the full run, a few minutes on 2 cores
    python benchmarks/bench_cpu.py --quick    # tiny shapes, a few seconds: checks the script runs

Everything is measured in this one run and compared as ratios, because absolute timings on a
shared machine drift between runs (by up to 20% here). Each timing is the best of a few runs
(wall clock), the usual way to read a benchmark on a machine that other work also uses.

The fused-core and end-to-end tables run twice, labelled: first as a plain process gets them
(glibc's default allocator), then with the allocator tuned to keep freed memory
(`keep_freed_memory`), which isolates the kernels from page faults; the scan table runs tuned.
`--plain-only` skips the tuned figures.

Implementations of the selective scan (VMamba layout, float32):

| name      | what                                                                              |
|-----------|-----------------------------------------------------------------------------------|
| numba     | `vmamba_fast.get_ops("numba").selective_scan`: this backend                        |
| ref loop  | `vmamba_ref.selective_scan`: the oracle, a Python loop over l of batched steps    |
| textbook  | Mamba's `selective_scan_ref` formulation: dA, dBu materialized as (b, k*d, l, n)  |
|           | up front, then a loop over l vectorized over batch, channels and state            |
| parallel  | `parallel_scan` below: a Hillis-Steele log-depth associative scan in PyTorch       |
| torch     | `vmamba_fast.pytorch` (backend "torch"): an odd-even (Blelloch-style) scan, if present |

The roofline of an op is the larger of two floors, both measured here:
- memory floor: bytes it must move (each input read once, each output written once) divided by
  the stream-triad bandwidth on all cores; forward 4*(3*b*k*d*l + 2*b*k*n*l) bytes (u, delta,
  B, C in; y out), backward another 4*(5*b*k*d*l + 4*b*k*n*l) (u, delta, dy, B, C in; du,
  ddelta, dB, dC out);
- compute floor: transcendental evaluations it must do divided by the vectorized-exp rate on
  all cores: (2 + n) per element and pass (softplus = one exp and one log1p; n exps for dA),
  twice for forward+backward (the backward recomputes them rather than storing (b, k*d, l, n)).
A kernel's fraction of the floor is floor / time (1.0 = at the floor; "within 2x" = >= 0.5).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

import vmamba_fast
from vmamba_fast.numba.config import JIT, PARALLEL_JIT, wide_simd
from vmamba_fast.numba.numerics import exp_
from vmamba_ref.selective_scan import selective_scan as ref_selective_scan

# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------


def textbook_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Mamba's reference formulation (`selective_scan_ref`): discretize everything up front into
    (b, k*d, l, n) tensors, then one loop over l, each step vectorized over b, k*d and n."""
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]  # (b, k*d, l)
    dt = F.softplus(delta) if delta_softplus else delta  # (b, k*d, l)
    Bx = B.repeat_interleave(kd // k, dim=1)  # (b, k, n, l) -> (b, k*d, n, l)
    Cx = C.repeat_interleave(kd // k, dim=1)  # (b, k*d, n, l)
    dA = torch.exp(torch.einsum("bcl,cn->bcln", dt, A))  # (b, k*d, l, n)
    dBu = torch.einsum("bcl,bcnl,bcl->bcln", dt, Bx, u)  # (b, k*d, l, n)
    h = u.new_zeros(b, kd, n)  # (b, k*d, n)
    ys = []
    for t in range(l):
        h = dA[:, :, t] * h + dBu[:, :, t]  # (b, k*d, n)
        ys.append(torch.einsum("bcn,bcn->bc", h, Cx[:, :, :, t]))  # (b, k*d)
    y = torch.stack(ys, dim=2)  # (b, k*d, l)
    return y if D is None else y + D[:, None] * u


def parallel_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """The selective scan as a Hillis-Steele inclusive scan over l of the affine maps
    h -> a h + b (they compose associatively: (a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)),
    log2(l) levels of whole-tensor ops on (b, k*d, l, n) tensors; autograd gives the backward."""
    b, kd, l = u.shape
    k = B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]  # (b, k*d, l)
    dt = F.softplus(delta) if delta_softplus else delta  # (b, k*d, l)
    Bx = B.repeat_interleave(kd // k, dim=1)  # (b, k*d, n, l)
    Cx = C.repeat_interleave(kd // k, dim=1)  # (b, k*d, n, l)
    a = torch.exp(torch.einsum("bcl,cn->bcln", dt, A))  # (b, k*d, l, n)
    h = torch.einsum("bcl,bcnl,bcl->bcln", dt, Bx, u)  # (b, k*d, l, n)
    shift = 1
    while shift < l:
        h = torch.cat([h[:, :, :shift], a[:, :, shift:] * h[:, :, :-shift] + h[:, :, shift:]], 2)
        a = torch.cat([a[:, :, :shift], a[:, :, shift:] * a[:, :, :-shift]], 2)
        shift *= 2
    y = torch.einsum("bcln,bcnl->bcl", h, Cx)  # (b, k*d, l)
    return y if D is None else y + D[:, None] * u


# ------------------------------------------------------------------------------------------------
# Machine limits, measured in this run
# ------------------------------------------------------------------------------------------------


@njit(**PARALLEL_JIT)
def _triad(a, b, c, s):
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


@njit(**PARALLEL_JIT)
def _exp_rate_kernel(x, out, reps):
    """Each thread evaluates exp over its own L2-resident row `reps` times: x, out (threads, m).
    With the kernels' vector width (`wide_simd`), so that the rate is the one they get."""
    for p in prange(x.shape[0]):
        wide_simd()  # in the loop body: Numba compiles a prange's body as a function of its own
        xp = x[p]
        op = out[p]
        for _ in range(reps):
            for i in range(xp.shape[0]):
                op[i] = exp_(xp[i])


@njit(**JIT)
def _exp_rate_serial(x, out, reps):
    wide_simd()
    for _ in range(reps):
        for i in range(x.shape[0]):
            out[i] = exp_(x[i])


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process (no mmap for large blocks, no trimming).

    By default glibc serves blocks above 32 MiB with mmap and unmaps them on free, so every call
    that returns a fresh stage-1 output (38 MiB at b=8) first page-faults and zeroes it, which
    on this machine costs as much as the scan itself and taxes every implementation alike.
    Keeping freed memory, as PyTorch's caching allocator does on the GPU, measures the kernels
    instead. Irreversible for the process: `main` measures the plain-process figures first.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameter numbers from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


@dataclass
class Machine:
    threads: int
    triad_1: float  # bytes/s, one thread
    triad_all: float  # bytes/s, all threads
    exp_1: float  # evaluations/s, one thread, best vectorized implementation
    exp_all: float  # evaluations/s, all threads
    exp_sources: dict  # name -> evaluations/s on all threads


SLOW = 0.5  # seconds: a call this slow is timed once, without warm-up


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Best wall time of `repeats` calls after `warmup` calls, in seconds; a call slower than
    SLOW seconds is timed once (its warm-up, if any, is the measurement)."""
    best = math.inf
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        if time.perf_counter() - t0 > SLOW:
            return time.perf_counter() - t0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if best > SLOW:
            break
    return best


class Budget:
    """Wall-clock budget of the run: slow baselines are skipped, and say so, once it is spent,
    so that the benchmark finishes in a few minutes even on a machine other work slows down."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def allows(self, what: str) -> bool:
        if time.perf_counter() < self.deadline:
            return True
        self.skipped.append(what)
        return False


def measure_machine(quick: bool) -> Machine:
    threads = numba.get_num_threads()
    n = 1 << (20 if quick else 25)  # 3 arrays of 128 MiB each: far beyond the 32 MiB L3
    a, b, c = (np.random.default_rng(i).random(n, dtype=np.float32) for i in range(3))
    triad = {}
    for t in (1, threads):
        numba.set_num_threads(t)
        triad[t] = 12 * n / best_time(lambda: _triad(a, b, c, np.float32(0.5)), 3 if quick else 8)
    numba.set_num_threads(threads)

    m = 1 << 15  # 128 KiB per thread and array: L2-resident
    reps = 4 if quick else 200
    x = np.random.default_rng(0).uniform(-10, 2, (threads, m)).astype(np.float32)
    out = np.empty_like(x)
    rates = {
        "numba polynomial": threads
        * m
        * reps
        / best_time(lambda: _exp_rate_kernel(x, out, reps), 3 if quick else 5)
    }
    xt, ot = torch.from_numpy(x), torch.from_numpy(out)
    rates["torch.exp"] = (
        threads
        * m
        * reps
        / best_time(lambda: [torch.exp(xt, out=ot) for _ in range(reps)], 3 if quick else 5)
    )
    rates["numpy.exp"] = (
        threads
        * m
        * reps
        / best_time(lambda: [np.exp(x, out=out) for _ in range(reps)], 3 if quick else 5)
    )
    serial = m * reps / best_time(lambda: _exp_rate_serial(x[0], out[0], reps), 3 if quick else 5)
    return Machine(threads, triad[1], triad[threads], serial, max(rates.values()), rates)


# ------------------------------------------------------------------------------------------------
# Selective scan table
# ------------------------------------------------------------------------------------------------


# VMamba-T stage shapes: stage 1 has d = 96 channels per route on a 56x56 map, stage 3 d = 384
# on 14x14. name -> (b, d, l, n).
FULL_SHAPES = {
    "stage1 b=8 n=1": (8, 96, 3136, 1),
    "stage1 b=1 n=1": (1, 96, 3136, 1),
    "stage1 b=8 n=16": (8, 96, 3136, 16),
    "stage1 b=1 n=16": (1, 96, 3136, 16),
    "stage3 b=8 n=1": (8, 384, 196, 1),
    "stage3 b=1 n=1": (1, 384, 196, 1),
    "stage3 b=8 n=16": (8, 384, 196, 16),
    "stage3 b=1 n=16": (1, 384, 196, 16),
}
# Where the slow baselines run: (forward, forward+backward) per shape. The rest would take
# minutes each (the reference loop's Python steps, textbook's l-step loop over
# (b, k*d, l, n) tensors) or gigabytes (the parallel scans' log2(l) levels kept for autograd),
# and the whole benchmark has to finish in under five minutes on two cores.
_ALL = {"ref loop", "textbook", "parallel", "torch"}
BASELINE_CELLS = {
    "stage1 b=8 n=1": ({"ref loop", "textbook", "parallel", "torch"}, {"parallel", "torch"}),
    "stage1 b=1 n=1": (_ALL, {"ref loop", "parallel", "torch"}),
    "stage1 b=8 n=16": (set(), set()),
    "stage1 b=1 n=16": ({"textbook", "parallel", "torch"}, {"torch"}),
    "stage3 b=8 n=1": (_ALL, {"ref loop", "parallel", "torch"}),
    "stage3 b=1 n=1": (_ALL, {"ref loop", "parallel", "torch"}),
    "stage3 b=8 n=16": ({"textbook", "parallel", "torch"}, {"torch"}),
    "stage3 b=1 n=16": (_ALL, {"parallel", "torch"}),
}


@dataclass(frozen=True)
class ScanShape:
    name: str
    b: int
    k: int
    d: int
    l: int
    n: int

    @property
    def elements(self) -> int:
        return self.b * self.k * self.d * self.l

    def fwd_bytes(self) -> int:
        return 4 * (3 * self.elements + 2 * self.b * self.k * self.n * self.l)

    def bwd_bytes(self) -> int:
        return 4 * (5 * self.elements + 4 * self.b * self.k * self.n * self.l)

    def evals(self) -> int:
        return self.elements * (2 + self.n)


def scan_inputs(s: ScanShape, requires_grad: bool = False, seed: int = 0):
    """VMamba-like inputs: mamba init (A = -[1..n], dt log-uniform in [1e-3, 0.1])."""
    g = torch.Generator().manual_seed(seed)
    kd = s.k * s.d
    u = torch.randn(s.b, kd, s.l, generator=g)  # (b, k*d, l)
    delta = torch.randn(s.b, kd, s.l, generator=g) * 0.5  # (b, k*d, l)
    A = -torch.arange(1, s.n + 1, dtype=torch.float32).repeat(kd, 1)  # (k*d, n)
    B = torch.randn(s.b, s.k, s.n, s.l, generator=g)  # (b, k, n, l)
    C = torch.randn(s.b, s.k, s.n, s.l, generator=g)  # (b, k, n, l)
    D = torch.ones(kd)  # (k*d,)
    dt = torch.exp(torch.rand(kd, generator=g) * math.log(100.0) + math.log(1e-3))  # (k*d,)
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # (k*d,), softplus(delta_bias) = dt
    tensors = [u, delta, A, B, C, D, delta_bias]
    return [t.requires_grad_(requires_grad) for t in tensors]


def time_scan(fn, s: ScanShape, backward: bool, repeats: int) -> float:
    args = scan_inputs(s, requires_grad=backward)
    return time_pass(lambda: fn(*args), backward, repeats, args)


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def fmt_ratio(other: float | None, mine: float) -> str:
    return "-" if other is None else f"{other / mine:.1f}x"


def scan_table(machine: Machine, quick: bool, budget: Budget, allocator: str) -> dict:
    numba_scan = vmamba_fast.get_ops("numba").selective_scan
    impls: dict[str, Callable] = {
        "numba": numba_scan,
        "ref loop": ref_selective_scan,
        "textbook": textbook_scan,
        "parallel": parallel_scan,
    }
    if importlib.util.find_spec("vmamba_fast.pytorch") is not None:
        impls["torch"] = vmamba_fast.get_ops("torch").selective_scan
    if quick:
        shapes = [ScanShape("tiny", 2, 4, 8, 64, 1), ScanShape("tiny n=4", 1, 4, 4, 49, 4)]
    else:
        shapes = [ScanShape(name, b, 4, d, l, n) for name, (b, d, l, n) in FULL_SHAPES.items()]

    def runs(name: str, s: ScanShape, backward: bool) -> bool:
        if name == "numba" or quick:
            return True
        return name in BASELINE_CELLS[s.name][1 if backward else 0]

    print(f"\n## Selective scan, float32 (times in ms, best of several; ratio = other / numba; {allocator})\n")
    header = f"{'shape':<17} {'pass':<8}" + "".join(f"{name:>16}" for name in impls)
    print(header)
    results = {}
    for s in shapes:
        for backward in (False, True):
            label = "fwd+bwd" if backward else "fwd"
            times = {}
            for name, fn in impls.items():
                if not runs(name, s, backward) or (
                    name != "numba" and not budget.allows(f"{name} {s.name} {label}")
                ):
                    times[name] = None
                    continue
                repeats = 2 if quick else (7 if name == "numba" else 2)
                times[name] = time_scan(fn, s, backward, repeats)
            # numba again after the baselines: the best of both, so that a burst of other work
            # on the machine during one of them does not decide the ratio
            times["numba"] = min(times["numba"], time_scan(impls["numba"], s, backward, 7))
            mine = times["numba"]
            cells = [f"{fmt_ms(mine):>16}"] + [
                f"{fmt_ms(t) + ' ' + fmt_ratio(t, mine):>16}"
                for name, t in times.items()
                if name != "numba"
            ]
            print(f"{s.name:<17} {label:<8}" + "".join(cells))
            results[(s.name, label)] = times
    print("\n## Roofline of the numba scan (floors measured above)\n")
    print(
        f"{'shape':<17} {'pass':<8} {'time ms':>8} {'mem floor':>10} {'exp floor':>10} "
        f"{'frac mem':>9} {'frac exp':>9} {'frac larger':>12}"
    )
    for s in shapes:
        for backward in (False, True):
            label = "fwd+bwd" if backward else "fwd"
            t = results[(s.name, label)]["numba"]
            bytes_ = s.fwd_bytes() + (s.bwd_bytes() if backward else 0)
            mem = bytes_ / machine.triad_all
            comp = s.evals() * (2 if backward else 1) / machine.exp_all
            print(
                f"{s.name:<17} {label:<8} {t * 1e3:>8.2f} {mem * 1e3:>10.2f} {comp * 1e3:>10.2f} "
                f"{mem / t:>9.2f} {comp / t:>9.2f} {max(mem, comp) / t:>12.2f}"
            )
            results[(s.name, label)]["floor"] = max(mem, comp)
    return results


# ------------------------------------------------------------------------------------------------
# Fused SS2D core against cross_scan + selective_scan + cross_merge
# ------------------------------------------------------------------------------------------------


def core_inputs(s: ScanShape, h: int, w: int, backward: bool):
    """The fused core's grid-layout inputs and the same data in the scan's route layout."""
    u, delta, A, B, C, D, bias = scan_inputs(s, requires_grad=backward)
    b, d, n = s.b, s.d, s.n
    x = u[:, :d].detach().reshape(b, d, h, w).requires_grad_(backward)  # (b, d, h, w)
    grid = {
        "x": x,
        "delta": delta.detach().reshape(b, 4, d, h, w).requires_grad_(backward),  # (b, k, d, h, w)
        "A": A,
        "B": B.detach().reshape(b, 4, n, h, w).requires_grad_(backward),  # (b, k, n, h, w)
        "C": C.detach().reshape(b, 4, n, h, w).requires_grad_(backward),  # (b, k, n, h, w)
        "D": D,
        "delta_bias": bias,
    }
    routes = {"delta": delta, "B": B, "C": C}  # (b, k*d, l), (b, k, n, l): VMamba's route order
    return grid, routes


def separate_core(ops, grid, routes):
    """VMamba's unfused pipeline: cross_scan, the scan, cross_merge. Its projections arrive in
    route order already (VMamba projects the cross-scanned map), so only x is cross-scanned."""
    x = grid["x"]
    b, d, h, w = x.shape
    xs = ops.cross_scan(x).reshape(b, 4 * d, h * w)  # (b, k*d, l)
    ys = ops.selective_scan(
        xs, routes["delta"], grid["A"], routes["B"], routes["C"], grid["D"], grid["delta_bias"]
    )  # (b, k*d, l)
    return ops.cross_merge(ys.reshape(b, 4, d, h, w))  # (b, d, h, w)


def time_pass(fn: Callable[[], torch.Tensor], backward: bool, repeats: int, leaves) -> float:
    """Best time of fn(), and with `backward` of the gradients of every leaf from a ones
    cotangent (torch.autograd.grad: nothing accumulates into .grad between repeats)."""

    def run():
        y = fn()
        if backward:
            torch.autograd.grad(y, leaves, torch.ones_like(y))

    with torch.set_grad_enabled(backward):
        return best_time(run, repeats)


def core_table(quick: bool, allocator: str) -> dict:
    ops = vmamba_fast.get_ops("numba")
    if quick:
        shapes = [("tiny", 2, 8, 7, 9, 1)]
    else:
        shapes = [
            ("stage1 b=8 n=1", 8, 96, 56, 56, 1),
            ("stage3 b=8 n=1", 8, 384, 14, 14, 1),
            ("stage1 b=1 n=16", 1, 96, 56, 56, 16),
        ]
    print(f"\n## Fused SS2D core vs cross_scan + selective_scan + cross_merge (numba, ms; {allocator})\n")
    print(f"{'shape':<17} {'pass':<8} {'fused':>8} {'separate':>10} {'speedup':>8}")
    results = {}
    for name, b, d, h, w, n in shapes:
        s = ScanShape(name, b, 4, d, h * w, n)
        for backward in (False, True):
            grid, routes = core_inputs(s, h, w, backward)
            repeats = 2 if quick else 7
            fused_leaves = [t for t in grid.values() if t.requires_grad]
            separate_leaves = [
                t for k, t in grid.items() if t.requires_grad and k not in routes
            ] + [t for t in routes.values() if t.requires_grad]
            times = {
                "fused": time_pass(
                    lambda g=grid: ops.ss2d_core(**g), backward, repeats, fused_leaves
                ),
                "separate": time_pass(
                    lambda g=grid, r=routes: separate_core(ops, g, r),
                    backward,
                    repeats,
                    separate_leaves,
                ),
            }
            label = "fwd+bwd" if backward else "fwd"
            print(
                f"{name:<17} {label:<8} {times['fused'] * 1e3:>8.2f} "
                f"{times['separate'] * 1e3:>10.2f} {times['separate'] / times['fused']:>7.2f}x"
            )
            results[(name, label)] = times
    return results


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------


def model_table(quick: bool, budget: Budget, allocator: str) -> dict:
    """End to end, through `vmamba bench`'s own measurement (`vmamba_ref.tools.bench`), the one
    home of model throughput: this script only picks the configurations and prints ratios."""
    from vmamba_ref.tools.bench import BenchConfig, run_benchmark

    fast = ["numba", "torch"]
    # --quick checks the plumbing with the small test model; the full run measures VMamba-T.
    model, size, batch = ("vmamba_mini", 32, 2) if quick else ("vmamba_tiny", 224, 8)
    repeats = 1 if quick else 3
    print(f"\n## {model} inference, {batch} images of {size}x{size}, float32 (images/s; {allocator})\n")
    results = {}
    for backend in [*fast, "ref"]:
        slow = backend == "ref"  # minutes per batch: timed once, and only within the budget
        if slow and not budget.allows(f"{model} inference, ref"):
            continue
        config = BenchConfig(
            model, backend, batch, size, warmup=0 if slow else 1, iters=1 if slow else repeats
        )
        results[("tiny", backend)] = min(run_benchmark(config).times_s)
    for backend in [*fast, "ref"]:
        if ("tiny", backend) in results:
            t = results[("tiny", backend)]
            print(f"{backend:<8} {batch / t:>8.2f} images/s   ({t * 1e3:.0f} ms per batch)")
    if ("tiny", "ref") in results:
        print(f"numba vs ref: {results[('tiny', 'ref')] / results[('tiny', 'numba')]:.1f}x")

    size, batch = (32, 2) if quick else (64, 8)
    print(f"\n## vmamba_mini training step, {batch} images of {size}x{size} (ms)\n")
    for backend in [*fast, "ref"]:
        if backend == "ref" and not budget.allows("vmamba_mini training, ref"):
            continue
        config = BenchConfig("vmamba_mini", backend, batch, size, warmup=1, iters=repeats, train=True)
        results[("mini train", backend)] = t = min(run_benchmark(config).times_s)
        print(f"{backend:<8} {t * 1e3:>8.1f} ms per step")
    if ("mini train", "ref") in results:
        ratio = results[("mini train", "ref")] / results[("mini train", "numba")]
        print(f"numba vs ref: {ratio:.1f}x")
    return results


# ------------------------------------------------------------------------------------------------


def targets(machine: Machine, scans: dict, cores: dict, models: dict, quick: bool) -> None:
    if quick:
        return
    print("\n## Targets (stage 1, b=8, k*d=384, n=1, l=3136, float32)\n")
    fwd = scans[("stage1 b=8 n=1", "fwd")]
    both = scans[("stage1 b=8 n=1", "fwd+bwd")]
    rows = [
        ("forward >= 25x faster than textbook", fwd["textbook"] / fwd["numba"], 25.0),
        (
            "forward within 2x of the larger floor (fraction >= 0.5)",
            fwd["floor"] / fwd["numba"],
            0.5,
        ),
        ("fwd+bwd >= 20x faster than the parallel scan", both["parallel"] / both["numba"], 20.0),
    ]
    core_fwd = cores[("stage1 b=8 n=1", "fwd")]
    core_both = cores[("stage1 b=8 n=1", "fwd+bwd")]
    rows.append(
        ("fused core faster than separate, fwd", core_fwd["separate"] / core_fwd["fused"], 1.0)
    )
    rows.append(
        (
            "fused core faster than separate, fwd+bwd",
            core_both["separate"] / core_both["fused"],
            1.0,
        )
    )
    if ("tiny", "ref") in models:
        rows.append(
            (
                "VMamba-T inference >= 5x faster than ref",
                models[("tiny", "ref")] / models[("tiny", "numba")],
                5.0,
            )
        )
    for text, value, goal in rows:
        print(f"{text:<58} {value:>8.2f}  {'met' if value >= goal else 'NOT met'}")


def warm_up() -> float:
    """Call this script's kernels and every numba operator once (the operators forward alone and
    forward+backward) on tiny inputs, and return the seconds it took. A first call compiles or
    loads the kernels from Numba's cache (which an edit of the file invalidates) and, through
    the torch.library operators, imports torch's compile machinery (1-2 s); a measurement that
    caught it would time the import, not the kernel."""
    t0 = time.perf_counter()
    x = np.zeros((numba.get_num_threads(), 64), dtype=np.float32)  # this script's own kernels
    _triad(x[0], x[0], x[0], np.float32(0.5))
    _exp_rate_kernel(x, x.copy(), 1)
    _exp_rate_serial(x[0], x[0].copy(), 1)
    ops = vmamba_fast.get_ops("numba")
    s = ScanShape("warm-up", 1, 4, 2, 12, 1)
    for backward in (False, True):
        scan_args = scan_inputs(s, requires_grad=backward)
        grid, routes = core_inputs(s, 3, 4, backward)
        calls = [
            (lambda a=scan_args: ops.selective_scan(*a), scan_args),
            (lambda g=grid: ops.ss2d_core(**g), [t for t in grid.values() if t.requires_grad]),
            (lambda g=grid, r=routes: separate_core(ops, g, r), [grid["x"]]),
        ]
        for fn, leaves in calls:
            time_pass(fn, backward, 1, leaves)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds: a smoke run")
    parser.add_argument("--no-model", action="store_true", help="skip the end-to-end part")
    parser.add_argument(
        "--threads", type=int, default=0, help="threads for numba and torch (default: all)"
    )
    parser.add_argument(
        "--plain-only",
        action="store_true",
        help="measure only as a plain process does (glibc's defaults); skip the tuned figures",
    )
    parser.add_argument(
        "--budget", type=float, default=200.0, help="seconds after which slow baselines are skipped"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    if args.threads:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warm = warm_up()  # before anything is timed
    machine = measure_machine(args.quick)
    print(
        f"# CPU benchmark: {machine.threads} numba threads, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, numba {numba.__version__}"
    )
    print(
        "allocator: the kernel figures are measured twice, labelled: first as a plain process "
        "gets them (glibc's defaults: blocks above 32 MiB are unmapped on free and page-fault "
        "again on reuse), then with freed memory kept in the process (mallopt, which this script "
        "sets for itself only, and cannot undo)"
    )
    print(
        f"stream triad: {machine.triad_1 / 1e9:.1f} GB/s on 1 thread, "
        f"{machine.triad_all / 1e9:.1f} GB/s on {machine.threads}"
    )
    print(
        "vectorized exp: "
        + ", ".join(f"{k} {v / 1e9:.2f} G/s" for k, v in machine.exp_sources.items())
        + f" on {machine.threads} threads; best on 1 thread {machine.exp_1 / 1e9:.2f} G/s"
    )
    print(f"warm-up (Numba's compile cache, torch's operator machinery): {warm:.1f} s")
    if machine.threads > 1 and machine.exp_all < 1.2 * machine.exp_1:
        print(
            "WARNING: all threads together evaluate exp barely faster than one: other work is "
            "using the cores, and ratios between implementations are unreliable in this run "
            "(try again later, or --threads 1)"
        )
    budget = Budget(args.budget)
    plain = "plain process"
    cores = core_table(args.quick, plain)
    models = {} if args.no_model else model_table(args.quick, budget, plain)
    if not args.plain_only:
        tuned = "allocator tuned: freed memory kept"
        if keep_freed_memory():
            cores = core_table(args.quick, tuned)
            if not (args.no_model or args.quick):  # --quick checks the plumbing once
                models = model_table(args.quick, budget, tuned)
        else:
            print("\nmallopt is not available (not glibc): only the plain-process figures")
            tuned = plain
    scans = scan_table(machine, args.quick, budget, plain if args.plain_only else tuned)
    targets(machine, scans, cores, models, args.quick)
    if budget.skipped:
        print(
            f"\nskipped once the {args.budget:.0f} s budget was spent: " + "; ".join(budget.skipped)
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
