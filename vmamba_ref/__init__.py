"""vmamba_ref: the readable reference implementation of VMamba, the oracle for every fast kernel.

Dimension glossary (lowercase letters, so they never clash with the SSM matrices A, B, C, D).
Each letter has one meaning everywhere in the project, code and docs:

| letter | meaning                                     | VMamba-T, stage 1 at 224x224 |
|--------|---------------------------------------------|------------------------------|
| b      | batch                                       |                              |
| h, w   | spatial height and width of a feature map   | 56, 56                       |
| l      | sequence length of one route, l = h*w       | 3136                         |
| k      | routes of the cross-scan, k = 4             | 4                            |
| c      | model channels (stage width)                | 96                           |
| d      | inner (SSM) channels, d = ssm_ratio * c     | 96                           |
| n      | state size per channel (d_state)            | 1                            |
| r      | rank of the step-size projection (dt_rank)  | 6                            |
| e      | x_proj's outputs per route, e = r + 2n      | 8                            |

Names that are not dimensions: `x` is a feature map on the grid, (b, c, h, w) or (b, d, h, w);
`u` is a route sequence, the scan's input (b, k*d, l); `state` is the SSM state, the paper's
h_t (in code `h` is always the height); `delta` the step-size logits and `dt` the step size
softplus(delta + delta_bias), the paper's Δ.

Where things are: `contract.py` (what every backend shares), the oracle (`cross_scan.py`,
`selective_scan.py`, `ss2d_core.py`), the network (`config.py`, `layers.py`, `init.py`,
`ss2d.py`, `model.py`, `checkpoint.py`), the kit (`testing/`) and the tools (`tools/`);
docs/layout.md draws the arrows between them.

The paper: Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024. Its SS2D block reads a
feature map along four routes (cross-scan), runs Mamba's selective scan (S6) on each, and sums
the four outputs back onto the grid (cross-merge).
"""

from vmamba_ref.checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from vmamba_ref.config import SS2DConfig, VMambaConfig
from vmamba_ref.contract import (
    BackendUnavailableError,
    ScanOps,
    available_backends,
    fastest_backend,
    get_ops,
)
from vmamba_ref.cross_scan import cross_merge, cross_scan, cross_scan_routes, route_positions
from vmamba_ref.model import (
    MODELS,
    VMamba,
    VMambaFeatures,
    VSSBlock,
    vmamba_base,
    vmamba_mini,
    vmamba_small,
    vmamba_tiny,
    vmamba_vanilla_base,
    vmamba_vanilla_small,
    vmamba_vanilla_tiny,
)
from vmamba_ref.selective_scan import (
    discretize_A,
    discretize_B,
    readout,
    recurrence_step,
    selective_scan,
    step_size,
)
from vmamba_ref.ss2d import SS2D
from vmamba_ref.ss2d_core import ss2d_core

# The oracle as a backend: what `get_ops("ref")` returns.
OPS = ScanOps("ref", cross_scan, cross_merge, selective_scan, ss2d_core)

__all__ = [
    "MODELS",
    "SS2D",
    "BackendUnavailableError",
    "CheckpointMismatchError",
    "LoadReport",
    "SS2DConfig",
    "VMamba",
    "VMambaConfig",
    "VMambaFeatures",
    "VSSBlock",
    "fastest_backend",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "vmamba_base",
    "vmamba_mini",
    "vmamba_small",
    "vmamba_tiny",
    "vmamba_vanilla_base",
    "vmamba_vanilla_small",
    "vmamba_vanilla_tiny",
    "available_backends",
    "cross_merge",
    "cross_scan",
    "cross_scan_routes",
    "discretize_A",
    "discretize_B",
    "get_ops",
    "readout",
    "recurrence_step",
    "route_positions",
    "selective_scan",
    "ss2d_core",
    "step_size",
]
