"""backend="triton": VMamba's scan operators as Triton kernels, for CUDA tensors.

| file              | kernels                                                             |
|-------------------|---------------------------------------------------------------------|
| cross_scan.py     | cross-scan and cross-merge as gathers; the route maps; device check |
| selective_scan.py | the selective scan, forward and recomputing backward                |
| ss2d_core.py      | the same scan reading and writing the grid in route order, fused    |

Each public function has the signature, layouts, dtype rule and argument errors of its twin in
`vmamba_ref`. They run on CUDA tensors. On CPU tensors they run only through Triton's
interpreter, when TRITON_INTERPRET=1 was set before triton was imported (slow: for tests);
otherwise they raise `BackendUnavailableError` saying what to pass instead.
"""

from __future__ import annotations

from vmamba_ref.backends import BackendUnavailableError

try:
    import triton  # noqa: F401
except ImportError as err:
    raise BackendUnavailableError(
        "backend 'triton' needs the `triton` package (and a CUDA GPU): pip install "
        "'vmamba[triton]'; or use backend='numba' (CPU) or backend='ref' (any device)"
    ) from err

from vmamba_fast.triton.cross_scan import cross_merge, cross_scan  # noqa: E402
from vmamba_fast.triton.selective_scan import selective_scan  # noqa: E402
from vmamba_fast.triton.ss2d_core import ss2d_core  # noqa: E402

__all__ = ["cross_merge", "cross_scan", "selective_scan", "ss2d_core"]
