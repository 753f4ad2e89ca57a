"""Claims of vmamba_fast/triton that need no interpreter: its errors, that its kernels compile for
real GPUs (no GPU needed to compile), and, on a CUDA machine, that they match the reference.

The comparisons of every kernel with the reference on the CPU run in the interpreter, from
tests/test_triton_interpreter.py.
"""

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import vmamba_ref
from vmamba_ref.contract import BackendUnavailableError, is_available
from vmamba_ref.testing.cases import SS2DCoreCase
from vmamba_ref.testing.compare import assert_matches_reference
from vmamba_ref.testing.strategies import selective_scan_inputs, ss2d_core_inputs
from vmamba_ref.testing.tolerances import tolerance

pytestmark = pytest.mark.skipif(not is_available("triton"), reason="triton is not installed")

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def triton_module(name: str):
    return importlib.import_module(f"vmamba_fast.triton.{name}")


def triton_ops():
    import vmamba_fast

    return vmamba_fast.get_ops("triton")


def scan_args(b=1, k=2, d=3, l=5, n=2, dtype=torch.float32):
    return dict(
        u=torch.randn(b, k * d, l, dtype=dtype),
        delta=torch.randn(b, k * d, l, dtype=dtype),
        A=-torch.rand(k * d, n),
        B=torch.randn(b, k, n, l, dtype=dtype),
        C=torch.randn(b, k, n, l, dtype=dtype),
        D=torch.randn(k * d),
        delta_bias=torch.randn(k * d),
    )


def ss2d_args(b=1, d=3, h=2, w=3, n=2, dtype=torch.float32):
    return dict(
        x=torch.randn(b, d, h, w, dtype=dtype),
        delta=torch.randn(b, 4, d, h, w, dtype=dtype),
        A=-torch.rand(4 * d, n),
        B=torch.randn(b, 4, n, h, w, dtype=dtype),
        C=torch.randn(b, 4, n, h, w, dtype=dtype),
        D=torch.randn(4 * d),
        delta_bias=torch.randn(4 * d),
    )


def _bad(args, **changes):
    return {**args, **changes}


BAD_CALLS = [
    ("selective_scan", _bad(scan_args(), A=-torch.rand(5, 2))),  # A not (k*d, n)
    ("selective_scan", _bad(scan_args(), delta=torch.randn(1, 6, 5, dtype=torch.float64))),
    ("selective_scan", _bad(scan_args(), D=torch.tensor([1.0, float("nan"), 0, 0, 0, 0]))),
    ("selective_scan", _bad(scan_args(), B=torch.randn(1, 4, 2, 5))),  # k=4 does not divide 6
    ("selective_scan", _bad(scan_args(), u=torch.randn(6, 5))),
    ("selective_scan", _bad(scan_args(), C=torch.randn(1, 2, 2, 5).int())),
    ("ss2d_core", _bad(ss2d_args(), delta=torch.randn(1, 3, 3, 2, 3))),  # 3 routes
    ("ss2d_core", _bad(ss2d_args(), A=-torch.rand(3, 2))),  # A not (4*d, n)
    ("ss2d_core", _bad(ss2d_args(), B=torch.randn(1, 4, 2, 2, 3, dtype=torch.float16))),
    ("ss2d_core", _bad(ss2d_args(), delta_bias=torch.zeros(12).fill_(float("inf")))),
    ("cross_scan", {"x": torch.randn(2, 3, 4)}),
    ("cross_scan", {"x": torch.zeros(1, 2, 3, 4, dtype=torch.int64)}),
    ("cross_merge", {"ys": torch.randn(1, 3, 2, 3, 4)}),
]


@pytest.mark.parametrize(
    ("op", "args"), BAD_CALLS, ids=[f"{op}-{i}" for i, (op, _) in enumerate(BAD_CALLS)]
)
def test_argument_errors_are_the_references(op, args):
    with pytest.raises((TypeError, ValueError)) as expected:
        getattr(vmamba_ref, op)(**args)
    with pytest.raises(expected.type) as got:
        getattr(triton_ops(), op)(**args)
    assert str(got.value) == str(expected.value)


def interpreted() -> bool:
    return triton_module("common").is_interpreted()


