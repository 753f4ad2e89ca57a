"""The kernel tutorial's selective scan (docs/kernel_tutorial.md): a first Numba kernel.

A forward-only selective scan as one writes it first: one channel at a time, the time loop
inside, every step read from and written to memory once. Mamba section 3.2, algorithm 2, as in
`vmamba_ref.selective_scan`:

    dt_t = softplus(delta_t + delta_bias),  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
    y_t  = sum_m C_t[m] h_t[m] + D u_t

| name                 | what it is                                                                 |
|----------------------|----------------------------------------------------------------------------|
| `scan_fwd_kernel`    | the Numba kernel, float64, serial, compiled for `SIGNATURE` on import      |
| `selective_scan_fwd` | its launcher, with the reference's signature (no initial or last state)    |
| `plant_bug`          | the kernel recompiled with one line of its source replaced: a launcher too |
| `time_scans`         | seconds per call of the reference, this kernel and the `"numba"` backend   |

Official implementation: `selective_scan_ref` in Mamba's `selective_scan_interface.py` (the
loop); the `"numba"` backend (`vmamba_fast.numba.selective_scan`) is the tuned kernel this one is
measured against. Deviations: no gradient, no initial state, no gate; every input is read as
float64 (the output has the reference's dtype), which keeps the kernel to one compiled signature.
"""

from __future__ import annotations

import inspect
import textwrap
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from vmamba_ref.contract import get_ops
from vmamba_ref.selective_scan import selective_scan

try:
    import numba
except ModuleNotFoundError as error:  # an optional dependency: say what to install
    raise ModuleNotFoundError(
        "vmamba_ref.tools.kernel_tutorial needs Numba: pip install 'vmamba[numba]'", name="numba"
    ) from error


# The kernel's argument types: float64 C-contiguous arrays (`::1` marks the unit-stride last
# axis) u, delta (b, k*d, l); A (k*d, n); B, C (b, k, n, l); D, delta_bias (k*d,); a bool
# delta_softplus; y (b, k*d, l). With them, njit compiles when the module is imported.
SIGNATURE = (
    "void(f8[:, :, ::1], f8[:, :, ::1], f8[:, ::1], f8[:, :, :, ::1], f8[:, :, :, ::1], "
    "f8[::1], f8[::1], b1, f8[:, :, ::1])"
)


@numba.njit(SIGNATURE, cache=True)
def scan_fwd_kernel(u, delta, A, B, C, D, delta_bias, delta_softplus, y):
    """Write y[i_b, c, t] for every batch, channel and step: the recurrence of one channel at a
    time, its state h in a small local array.

    u, delta, y (b, k*d, l); A (k*d, n); B, C (b, k, n, l); D, delta_bias (k*d,). All float64 and
    C-contiguous: t, the last index, has stride 1, so each channel's row is read in order.
    """
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    h = A[0].copy()  # room for the state of one channel, n numbers (zeroed per channel below)
    for i_b in range(b):
        for c in range(kd):
            i_k = c // (kd // k)  # the route of channel c; its d channels share B and C
            h[:] = 0.0  # h_{-1} = 0
            for t in range(l):
                dt = delta[i_b, c, t] + delta_bias[c]
                if delta_softplus and dt <= 20.0:  # torch's softplus: the identity above 20
                    dt = np.log1p(np.exp(dt))
                y_t = D[c] * u[i_b, c, t]  # the skip term
                for m in range(n):
                    h[m] = np.exp(dt * A[c, m]) * h[m] + dt * B[i_b, i_k, m, t] * u[i_b, c, t]
                    y_t += C[i_b, i_k, m, t] * h[m]
                y[i_b, c, t] = y_t


def launch(
    kernel: Callable[..., None], u, delta, A, B, C, D, delta_bias, delta_softplus
) -> torch.Tensor:
    """Run `kernel` on float64 C-contiguous copies of the inputs; y (b, k*d, l) in the
    reference's dtype: float64 for float64 u, float32 otherwise."""
    kd = u.shape[1]
    zeros = torch.zeros(kd, dtype=torch.float64)  # D or delta_bias absent: add nothing

    def array(x: torch.Tensor | None) -> np.ndarray:
        x = zeros if x is None else x.detach()
        if x.dtype not in (torch.float32, torch.float64):  # numpy has no bfloat16
            x = x.to(torch.float64)
        return np.ascontiguousarray(x.numpy(), dtype=np.float64)  # copied by numpy, one thread

    y = np.empty(u.shape)  # (b, k*d, l) float64; the kernel writes every element
    kernel(array(u), array(delta), array(A), array(B), array(C), array(D), array(delta_bias),
           bool(delta_softplus), y)  # fmt: skip
    y = y if u.dtype == torch.float64 else y.astype(np.float32)  # contract.compute_dtype's rule
    return torch.from_numpy(y)


def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """`vmamba_ref.selective_scan` run by `scan_fwd_kernel`, forward only: u, delta (b, k*d, l);
    A (k*d, n); B, C (b, k, n, l); D, delta_bias (k*d,) or None -> y (b, k*d, l)."""
    return launch(scan_fwd_kernel, u, delta, A, B, C, D, delta_bias, delta_softplus)


def plant_bug(old: str, new: str) -> Callable[..., torch.Tensor]:
    """A launcher like `selective_scan_fwd` whose kernel has the line holding `old` (it must occur
    once in `scan_fwd_kernel`'s source) rewritten with `new` in its place, compiled afresh."""
    source = textwrap.dedent(inspect.getsource(scan_fwd_kernel.py_func))
    if source.count(old) != 1:
        raise ValueError(
            f"plant_bug: {old!r} occurs {source.count(old)} times in scan_fwd_kernel, not once"
        )
    body = source.replace(old, new).split("\n", 1)[1]  # without the decorator: no cache for it
    namespace = {"np": np}
    exec(compile(body, f"<scan_fwd_kernel with {new!r}>", "exec"), namespace)
    kernel = numba.njit(SIGNATURE)(namespace["scan_fwd_kernel"])  # compiled here, now

    def planted_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
        return launch(kernel, u, delta, A, B, C, D, delta_bias, delta_softplus)

    return planted_scan


def time_scans(
    lengths: Sequence[int], channels: int = 64, state: int = 1, repeats: int = 5, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call (best of `repeats`; the reference once) at each length l, batch 1,
    `channels` = k*d channels over k = 4 routes, n = `state`, float32, for the reference loop,
    `selective_scan_fwd` and the `"numba"` backend. Each is called once untimed first (Numba
    compiles or loads its cache there)."""
    scans = {
        "reference loop (vmamba_ref)": selective_scan,
        "this page's kernel": selective_scan_fwd,
        'backend "numba" (vmamba_fast)': get_ops("numba").selective_scan,
    }
    generator = torch.Generator().manual_seed(seed)
    seconds: dict[str, list[float]] = {name: [] for name in scans}
    for l in lengths:
        u, delta = torch.randn(2, 1, channels, l, generator=generator)  # (b, k*d, l) each
        A = -torch.rand(channels, state, generator=generator) - 0.5  # (k*d, n)
        B, C = torch.randn(2, 1, 4, state, l, generator=generator)  # (b, k, n, l) each
        D = torch.randn(channels, generator=generator)  # (k*d,)
        for name, scan in scans.items():
            scan(u[..., :2], delta[..., :2], A, B[..., :2], C[..., :2], D)  # compile, warm up
            times = []
            for _ in range(1 if scan is selective_scan else repeats):
                start = time.perf_counter()
                scan(u, delta, A, B, C, D)
                times.append(time.perf_counter() - start)
            seconds[name].append(min(times))
    return seconds
