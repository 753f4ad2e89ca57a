"""Claims of vmamba_ref/testing/tolerances.py: it is the one place a test's tolerance comes from,
and it has an entry for every backend and floating dtype.

The first claim is checked on the source: every file under tests/ is parsed, and a numeric
literal given as a tolerance (`rtol=1e-5`, `atol=0`, a positional tolerance of `allclose`, a
`pytest.approx` bound, a module constant named `..._ATOL`) fails the test with its file and line.
Exact comparisons (`torch.equal`, `== 0`) are not tolerances and pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from vmamba_ref.contract import BACKENDS
from vmamba_ref.testing.cases import FLOAT_DTYPES
from vmamba_ref.testing.tolerances import ANY_BACKEND, TOLERANCES, Tolerance, tolerance

TESTS = Path(__file__).parent
TOLERANCE_KEYWORDS = {"rtol", "atol", "rel_tol", "abs_tol"}  # torch, numpy, math.isclose
APPROX_KEYWORDS = {"rel", "abs"}  # pytest.approx
FIRST_POSITIONAL_TOLERANCE = {  # function name -> index of its first positional tolerance
    "allclose": 2,  # torch.allclose / numpy.allclose (a, b, rtol, atol)
    "isclose": 2,  # torch.isclose / numpy.isclose / math.isclose
    "assert_allclose": 2,  # numpy.testing.assert_allclose (actual, desired, rtol, atol)
    "assert_close": 2,  # torch.testing.assert_close takes them by keyword; kept for safety
    "approx": 1,  # pytest.approx (expected, rel, abs)
}


def is_number(node: ast.AST) -> bool:
    """A numeric literal: `1e-5`, `-1e-5`, `0`, `2 * 1e-3`."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return is_number(node.operand)
    if isinstance(node, ast.BinOp):
        return is_number(node.left) and is_number(node.right)
    return False


def called_name(call: ast.Call) -> str:
    """The last part of the called name: `assert_close` for `torch.testing.assert_close(...)`."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def is_tolerance_name(name: str) -> bool:
    """`ATOL`, `ONNX_ATOL`, `rtol`, `GRAD_TOL`: a name that says it holds a tolerance."""
    last = name.lower().rsplit("_", 1)[-1]
    return last in {"tol", "rtol", "atol", "tolerance"}


def literal_tolerances(source: str, filename: str = "<string>") -> list[str]:
    """`file:line: what` for each tolerance written as a numeric literal in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = called_name(node)
            keywords = TOLERANCE_KEYWORDS | (APPROX_KEYWORDS if name == "approx" else set())
            for kw in node.keywords:
                if kw.arg in keywords and is_number(kw.value):
                    found.append(f"{where}: {name}(..., {kw.arg}={ast.unparse(kw.value)})")
            first = FIRST_POSITIONAL_TOLERANCE.get(name)
            if first is not None:
                for arg in node.args[first:]:
                    if is_number(arg):
                        found.append(f"{where}: {name}(...) with positional tolerance {ast.unparse(arg)}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and is_tolerance_name(target.id) and is_number(node.value):
                    found.append(f"{where}: {target.id} = {ast.unparse(node.value)}")
    return found


def test_no_test_writes_a_tolerance_inline():
    """Every tolerance a test uses comes from vmamba_ref/testing/tolerances.py."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        found += literal_tolerances(path.read_text(), str(path.relative_to(TESTS.parent)))
    assert not found, (
        "tolerances written inline; read them from vmamba_ref.testing.tolerances "
        "(tolerance(dtype, backend=...) or a named entry):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "planted",
    [
        "torch.testing.assert_close(a, b, atol=1e-5)",
        "torch.testing.assert_close(a, b, rtol=0, atol=tol.atol)",
        "torch.allclose(a, b, 1e-5)",
        "torch.isclose(a, b, atol=-1e-5)",
        "np.testing.assert_allclose(a, b, 2 * 1e-3)",
        "assert math.isclose(a, b, rel_tol=1e-9)",
        "assert a == pytest.approx(b, 1e-6)",
        "assert a == pytest.approx(b, abs=1e-6)",
        "ONNX_ATOL = 1e-3",
        "rtol: float = 1e-4",
    ],
)
def test_the_check_finds_a_planted_tolerance(planted):
    assert len(literal_tolerances(planted)) == 1, planted


@pytest.mark.parametrize(
    "clean",
    [
        "torch.testing.assert_close(a, b, rtol=tol.rtol, atol=tol.atol)",
        "torch.testing.assert_close(a, b)",
        "assert torch.equal(a, b) and (a - b).abs().max() == 0",
        "torch.allclose(a, b)",
        "assert a == pytest.approx(b)",
        "ONNX_ATOL = ONNX_LOGITS.atol",
        "flush = 0.0",
    ],
)
def test_the_check_passes_table_lookups_and_exact_comparisons(clean):
    assert literal_tolerances(clean) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_the_table_covers_every_backend_and_float_dtype(backend, dtype):
    tol = TOLERANCES[backend, dtype]
    assert isinstance(tol, Tolerance) and tol.rtol >= 0 and tol.atol >= 0
    assert tolerance(dtype, backend=backend) == tol
    grad = tolerance(dtype, grad=True, backend=backend)
    assert grad.rtol >= tol.rtol and grad.atol >= tol.atol  # gradients sum over l and batch


def test_the_default_row_is_a_kernel_from_no_named_backend():
    assert ANY_BACKEND not in BACKENDS
    for dtype in FLOAT_DTYPES:
        assert tolerance(dtype) == TOLERANCES[ANY_BACKEND, dtype]


def test_an_unknown_backend_or_dtype_names_what_the_table_holds():
    with pytest.raises(KeyError, match="numba"):
        tolerance(torch.float32, backend="cuda")
    with pytest.raises(KeyError, match="float32"):
        tolerance(torch.int32, backend="numba")