@pytest.mark.skipif("interpreted()", reason="this process runs triton in interpreter mode")
@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("selective_scan", scan_args()),
        ("ss2d_core", ss2d_args()),
        ("cross_scan", {"x": torch.randn(1, 2, 3, 4)}),
        ("cross_merge", {"ys": torch.randn(1, 4, 2, 3, 4)}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_cpu_tensors_without_the_interpreter_raise_saying_what_to_do(op, args):
    with pytest.raises(BackendUnavailableError) as err:
        getattr(triton_ops(), op)(**args)
    message = str(err.value)
    for advice in ("CUDA tensors", "TRITON_INTERPRET=1", "backend='numba'", "backend='ref'"):
        assert advice in message


def test_missing_triton_raises_saying_what_to_install():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "from vmamba_ref.contract import BackendUnavailableError\n"
        "try:\n"
        "    import vmamba_fast.triton\n"
        "except BackendUnavailableError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'vmamba[triton]'" in result.stdout
    assert "backend='numba'" in result.stdout


OPERATORS = (
    "cross_scan",
    "cross_merge",
    "selective_scan_fwd",
    "selective_scan_bwd",
    "ss2d_core_fwd",
    "ss2d_core_bwd",
)


@pytest.mark.parametrize("name", OPERATORS)
def test_importing_the_backend_registers_the_cuda_kernels_of_the_vmamba_operators(name):
    """Each backend package registers its own device's kernels of the operators that
    vmamba_fast/ops.py declares: Triton the CUDA ones, Numba the CPU ones."""
    importlib.import_module("vmamba_fast.triton")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vmamba::{name}", "CUDA")
    importlib.import_module("vmamba_fast.numba")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vmamba::{name}", "CPU")


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("route_order", [False, True])
def test_default_tiles_are_powers_of_two_within_the_register_budget(route_order, inference):
    sel = triton_module("selective_scan")
    for d, n, l in [(96, 1, 3136), (768, 1, 49), (1, 1, 1), (5, 3, 17), (192, 16, 784)]:
        blocks = sel.scan_blocks(d, n, l, route_order, inference)
        block_n = 1 << (n - 1).bit_length()
        max_t, budget, _ = sel.tile_rule(block_n, l, route_order, inference)
        for size in (blocks.block_d, blocks.block_t, blocks.num_warps):
            assert size >= 1 and size & (size - 1) == 0
        assert sel.MIN_BLOCK_T <= blocks.block_t <= max_t
        assert blocks.block_d * block_n * blocks.block_t <= max(budget, block_n * blocks.block_t)
        # The backward keeps at most 4 values per thread for n = 1 and 8 for wider states.
        per_thread = blocks.block_d * block_n * blocks.block_t // (32 * sel.bwd_warps(blocks, n))
        assert per_thread <= (4 if block_n == 1 else 8)


# Compiling for a GPU needs Triton's NVIDIA backend (shipped in its wheel), not a GPU. It catches
# what the interpreter lets through: type errors in loops, unsupported ops, layout conversions.
COMPILE_VARIANTS = [
    # (kernel, pointer dtypes of the data, constexprs, compute capability)
    ("selective_scan", "_fwd_kernel", "bf16", dict(HAS_INITIAL_STATE=True, STORE_CKPT=True), 90),
    ("selective_scan", "_bwd_kernel", "bf16", dict(HAS_INITIAL_STATE=True, HAS_GLAST_STATE=True), 90),
    ("ss2d_core", "_fwd_kernel", "fp16", dict(STORE_CKPT=False), 90),
    ("ss2d_core", "_bwd_kernel", "fp32", {}, 90),
    ("ss2d_core", "_fwd_kernel", "fp64", dict(STORE_CKPT=True), 90),
    ("selective_scan", "_bwd_kernel", "fp64", dict(HAS_INITIAL_STATE=True, HAS_GLAST_STATE=False), 90),
    ("ss2d_core", "_fwd_kernel", "bf16", dict(STORE_CKPT=True), 80),
    ("ss2d_core", "_bwd_kernel", "bf16", {}, 80),
    ("cross_scan", "_cross_scan_kernel", "bf16", {}, 90),
    ("cross_scan", "_cross_merge_kernel", "fp16", {}, 90),
]  # fmt: skip


def gpu_compiler():
    """`compile(fn, signature, constexprs, arch)` for NVIDIA GPUs, or a reason to skip."""
    import triton

    if interpreted():
        return None, "this process runs triton in interpreter mode"
    try:
        from triton.backends import backends
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as err:
        return None, f"this triton has no compiler API to call: {err}"
    if "nvidia" not in backends:
        return None, "triton's NVIDIA backend is not installed"

    def compile_(fn, signature, constexprs, arch):
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        return triton.compile(source, target=GPUTarget("cuda", arch, 32))

    return compile_, None


@pytest.mark.slow
@pytest.mark.parametrize(("module", "kernel", "dtype", "flags", "arch"), COMPILE_VARIANTS)
def test_kernels_compile_for_nvidia_gpus(module, kernel, dtype, flags, arch):
    import triton.language as tl

    compile_, reason = gpu_compiler()
    if compile_ is None:
        pytest.skip(reason)
    fn = getattr(triton_module(module), kernel)
    acc = tl.float64 if dtype == "fp64" else tl.float32
    data = {"p_u", "p_delta", "p_B", "p_C", "p_gdelta", "p_x", "p_xs", "p_ys", "p_y"}
    if kernel == "_fwd_kernel":
        data.discard("p_y")  # y is in the computation dtype
    signature = {
        p.name: "constexpr"
        if p.is_constexpr
        else f"*{dtype if p.name in data else 'fp32'}"
        if p.name.startswith("p_")
        else "i32"
        for p in fn.params
    }
    if dtype == "fp64":
        signature = {k: "*fp64" if v.startswith("*") else v for k, v in signature.items()}
    if kernel.startswith("_cross"):
        constexprs = dict(BLOCK_D=16, BLOCK_T=64)
        if kernel == "_cross_merge_kernel":
            constexprs["ACC"] = acc
    else:
        constexprs = dict(
            BLOCK_D=8, BLOCK_N=1 if arch == 90 else 4, BLOCK_T=64, ACC=acc,
            DELTA_SOFTPLUS=True, HAS_D=True, HAS_DELTA_BIAS=True, **flags,
        )  # fmt: skip
    compiled = compile_(fn, signature, constexprs, arch)
    assert compiled.asm["cubin"]


# On a CUDA machine: the kernels against the reference at sizes the interpreter cannot reach.
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
ON_GPU = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@pytest.mark.gpu
@needs_gpu
@ON_GPU
@given(
    inputs=selective_scan_inputs(
        dtypes=GPU_DTYPES, routes=(1, 4), max_channels=40, max_length=200, max_state=16,
        requires_grad=True, device="cuda",
    )
)  # fmt: skip
def test_selective_scan_matches_reference_on_the_gpu(inputs):
    assert_matches_reference(
        triton_ops().selective_scan, inputs, op="selective_scan", check_grad=True
    )


@pytest.mark.gpu
@needs_gpu
@ON_GPU
@given(
    inputs=ss2d_core_inputs(
        dtypes=GPU_DTYPES,
        max_channels=40,
        max_side=17,
        max_state=4,
        requires_grad=True,
        device="cuda",
    )
)
def test_ss2d_core_matches_reference_on_the_gpu(inputs):
    assert_matches_reference(triton_ops().ss2d_core, inputs, op="ss2d_core", check_grad=True)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("side", "d"), [(56, 96), (7, 768)], ids=["stage1", "stage4"])
