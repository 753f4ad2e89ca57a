"""The cases of tests/test_nonfinite.py on the Triton backend, through Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so this file runs in its own pytest
process, started by tests/test_nonfinite.py; its name keeps the normal run from collecting it.
By hand:

    TRITON_INTERPRET=1 python -m pytest tests/triton_interpret/interpreted_nonfinite.py
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for test_nonfinite

import pytest  # noqa: E402
import test_nonfinite as cases  # noqa: E402

from vmamba_fast.triton.common import is_interpreted  # noqa: E402
from vmamba_fast.triton.selective_scan import selective_scan  # noqa: E402

if not is_interpreted():
    pytest.skip(
        "triton was imported without TRITON_INTERPRET=1; run this file through "
        "tests/test_nonfinite.py",
        allow_module_level=True,
    )


@pytest.mark.parametrize("injection", cases.INJECTIONS, ids=cases.IDS)
def test_triton_propagates_nan_and_inf_like_the_reference(injection):
    cases.check_backend(selective_scan, "triton", injection)
