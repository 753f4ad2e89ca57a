"""Claims of vmamba_ref/contract.py about parameters and the backend loader.

- A non-finite parameter always raises, and off the CPU an unchanged parameter is read once, not
  at every call (each read waits for the GPU). The cache is off on the CPU, so these tests switch
  it on for CPU tensors through `_cacheable`; one runs the real thing on a CUDA GPU when there is
  one.
- `torch.compile(fullgraph=True)` traces `vmamba_fast`'s public functions through `get_ops` in a
  fresh process that never loaded the backend (dynamo cannot trace `importlib`), and a missing
  dependency still raises BackendUnavailableError, compiled or not.
"""

import gc
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vmamba_fast
from vmamba_ref import contract

ROOT = Path(__file__).resolve().parents[1]
FRESH_PROCESS_TIMEOUT = 300  # seconds: importing torch, dynamo's trace, Numba's JIT


@pytest.fixture
def cache_on_cpu(monkeypatch):
    monkeypatch.setattr(contract, "_cacheable", lambda x: not x.is_inference())
    monkeypatch.setattr(contract, "_found_finite", {})
    return contract._found_finite


def count_reads(monkeypatch) -> list[int]:
    reads = []
    all_finite = contract._all_finite
    monkeypatch.setattr(contract, "_all_finite", lambda x: reads.append(1) or all_finite(x))
    return reads


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_all_finite_agrees_with_torch(dtype, bad):
    """The NumPy shortcut for float32/float64 CPU tensors answers what torch.isfinite answers,
    for contiguous and strided tensors, leaves that require grad, and a bad value anywhere."""
    for where in (0, 7, 23):
        x = torch.randn(4, 6, dtype=torch.float64).to(dtype)
        if bad is not None:
            x.view(-1)[where] = bad
        for t in (x, x.t(), x[:, ::2], torch.nn.Parameter(x.clone())):
            assert contract._all_finite(t) == bool(torch.isfinite(t).all())


def test_on_the_cpu_every_call_reads_the_tensor(monkeypatch):
    reads = count_reads(monkeypatch)
    A = torch.nn.Parameter(-torch.rand(4, 2))
    for _ in range(3):
        contract.check_finite("f", "A", A)
    assert len(reads) == 3


def test_an_unchanged_parameter_is_read_once(cache_on_cpu, monkeypatch):
    reads = count_reads(monkeypatch)
    A = torch.nn.Parameter(-torch.rand(4, 2))
    for _ in range(3):
        contract.check_finite("f", "A", A)
    assert len(reads) == 1


@pytest.mark.parametrize(
    "write",
    [
        lambda p: p.fill_(float("nan")),  # as nn.init and optimizers write, under no_grad
        lambda p: p.copy_(torch.full_like(p, float("inf"))),  # as load_state_dict writes
        lambda p: p[1].fill_(float("nan")),  # through a view: views share the version counter
    ],
    ids=["fill", "copy", "view"],
)
def test_an_in_place_write_is_checked_again(cache_on_cpu, write):
    A = torch.nn.Parameter(-torch.rand(4, 2))
    contract.check_finite("f", "A", A)
    with torch.no_grad():
        write(A)
    with pytest.raises(ValueError, match="f: `A` must be finite"):
        contract.check_finite("f", "A", A)


def test_a_non_finite_tensor_is_never_remembered(cache_on_cpu):
    A = torch.tensor([1.0, float("nan")])
    for _ in range(2):
        with pytest.raises(ValueError, match=r"found nan at index \(1,\)"):
            contract.check_finite("f", "A", A)
    assert not cache_on_cpu


def test_a_dead_tensor_leaves_the_cache_and_a_new_one_is_read(cache_on_cpu, monkeypatch):
    A = torch.nn.Parameter(-torch.rand(4, 2))
    contract.check_finite("f", "A", A)
    assert len(cache_on_cpu) == 1
    del A
    gc.collect()
    assert not cache_on_cpu
    reads = count_reads(monkeypatch)
    contract.check_finite("f", "A", torch.nn.Parameter(-torch.rand(4, 2)))
    assert len(reads) == 1


