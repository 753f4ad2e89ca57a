"""Claims of `vmamba_fast/compat.py`: code written against the compiled extensions runs unchanged
on our kernels once `install()` has run.

- A consumer written as official VMamba's `csms6s.py` (an autograd.Function over
  `selective_scan_cuda_oflex.fwd` / `.bwd`) returns the reference's output and every gradient.
- A consumer written as mamba_ssm's `SelectiveScanFn` (z, return_last_state, `x[:, :, -1, 1::2]`)
  returns the float64 reference's output, last state and every gradient, for variable, grouped
  and constant B and C.
- `selective_scan_fn` does the same without installing anything.
- The dtype rules of the compiled modules hold; `uninstall()` restores `sys.modules` exactly;
  `install()` refuses to shadow a real module without `replace=True`; bad devices, shapes and
  dtypes raise errors that name the argument.

Shapes are small and awkward (l = 7, d not a power of two) and run on the CPU (Numba).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

from vmamba_fast import compat
from vmamba_ref import selective_scan
from vmamba_ref.testing import mismatch_report, tolerance
from vmamba_ref.testing.mismatch import Rule

OFLEX_CONSUMER = '''
"""Written as official VMamba's csms6s.py calls its extension."""
import torch
import selective_scan_cuda_oflex


class SelectiveScanOflex(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, oflex=True):
        ctx.delta_softplus = delta_softplus
        out, x, *rest = selective_scan_cuda_oflex.fwd(
            u, delta, A, B, C, D, delta_bias, delta_softplus, 1, oflex
        )
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
        return out

    @staticmethod
    def backward(ctx, dout, *args):
        u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = selective_scan_cuda_oflex.bwd(
            u, delta, A, B, C, D, delta_bias, dout, x, ctx.delta_softplus, 1
        )
        return du, ddelta, dA, dB, dC, dD, ddelta_bias, None, None
'''

MAMBA_CONSUMER = '''
"""Written as mamba_ssm's selective_scan_interface.py calls its extension."""
import torch
import selective_scan_cuda


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False):
        if B.dim() == 3:
            B = B.unsqueeze(1)
            ctx.squeeze_B = True
        if C.dim() == 3:
            C = C.unsqueeze(1)
            ctx.squeeze_C = True
        out, x, *rest = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.has_z = z is not None
        last_state = x[:, :, -1, 1::2]
        if not ctx.has_z:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
            return out if not return_last_state else (out, last_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
        out_z = rest[0]
        return out_z if not return_last_state else (out_z, last_state)

    @staticmethod
    def backward(ctx, dout, *args):
        if not ctx.has_z:
            u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
            z = None
            out = None
        else:
            u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = selective_scan_cuda.bwd(
            u, delta, A, B, C, D, z, delta_bias, dout, x, out, None, ctx.delta_softplus, False
        )
        dz = rest[0] if ctx.has_z else None
        dB = dB.squeeze(1) if getattr(ctx, "squeeze_B", False) else dB
        dC = dC.squeeze(1) if getattr(ctx, "squeeze_C", False) else dC
        return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz,
                ddelta_bias if delta_bias is not None else None, None, None)
