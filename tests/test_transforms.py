"""torch.func transforms and forward-mode AD through the network, on every CPU backend.

The reference and the torch backend are plain PyTorch: grad, vmap, jvp and per-sample
gradients (vmap over grad) of `vmamba_mini` agree with autograd. Their argument checks must not
read the storage of a transform's wrapped tensors (`vmamba_ref.contract.check_finite`). The
Numba backend's operators have a reverse-mode formula only: forward-mode AD and differentiation
inside torch.func raise `UnsupportedTransformError`, naming the operator and the alternative,
never a missing tangent; vmap without a gradient runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jvp, vmap

from vmamba_fast.ops import UnsupportedTransformError
from vmamba_ref import vmamba_mini
from vmamba_ref.testing.tolerances import tolerance

PLAIN = ["ref", "torch"]
SIDE = 32  # vmamba_mini's smallest input: four stages of downsampling


def _model(backend: str):
    torch.manual_seed(0)
    model = vmamba_mini(backend=backend).double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(2, 3, SIDE, SIDE, dtype=torch.float64)
    return model, params, x


def _loss(model):
    def loss(params, x):
        return functional_call(model, params, (x,)).square().sum()

    return loss


def _close(actual, expected):
    tol = tolerance(torch.float64, grad=True)
    torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("backend", PLAIN)
def test_func_grad_matches_autograd(backend):
    model, params, x = _model(backend)
    grads = grad(_loss(model))(params, x)
    live = dict(model.named_parameters())
    expected = torch.autograd.grad(_loss(model)(live, x), list(live.values()))
    for name, e in zip(live, expected, strict=True):
        _close(grads[name], e)


@pytest.mark.parametrize("backend", PLAIN)
def test_func_vmap_matches_the_batched_call(backend):
    model, params, x = _model(backend)
    per_image = vmap(lambda xi: functional_call(model, params, (xi[None],))[0])(x)
    tol = tolerance(torch.float64)
    torch.testing.assert_close(per_image, model(x).detach(), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("backend", PLAIN)
def test_func_jvp_matches_the_autograd_directional_derivative(backend):
    model, params, x = _model(backend)
    tangent = torch.randn_like(x)
    _, jv = jvp(lambda xx: _loss(model)(params, xx), (x,), (tangent,))
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(_loss(model)(params, xg), xg)
    _close(jv, (gx * tangent).sum())


@pytest.mark.parametrize("backend", PLAIN)
def test_per_sample_gradients_match_autograd_per_sample(backend):
    model, params, x = _model(backend)
    per_sample = vmap(grad(_loss(model)), in_dims=(None, 0))(params, x[:, None])
    live = dict(model.named_parameters())
    for i in range(x.shape[0]):
        expected = torch.autograd.grad(_loss(model)(live, x[i : i + 1]), list(live.values()))
        for name, e in zip(live, expected, strict=True):
            _close(per_sample[name][i], e)


def test_numba_vmap_without_gradient_runs():
    model, params, x = _model("numba")
    per_image = vmap(lambda xi: functional_call(model, params, (xi[None],))[0])(x)
    tol = tolerance(torch.float64, backend="numba")
    torch.testing.assert_close(per_image, model(x).detach(), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("transform", ["grad", "jvp", "per-sample"])
def test_numba_func_transforms_raise_naming_the_op_and_the_alternative(transform):
    model, params, x = _model("numba")
    loss = _loss(model)
    run = {
        "grad": lambda: grad(loss)(params, x),
        "jvp": lambda: jvp(lambda xx: loss(params, xx), (x,), (torch.ones_like(x),)),
        "per-sample": lambda: vmap(grad(loss), in_dims=(None, 0))(params, x[:, None]),
    }[transform]
    with pytest.raises(UnsupportedTransformError, match=r"vmamba::\w+.*backend='torch'"):
        run()


@pytest.mark.parametrize("op", ["selective_scan", "cross_scan"])
def test_numba_forward_ad_raises_rather_than_dropping_the_tangent(op):
    from vmamba_fast.numba import cross_scan, selective_scan

    torch.manual_seed(0)
    b, kd, l, n = 1, 4, 5, 2
    u = torch.randn(b, kd, l)
    with fwAD.dual_level():
        if op == "cross_scan":
            call = lambda: cross_scan(fwAD.make_dual(u.reshape(1, 4, 1, 5), torch.ones(1, 4, 1, 5)))  # noqa: E731
        else:
            args = (torch.randn(b, kd, l), -torch.rand(kd, n), torch.randn(b, 4, n, l), torch.randn(b, 4, n, l))
            call = lambda: selective_scan(fwAD.make_dual(u, torch.ones_like(u)), *args)  # noqa: E731
        with pytest.raises(UnsupportedTransformError, match=rf"vmamba::{op}\w*.*forward-mode"):
            call()
