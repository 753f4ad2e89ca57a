"""The Numba backend: VMamba's scan operators as CPU kernels, forward and backward.

    from vmamba_fast import get_ops
    ops = get_ops("numba")          # cross_scan, cross_merge, selective_scan, ss2d_core

Each function has the signature, layouts and dtype rule of its `vmamba_ref` twin, runs on CPU
tensors only (CUDA tensors raise: use backend="triton" or "ref") and is differentiable through
the `vmamba::*` custom operators of `vmamba_fast.ops`. One file per concept, as in `vmamba_ref`:

| file                | what                                                              |
|---------------------|-------------------------------------------------------------------|
| `cross_scan.py`     | cross_scan, cross_merge: copies along the four routes              |
| `selective_scan.py` | the S6 scan operator: launchers, entry points, `selective_scan`   |
| `ss2d_core.py`      | cross-scan + scan + cross-merge fused, forward and backward       |
| `tiles.py`          | tile routines of the scan and the fused core: phases, backward    |
| `numerics.py`       | exp, log1p, softplus, sigmoid that vectorize in float32           |
| `memory.py`         | the device check, NumPy views, workspace carving, streaming stores |
| `config.py`         | every Numba flag and tile size                                    |

The imports run one way: `numerics.py` and `memory.py` import only `config.py` within the
package; `tiles.py` imports those; the operator files (`cross_scan.py`, `selective_scan.py`,
`ss2d_core.py`) import from those, never from each other. Of the reference package, only
`vmamba_ref.contract` is imported.

Each operator's CPU kernel (the `*_cpu` functions registered below) validates its arguments,
once per call, whoever calls it; the public functions only route a call that could not reach
the kernel (a tensor off the CPU, an argument that is not a tensor) to the same checks.

Dimension letters as in `vmamba_ref`: b batch, h, w grid height and width, l = h*w, k = 4
routes, d inner channels, n state size. The SSM state (the paper's h) is `state` in code.
"""

from vmamba_fast import ops
from vmamba_fast.numba.cross_scan import cross_merge, cross_merge_cpu, cross_scan, cross_scan_cpu
from vmamba_fast.numba.selective_scan import (
    selective_scan,
    selective_scan_bwd_cpu,
    selective_scan_fwd_cpu,
)
from vmamba_fast.numba.ss2d_core import ss2d_core, ss2d_core_bwd_cpu, ss2d_core_fwd_cpu
from vmamba_ref.contract import ScanOps

# The CPU kernels of the vmamba:: operators (schemas, fakes, autograd: vmamba_fast/ops.py).
ops.register_kernels(
    "cpu",
    cross_scan=cross_scan_cpu,
    cross_merge=cross_merge_cpu,
    selective_scan_fwd=selective_scan_fwd_cpu,
    selective_scan_bwd=selective_scan_bwd_cpu,
    ss2d_core_fwd=ss2d_core_fwd_cpu,
    ss2d_core_bwd=ss2d_core_bwd_cpu,
)

# What get_ops("numba") returns. The network stores delta channels innermost on the CPU,
# which takes the core through the kernels that run the channels side by side in the vector
# lanes, forward and backward (`ss2d_core.channels_last_steps`).
OPS = ScanOps("numba", cross_scan, cross_merge, selective_scan, ss2d_core, channels_last_steps=True)

__all__ = ["cross_merge", "cross_scan", "selective_scan", "ss2d_core"]