'''


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def installed():
    """install() for one test; uninstall() after it, even when the test fails."""
    for name in compat.EXTENSION_NAMES:
        assert name not in sys.modules, f"{name} leaked from another test"
    modules = compat.install()
    yield modules
    compat.uninstall()


def import_consumer(tmp_path, name: str, source: str) -> types.ModuleType:
    """Write `source` to tmp_path and run it as module `name`, its imports resolved as any
    import is (the consumer itself is not put into sys.modules)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_matches(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, grad=False):
    report = mismatch_report(name, actual, expected, Rule(tolerance(dtype, grad=grad)))
    assert report is None, report


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def grads(output: torch.Tensor, inputs, cotangent: torch.Tensor):
    wanted = [t for t in inputs if t is not None]
    found = iter(torch.autograd.grad(output, wanted, cotangent.to(output.dtype)))
    return [None if t is None else next(found) for t in inputs]


def vmamba_inputs(b=2, k=2, d=3, l=7, n=4, seed=0, dtype=torch.float32):
    """u, delta (b, k*d, l); A (k*d, n); B, C (b, k, n, l); D, delta_bias (k*d,)."""
    g = torch.Generator().manual_seed(seed)
    kd = k * d
    return (
        torch.randn(b, kd, l, generator=g).to(dtype),  # u
        (0.5 * torch.randn(b, kd, l, generator=g)).to(dtype),  # delta
        -torch.exp(0.5 * torch.randn(kd, n, generator=g)),  # A
        torch.randn(b, k, n, l, generator=g).to(dtype),  # B
        torch.randn(b, k, n, l, generator=g).to(dtype),  # C
        torch.randn(kd, generator=g),  # D
        0.5 * torch.rand(kd, generator=g),  # delta_bias
    )


def bc(layout: str, b: int, d: int, n: int, l: int, g: torch.Generator) -> torch.Tensor:
    """B or C in one of mamba_ssm's layouts."""
    shape = {"constant": (d, n), "variable": (b, n, l), "grouped": (b, 3, n, l)}[layout]
    return torch.randn(*shape, generator=g)


def mamba_inputs(layout_B: str, layout_C: str, b=2, d=6, l=7, n=4, seed=0):
    """u, delta, z (b, d, l); A (d, n); B, C in the given layouts; D, delta_bias (d,)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(b, d, l, generator=g),
        delta=0.5 * torch.randn(b, d, l, generator=g),
        A=-torch.exp(0.5 * torch.randn(d, n, generator=g)),
        B=bc(layout_B, b, d, n, l, g),
        C=bc(layout_C, b, d, n, l, g),
        D=torch.randn(d, generator=g),
        z=torch.randn(b, d, l, generator=g),
        delta_bias=0.5 * torch.rand(d, generator=g),
    )


def to_groups(t: torch.Tensor, b: int, d: int, l: int) -> torch.Tensor:
    """A mamba_ssm B or C as one group per channel, (b, d, n, l), differentiably."""
    if t.dim() == 2:  # constant (d, n)
        return t[None, :, :, None].expand(b, d, t.shape[1], l)
    t = t if t.dim() == 4 else t[:, None]  # (b, g, n, l)
    return t.repeat_interleave(d // t.shape[1], dim=1)  # (b, d, n, l)


def mamba_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba_ssm's selective scan from the oracle plus the torch gate, in the inputs' dtype:
    (out_z or out, last state)."""
    b, d, l = u.shape
    y, last = selective_scan(
        u, delta, A, to_groups(B, b, d, l), to_groups(C, b, d, l), D, delta_bias, delta_softplus,
        return_last_state=True,
    )  # fmt: skip
    return (y if z is None else y * F.silu(z)), last


MAMBA_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# ------------------------------------------------------------------------------------------------
# Official VMamba: selective_scan_cuda_oflex
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_D", [True, False])
def test_oflex_consumer_matches_the_reference(installed, tmp_path, with_D):
    consumer = import_consumer(tmp_path, "consumer_oflex", OFLEX_CONSUMER)
    inputs = list(vmamba_inputs())
    if not with_D:
        inputs[5] = inputs[6] = None
    fast_in, ref_in = leaves(*inputs), leaves(*(None if t is None else t.double() for t in inputs))
    out = consumer.SelectiveScanOflex.apply(*fast_in, True, True)
    ref = selective_scan(*ref_in, True)
    assert out.dtype == torch.float32
    assert_matches("out", out, ref, torch.float32)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    for name, g, g_ref in zip(names, grads(out, fast_in, dout), grads(ref, ref_in, dout), strict=True):
        assert (g is None) == (g_ref is None), name
        if g is not None:
            assert_matches(f"d{name}", g, g_ref, torch.float32, grad=True)


def test_oflex_and_core_follow_the_compiled_dtype_rules(installed):
    import selective_scan_cuda_core
    import selective_scan_cuda_oflex

    u, delta, A, B, C, D, delta_bias = vmamba_inputs(dtype=torch.float16)
    b, kd, l = u.shape
    n = A.shape[1]
    out, x = selective_scan_cuda_oflex.fwd(u, delta, A, B, C, D, delta_bias, True, 1, True)
    assert out.dtype == torch.float32 and x.dtype == torch.float32
    assert x.shape == (b, kd, 1, 2 * n)
    out_low, _ = selective_scan_cuda_oflex.fwd(u, delta, A, B, C, D, delta_bias, True, 1, False)
    out_core, _ = selective_scan_cuda_core.fwd(u, delta, A, B, C, D, delta_bias, True, 1)
    assert out_low.dtype == out_core.dtype == torch.float16
    assert torch.equal(out_low, out_core) and torch.equal(out_low, out.half())
    result = selective_scan_cuda_oflex.bwd(u, delta, A, B, C, D, delta_bias, out, x, True, 1)
    inputs = (u, delta, A, B, C, D, delta_bias)
    assert [g.dtype for g in result] == [t.dtype for t in inputs]
    assert [g.shape for g in result] == [t.shape for t in inputs]


def test_x_holds_the_decay_product_and_the_last_state(installed):
    import selective_scan_cuda_oflex

    u, delta, A, B, C, D, delta_bias = vmamba_inputs()
    _, x = selective_scan_cuda_oflex.fwd(u, delta, A, B, C, D, delta_bias, True, 1, True)
    _, last = selective_scan(u.double(), delta.double(), A.double(), B.double(), C.double(),
                             D.double(), delta_bias.double(), True, return_last_state=True)  # fmt: skip
    assert_matches("x[:, :, -1, 1::2]", x[:, :, -1, 1::2], last, torch.float32)
    dt = F.softplus(delta.double() + delta_bias.double()[:, None])  # (b, k*d, l)
    decay = torch.exp(torch.einsum("bdl,dn->bdn", dt, A.double()))  # (b, k*d, n)
    assert_matches("x[:, :, -1, 0::2]", x[:, :, -1, 0::2], decay, torch.float32)


# ------------------------------------------------------------------------------------------------
# mamba_ssm: selective_scan_cuda
# ------------------------------------------------------------------------------------------------

LAYOUTS = [
    ("variable", "variable"),
    ("grouped", "grouped"),
    ("constant", "constant"),
    ("constant", "grouped"),
]


@pytest.mark.parametrize(("layout_B", "layout_C"), LAYOUTS)
def test_mamba_consumer_matches_the_float64_reference(installed, tmp_path, layout_B, layout_C):
    consumer = import_consumer(tmp_path, "consumer_mamba", MAMBA_CONSUMER)
    inputs = mamba_inputs(layout_B, layout_C)
    fast_in = leaves(*inputs.values())
    ref_in = leaves(*(t.double() for t in inputs.values()))
    out, last = consumer.SelectiveScanFn.apply(*fast_in, True, True)
    ref, ref_last = mamba_reference(*ref_in, True)
    assert out.dtype == torch.float32 and last.dtype == torch.float32
    assert_matches("out_z", out, ref, torch.float32)
    assert_matches("last_state", last, ref_last, torch.float32)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for name, g, g_ref in zip(MAMBA_NAMES, grads(out, fast_in, dout), grads(ref, ref_in, dout), strict=True):
        assert g.shape == inputs[name].shape, name
        assert_matches(f"d{name}", g, g_ref, torch.float32, grad=True)


def test_mamba_consumer_without_z_D_or_delta_bias(installed, tmp_path):
    consumer = import_consumer(tmp_path, "consumer_mamba", MAMBA_CONSUMER)
    inputs = mamba_inputs("variable", "variable")
    inputs.update(D=None, z=None, delta_bias=None)
    fast_in = leaves(*inputs.values())
    ref_in = leaves(*(None if t is None else t.double() for t in inputs.values()))
    out = consumer.SelectiveScanFn.apply(*fast_in, False, False)
    ref, _ = mamba_reference(*ref_in, False)
    assert_matches("out", out, ref, torch.float32)
    dout = torch.ones_like(out)
    for name, g, g_ref in zip(MAMBA_NAMES, grads(out, fast_in, dout), grads(ref, ref_in, dout), strict=True):
        assert (g is None) == (inputs[name] is None), name
        if g is not None:
            assert_matches(f"d{name}", g, g_ref, torch.float32, grad=True)


def test_mamba_module_returns_what_the_binding_returns(installed):
    import selective_scan_cuda

    a = mamba_inputs("constant", "variable")
    u, delta, A, B, C, D, z, delta_bias = a.values()
    out, x, out_z = selective_scan_cuda.fwd(u, delta, A, B, C[:, None], D, z, delta_bias, True)
    assert out.dtype == u.dtype and out_z.dtype == z.dtype and x.shape == (*u.shape[:2], 1, 2 * A.shape[1])
    assert len(selective_scan_cuda.fwd(u, delta, A, B, C, D, None, delta_bias, True)) == 2
    dz = torch.empty_like(z)
    result = selective_scan_cuda.bwd(
        u, delta, A, B, C, D, z, delta_bias, torch.ones_like(u), x, out, dz, True, True
    )
    assert len(result) == 9
    assert result[7] is dz  # written into the caller's buffer
    assert torch.equal(result[8], out_z)  # recompute_out_z
    assert result[3].shape == B.shape and result[4].shape == C.shape
    no_z = selective_scan_cuda.bwd(u, delta, A, B, C, None, None, None, torch.ones_like(u), x, None, None, True, False)
    assert len(no_z) == 7 and no_z[5] is None and no_z[6] is None


# ------------------------------------------------------------------------------------------------
# selective_scan_fn
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [None, "ref", "torch"])
def test_selective_scan_fn_matches_the_float64_reference(backend):
    inputs = mamba_inputs("grouped", "grouped", seed=2)
    fast_in = leaves(*inputs.values())
    ref_in = leaves(*(t.double() for t in inputs.values()))
    out, last = compat.selective_scan_fn(*fast_in, True, True, backend=backend)
    ref, ref_last = mamba_reference(*ref_in, True)
    assert_matches("out_z", out, ref, torch.float32)
    assert_matches("last_state", last, ref_last, torch.float32)
    assert not last.requires_grad
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    for name, g, g_ref in zip(MAMBA_NAMES, grads(out, fast_in, dout), grads(ref, ref_in, dout), strict=True):
        assert_matches(f"d{name}", g, g_ref, torch.float32, grad=True)


def test_selective_scan_fn_half_inputs_keep_their_dtypes():
    a = mamba_inputs("variable", "variable")
    for name in ("u", "delta", "B", "C", "z"):
        a[name] = a[name].half()
    fast_in = leaves(*a.values())
    out = compat.selective_scan_fn(*fast_in, True)
    assert out.dtype == torch.float16
    found = grads(out, fast_in, torch.ones_like(out))
    assert [g.dtype for g in found] == [t.dtype for t in a.values()]


# ------------------------------------------------------------------------------------------------
# install / uninstall
# ------------------------------------------------------------------------------------------------


def test_install_logs_and_uninstall_restores_sys_modules(caplog):
    before = {name: sys.modules.get(name) for name in compat.EXTENSION_NAMES}
    with caplog.at_level(logging.INFO, logger="vmamba_fast.compat"):
        modules = compat.install(backend="numba")
    try:
        for name in compat.EXTENSION_NAMES:
            assert sys.modules[name] is modules[name]
            assert importlib.import_module(name) is modules[name]
            assert name in caplog.text
        assert "numba" in caplog.text
    finally:
        assert sorted(compat.uninstall()) == sorted(compat.EXTENSION_NAMES)
    assert {name: sys.modules.get(name) for name in compat.EXTENSION_NAMES} == before
    assert all(name not in sys.modules for name in compat.EXTENSION_NAMES)


def test_install_refuses_an_imported_module_and_replace_puts_it_back(monkeypatch, caplog):
    fake = types.ModuleType(compat.OFLEX)
    monkeypatch.setitem(sys.modules, compat.OFLEX, fake)
    with pytest.raises(compat.ShadowingError, match=f"`{compat.OFLEX}` is already imported"):
        compat.install()
    assert sys.modules[compat.OFLEX] is fake
    assert all(name not in sys.modules for name in (compat.CORE, compat.MAMBA))  # nothing changed
    with caplog.at_level(logging.WARNING, logger="vmamba_fast.compat"):
        compat.install(replace=True)
    try:
        assert isinstance(sys.modules[compat.OFLEX], compat.OflexModule)
        assert "replacing" in caplog.text and compat.OFLEX in caplog.text
    finally:
        compat.uninstall()
    assert sys.modules[compat.OFLEX] is fake
    assert all(name not in sys.modules for name in (compat.CORE, compat.MAMBA))


def test_install_refuses_an_importable_module(tmp_path, monkeypatch):
    (tmp_path / f"{compat.CORE}.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(compat.ShadowingError, match="is importable from .*selective_scan_cuda_core.py"):
        compat.install(names=[compat.CORE])
    assert compat.CORE not in sys.modules
    compat.install(names=[compat.CORE], replace=True)
    assert isinstance(importlib.import_module(compat.CORE), compat.CoreModule)
    compat.uninstall()
    assert compat.CORE not in sys.modules


def test_install_rejects_unknown_names_and_backends():
    with pytest.raises(ValueError, match="no stand-in for"):
        compat.install(names=["selective_scan_cuda_typo"])
    with pytest.raises(ValueError, match="backend must be one of"):
        compat.install(backend="cuda")
    assert all(name not in sys.modules for name in compat.EXTENSION_NAMES)


# ------------------------------------------------------------------------------------------------
# Errors that name the argument
# ------------------------------------------------------------------------------------------------


def test_a_tensor_on_another_device_is_named(installed):
    import selective_scan_cuda_oflex

    u, delta, A, B, C, D, delta_bias = vmamba_inputs()
    with pytest.raises(ValueError, match="`B` is on meta"):
        selective_scan_cuda_oflex.fwd(u, delta, A, B.to("meta"), C, D, delta_bias, True, 1, True)
    a = mamba_inputs("variable", "variable")
    a["z"] = a["z"].to("meta")
    with pytest.raises(ValueError, match="`z` is on meta"):
        compat.selective_scan_fn(*a.values())


def test_bad_shapes_and_dtypes_are_named():
    a = mamba_inputs("variable", "variable")
    with pytest.raises(ValueError, match=r"`B` must have shape \(b=2, n=4, l=7\)"):
        compat.selective_scan_fn(**{**a, "B": a["B"][:, :, :5]})
    with pytest.raises(ValueError, match="`C` must have shape .*constant"):
        compat.selective_scan_fn(**{**a, "C": torch.zeros(5)})
    with pytest.raises(ValueError, match="group count g=4 .* must divide"):
        compat.selective_scan_fn(**{**a, "B": torch.zeros(2, 4, 4, 7), "C": torch.zeros(2, 4, 4, 7)})
    with pytest.raises(TypeError, match="`A` is complex"):
        compat.selective_scan_fn(**{**a, "A": a["A"].to(torch.complex64)})
    with pytest.raises(TypeError, match="`u` must have dtype"):
        compat.selective_scan_fn(**{**a, "u": a["u"].long()})
    with pytest.raises(ValueError, match="`z` must have shape"):
        compat.selective_scan_fn(**{**a, "z": a["z"][:, :3]})
