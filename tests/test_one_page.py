"""The one-page VMamba (examples/vmamba_one_page.py, torch only) is the reference network: it has
the same state_dict keys, in the same order, and loads `vmamba_ref`'s weights strictly into the
same logits, in float32 and float64."""

import importlib.util
from pathlib import Path

import pytest
import torch

from vmamba_ref import vmamba_mini, vmamba_tiny
from vmamba_ref.testing import tolerance

PATH = Path(__file__).resolve().parents[1] / "examples" / "vmamba_one_page.py"


def load_one_page():
    spec = importlib.util.spec_from_file_location("vmamba_one_page", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


one_page = load_one_page()

CASES = {  # name: (reference constructor, one-page constructor, input shape)
    "vmamba_mini": (vmamba_mini, one_page.vmamba_mini, (2, 3, 32, 32)),
    "vmamba_tiny": (vmamba_tiny, one_page.vmamba_tiny, (1, 3, 64, 64)),
}


def test_imports_nothing_but_torch():
    imports = [line.split()[1] for line in PATH.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert {name.split(".")[0] for name in imports} == {"math", "collections", "torch"}


@pytest.mark.parametrize("name", CASES)
def test_same_state_dict_keys_and_shapes(name):
    reference, mine, _ = CASES[name]
    with torch.device("meta"):
        expected = {key: value.shape for key, value in reference().state_dict().items()}
        got = {key: value.shape for key, value in mine().state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
def test_same_logits_with_the_reference_weights(name, dtype):
    reference, mine, shape = CASES[name]
    torch.manual_seed(0)
    model = reference(backend="ref").eval().to(dtype)
    copy = mine().to(dtype)
    copy.load_state_dict(model.state_dict(), strict=True)
    copy.eval()
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        expected, got = model(x), copy(x)
    tol = tolerance(dtype, backend="ref")
    torch.testing.assert_close(got, expected, rtol=tol.rtol, atol=tol.atol)
