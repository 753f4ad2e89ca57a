"""backend="torch": VMamba's scan operators in plain PyTorch, for export and any device.

| file              | what                                                                  |
|-------------------|-----------------------------------------------------------------------|
| cross_scan.py     | cross-scan and cross-merge from flips and transposes                  |
| selective_scan.py | the selective scan as an odd-even parallel scan (no division, no NaN) |
| ss2d_core.py      | cross-scan, scan and cross-merge composed                             |

Each public function has the signature, layouts, dtype rule and argument errors of its twin in
`vmamba_ref`. Everything is made of standard tensor operations with autograd gradients, so
this backend needs nothing beyond torch, runs on any device torch runs on, and is the one that
`torch.compile`, `torch.export` and ONNX export (`vmamba_ref.tools.export`) trace. It is slower than
the Numba and Triton kernels; its purpose is portability.
"""

from __future__ import annotations

from vmamba_fast.pytorch.cross_scan import cross_merge, cross_scan, cross_scan_routes
from vmamba_fast.pytorch.selective_scan import linear_recurrence, scan_states, selective_scan
from vmamba_fast.pytorch.ss2d_core import ss2d_core
from vmamba_ref.contract import ScanOps

OPS = ScanOps("torch", cross_scan, cross_merge, selective_scan, ss2d_core)  # what get_ops("torch") returns

__all__ = [
    "cross_merge", "cross_scan", "cross_scan_routes", "linear_recurrence", "scan_states",
    "selective_scan", "ss2d_core",
]  # fmt: skip