def test_vmamba_tiny_stage_shapes_match_reference_on_the_gpu(side, d, dtype):
    case = SS2DCoreCase(
        batch=2, channels=d, height=side, width=side, state=1, dtype=dtype, requires_grad=True,
        device="cuda",
    )  # fmt: skip
    assert_matches_reference(triton_ops().ss2d_core, case.build(), op="ss2d_core", check_grad=True)


@pytest.mark.gpu
@needs_gpu
def test_model_on_the_gpu_matches_the_reference_backend():
    """The model switches backend by name alone, through the vmamba:: operators: same weights,
    same logits, same gradients."""
    from vmamba_ref.model import vmamba_mini

    torch.manual_seed(0)
    ref = vmamba_mini(backend="ref").cuda().double()
    fast = vmamba_mini(backend="triton").cuda().double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32, device="cuda", dtype=torch.float64)
    y_ref, y_fast = ref(x), fast(x)
    tol = tolerance(torch.float64, backend="triton")
    torch.testing.assert_close(y_fast, y_ref, rtol=tol.rtol, atol=tol.atol)
    y_ref.sum().backward()
    y_fast.sum().backward()
    grad_tol = tolerance(torch.float64, grad=True, backend="triton")
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(
            p_fast.grad, p_ref.grad, rtol=grad_tol.rtol, atol=grad_tol.atol, msg=name
        )


def tune_script():
    spec = importlib.util.spec_from_file_location("tune_triton", ROOT / "benchmarks" / "tune_triton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tile_sweep_times_backward_tiles_with_the_warps_it_reports():
    """benchmarks/tune_triton.py: `bwd_warps` would raise the warps of a backward tile that
    holds more than 4 values per thread, so the sweep offers only tiles it leaves alone."""
    sel, tune = triton_module("selective_scan"), tune_script()
    backward = list(tune.tiles(1, backward=True))
    assert backward and all(sel.bwd_warps(bl, 1) == bl.num_warps for bl in backward)
    assert set(backward) < set(tune.tiles(1, backward=False))


@pytest.mark.skipif(CUDA, reason="checks the message given without a GPU")
def test_the_tile_sweep_without_a_gpu_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        tune_script().main(["--runs", "core_fwd"])
