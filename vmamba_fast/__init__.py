"""vmamba_fast: the reference's scan operators, fast, behind an explicit `backend=`.

| backend  | runs on | kernels |
|----------|---------|---------|
| "numba"  | CPU tensors | Numba, parallel over (batch, channel), the time loop inside |
| "triton" | CUDA tensors (CPU tensors with TRITON_INTERPRET=1) | Triton, one program per (batch, channel block) |
| "torch"  | any device | plain PyTorch (`vmamba_fast.pytorch`): an odd-even parallel scan that exports |

Every function has the reference's signature plus a keyword-only `backend`, which has no
default: the caller always says which implementation runs. The backend is found by name through
`vmamba_ref.contract.get_ops` (re-exported here), the one loader the network uses too, which
checks the name once and caches the loaded operators. `vmamba_ref` holds the oracle that each
backend is tested against.

`torch.compile(f, fullgraph=True)` traces these functions even in a process where `backend` was
never loaded: dynamo cannot trace the `importlib` call with which `get_ops` loads a backend, but
it runs import statements as it meets them, so while it traces, `_ops` imports the backend's
module with one (`_import_backend`) and `get_ops` then finds it in `sys.modules`. Nothing is
imported before a backend is first used.
"""

from __future__ import annotations

import torch

from vmamba_ref.contract import ScanOps, get_ops, is_available


def _import_backend(backend: str) -> None:
    """Import the module of `BACKEND_MODULES[backend]` with an import statement, which dynamo
    runs while it traces. "ref" needs none: `vmamba_ref` is imported with the contract."""
    if backend == "numba":
        import vmamba_fast.numba  # noqa: F401
    elif backend == "triton":
        import vmamba_fast.triton  # noqa: F401
    elif backend == "torch":
        import vmamba_fast.pytorch  # noqa: F401


def _ops(backend: str) -> ScanOps:
    """`get_ops(backend)`; while torch.compile traces, with the backend's module imported first
    (when its dependency is installed; else `get_ops` raises BackendUnavailableError)."""
    if torch.compiler.is_compiling() and is_available(backend):
        _import_backend(backend)
    return get_ops(backend)


def cross_scan(x: torch.Tensor, *, backend: str) -> torch.Tensor:
    """`vmamba_ref.cross_scan` on a fast backend: (b, d, h, w) -> (b, 4, d, h*w)."""
    return _ops(backend).cross_scan(x)


def cross_merge(ys: torch.Tensor, *, backend: str) -> torch.Tensor:
    """`vmamba_ref.cross_merge` on a fast backend: (b, 4, d, h, w) -> (b, d, h, w)."""
    return _ops(backend).cross_merge(ys)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    z: torch.Tensor | None = None,
    *,
    backend: str,
):
    """`vmamba_ref.selective_scan` on a fast backend; same arguments (mamba_ssm's layouts of B and
    C and the gate z included), layouts and dtype rule."""
    return _ops(backend).selective_scan(
        u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, return_last_state, z
    )


def ss2d_core(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    *,
    backend: str,
) -> torch.Tensor:
    """`vmamba_ref.ss2d_core` on a fast backend: cross-scan, scan and cross-merge fused."""
    return _ops(backend).ss2d_core(x, delta, A, B, C, D, delta_bias, delta_softplus)


__all__ = ["cross_merge", "cross_scan", "get_ops", "selective_scan", "ss2d_core"]
