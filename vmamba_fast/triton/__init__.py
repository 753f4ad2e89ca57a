"""backend="triton": VMamba's scan operators as Triton kernels, for CUDA tensors.

| file              | holds                                                                  |
|-------------------|------------------------------------------------------------------------|
| common.py         | what the kernels share: device check, compute dtype, route maps,       |
|                   | softplus, one chunk of the recurrence and of its adjoint               |
| cross_scan.py     | cross-scan and cross-merge as gathers                                  |
| selective_scan.py | the selective scan, forward and recomputing backward; default tiles    |
| ss2d_core.py      | the fused SS2D core: the scan reading and writing the grid in route order |

Each public function has the signature, layouts, dtype rule and argument errors of its twin in
`vmamba_ref`. They run on CUDA tensors, through the `vmamba::` custom operators of
`vmamba_fast/ops.py`, for which importing this package registers the kernels below as the CUDA
implementations (the CPU ones are Numba's). On CPU tensors they run only through Triton's
interpreter, when TRITON_INTERPRET=1 was set before triton was imported (slow: for tests), and
call the kernels directly; otherwise they raise `BackendUnavailableError` saying what to pass
instead.
"""

from __future__ import annotations

from vmamba_ref.contract import BackendUnavailableError, ScanOps

try:
    import triton  # noqa: F401
except ImportError as err:
    raise BackendUnavailableError(
        "backend 'triton' needs the `triton` package (and a CUDA GPU): pip install "
        "'vmamba[triton]'; or use backend='numba' (CPU) or backend='ref' (any device)"
    ) from err

from vmamba_fast import ops  # noqa: E402
from vmamba_fast.triton.cross_scan import (  # noqa: E402
    cross_merge,
    cross_scan,
    cuda_cross_merge,
    cuda_cross_scan,
)
from vmamba_fast.triton.selective_scan import (  # noqa: E402
    cuda_selective_scan_bwd,
    cuda_selective_scan_fwd,
    selective_scan,
)
from vmamba_fast.triton.ss2d_core import (  # noqa: E402
    cuda_ss2d_core_bwd,
    cuda_ss2d_core_fwd,
    ss2d_core,
)

# The CUDA kernels of the vmamba:: operators, whose schemas, fake tensors, autograd and FLOP
# formulas live in vmamba_fast/ops.py; the CPU kernels are Numba's (vmamba_fast/numba): a model
# dispatches to Numba or Triton by the device of its tensors, through the same operators.
ops.register_kernels(
    "cuda",
    cross_scan=cuda_cross_scan,
    cross_merge=cuda_cross_merge,
    selective_scan_fwd=cuda_selective_scan_fwd,
    selective_scan_bwd=cuda_selective_scan_bwd,
    ss2d_core_fwd=cuda_ss2d_core_fwd,
    ss2d_core_bwd=cuda_ss2d_core_bwd,
)

# What get_ops("triton") returns.
OPS = ScanOps("triton", cross_scan, cross_merge, selective_scan, ss2d_core)

__all__ = ["cross_merge", "cross_scan", "selective_scan", "ss2d_core"]