def test_inference_tensors_are_not_cached(cache_on_cpu):
    with torch.inference_mode():
        A = -torch.rand(4, 2)
    contract.check_finite("f", "A", A)
    assert not cache_on_cpu


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_a_parameter_is_read_once_until_written(monkeypatch):
    reads = count_reads(monkeypatch)
    A = torch.nn.Parameter(-torch.rand(4, 2, device="cuda"))
    for _ in range(3):
        contract.check_finite("f", "A", A)
    assert len(reads) == 1
    with torch.no_grad():
        A[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`A` must be finite"):
        contract.check_finite("f", "A", A)


# Run with `python -c CODE backend` in a new interpreter: imports vmamba_fast and nothing of the
# backend, compiles all four public functions with fullgraph=True before any eager call, then
# compares with the eager result.
COMPILE_FIRST = """
import sys

import torch

import vmamba_fast
from vmamba_ref.contract import BACKEND_MODULES

backend = sys.argv[1]
module, package = BACKEND_MODULES[backend]
loaded = [m for m in (module, package) if m in sys.modules]
assert not loaded, f"imported before the backend was used: {loaded}"
torch.manual_seed(0)
b, d, h, w, n = 1, 2, 3, 4, 2
x, delta = torch.randn(b, d, h, w), torch.randn(b, 4, d, h, w)
A, B, C = -torch.rand(4 * d, n), torch.randn(b, 4, n, h, w), torch.randn(b, 4, n, h, w)


def f(x, delta, A, B, C):
    xs = vmamba_fast.cross_scan(x, backend=backend).flatten(1, 2)  # (b, 4*d, l)
    ys = vmamba_fast.selective_scan(
        xs, delta.flatten(3).flatten(1, 2), A, B.flatten(3), C.flatten(3), backend=backend
    )  # (b, 4*d, l)
    core = vmamba_fast.ss2d_core(x, delta, A, B, C, backend=backend)  # (b, d, h, w)
    return vmamba_fast.cross_merge(ys.view(b, 4, d, h, w), backend=backend) + core


compiled = torch.compile(f, backend="eager", fullgraph=True)(x, delta, A, B, C)
assert module in sys.modules
torch.testing.assert_close(compiled, f(x, delta, A, B, C))
"""


def test_every_fast_backend_has_its_import_statement():
    """`vmamba_fast._import_backend` spells out `BACKEND_MODULES` as import statements (dynamo
    runs those); "ref" needs none, `vmamba_ref` being imported with the contract."""
    source = inspect.getsource(vmamba_fast._import_backend)
    for backend, (module, _) in contract.BACKEND_MODULES.items():
        if module.startswith("vmamba_fast"):
            assert f'backend == "{backend}":\n        import {module}  #' in source, backend
        else:
            assert module == "vmamba_ref" and module in sys.modules


def test_importing_the_packages_leaves_the_compiler_unloaded():
    """`INSTALLED` is a dict so that no decorator imports dynamo: `import vmamba_ref` (every CLI
    start, every worker process) stays about two seconds shorter than with dynamo loaded."""
    code = (
        "import sys, vmamba_ref, vmamba_fast, vmamba_ref.tools.cli\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('torch._dynamo'))\n"
        "assert not loaded, loaded[:5]\n"
        "assert vmamba_ref.contract.INSTALLED == {p: vmamba_ref.contract.importlib.util.find_spec(p) is not None "
        "for p in vmamba_ref.contract.INSTALLED}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_public_functions_compile_in_a_process_that_never_loaded_the_backend(backend):
    if not contract.is_available(backend):
        pytest.skip(f"{backend} is not installed")
    try:
        result = subprocess.run(
            [sys.executable, "-c", COMPILE_FIRST, backend],
            cwd=ROOT, capture_output=True, text=True, timeout=FRESH_PROCESS_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the fresh process took over {FRESH_PROCESS_TIMEOUT} s:\n{e.stderr}")
    assert result.returncode == 0, result.stderr[-5000:]


def test_a_missing_dependency_raises_the_same_error_when_compiled(monkeypatch):
    """Eager and compiled with graph breaks allowed: BackendUnavailableError. With fullgraph=True,
    dynamo reports the exception the traced code raised, and its message says what to install."""
    monkeypatch.setattr(contract, "_LOADED", {})  # a process that has loaded no backend yet
    monkeypatch.setattr(contract, "INSTALLED", dict.fromkeys(contract.INSTALLED, False))
    torch._dynamo.reset()  # no compiled code from an earlier test, traced with numba installed

    def f(x):
        return vmamba_fast.cross_scan(x, backend="numba")

    x = torch.randn(1, 2, 3, 3)
    install = r"pip install 'vmamba\[numba\]'"
    for run in (f, torch.compile(f, backend="eager")):
        with pytest.raises(contract.BackendUnavailableError, match=install):
            run(x)
    with pytest.raises(Exception, match=install):
        torch.compile(f, backend="eager", fullgraph=True)(x)
