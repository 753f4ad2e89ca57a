"""Explicit backend selection: which implementation of the scan operators a model uses.

A backend is chosen once, by name, when a model or op is built. Asking for one that is not
installed, or that cannot run on the given device, raises `BackendUnavailableError` saying what
to install or pass; nothing ever falls back silently to another backend.

| name     | where                  | needs                        |
|----------|------------------------|------------------------------|
| "ref"    | any device             | nothing: the readable oracle |
| "numba"  | CPU tensors            | `pip install vmamba[numba]`  |
| "triton" | CUDA tensors (or the CPU with TRITON_INTERPRET=1) | `pip install vmamba[triton]` |
| "torch"  | any device             | nothing: plain PyTorch, the path torch.export and ONNX trace |
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

BackendName = Literal["ref", "numba", "triton", "torch"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
_REQUIRES = {"numba": "numba", "triton": "triton"}  # "ref", "torch": torch only


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what to install or pass."""


@dataclass(frozen=True)
class ScanOps:
    """The four operators a backend provides, each with the reference's signature."""

    name: str
    cross_scan: Callable
    cross_merge: Callable
    selective_scan: Callable
    ss2d_core: Callable


def check_backend_name(backend: object) -> str:
    """Return `backend` if it names a backend, else raise ValueError listing the names."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend  # type: ignore[return-value]


def is_available(backend: str) -> bool:
    """True when `backend`'s optional dependency is installed."""
    check_backend_name(backend)
    module = _REQUIRES.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """The backends whose dependencies are installed, fastest first."""
    return [name for name in ("numba", "triton", "torch", "ref") if is_available(name)]


def fastest_backend(device: str = "cpu") -> str:
    """The fastest backend installed for `device`: on the CPU numba, else the plain-PyTorch
    parallel scan "torch"; on a GPU triton, else "torch". For programs that pick for the user;
    they should say which one they picked."""
    preferred = "numba" if str(device).startswith("cpu") else "triton"
    return preferred if is_available(preferred) else "torch"


def get_ops(backend: str) -> ScanOps:
    """The scan operators of `backend`. Raises ValueError for an unknown name and
    BackendUnavailableError when its dependency is missing."""
    check_backend_name(backend)
    if backend == "ref":
        from vmamba_ref.cross_scan import cross_merge, cross_scan
        from vmamba_ref.selective_scan import selective_scan
        from vmamba_ref.ss2d_core import ss2d_core

        return ScanOps("ref", cross_scan, cross_merge, selective_scan, ss2d_core)
    if not is_available(backend):
        raise BackendUnavailableError(
            f"backend {backend!r} needs the `{_REQUIRES[backend]}` package: "
            f"pip install 'vmamba[{backend}]', or pass backend='ref'"
        )
    fast = importlib.import_module("vmamba_fast")
    return fast.get_ops(backend)
