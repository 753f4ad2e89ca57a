"""Regression: the NaN fill must not break `with torch.device("meta")` blocks used later in the
same process (torch caches the factory list on first use)."""

import subprocess
import sys

SCRIPT = """
import torch
from vmamba_ref.testing.nan_buffers import nan_filled_empty
with nan_filled_empty():
    with torch.device("meta"):
        torch.zeros(1)
with torch.device("meta"):
    assert torch.empty(2).is_meta, "torch.empty escaped the meta device"
"""


def test_meta_device_blocks_survive_the_nan_fill():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
