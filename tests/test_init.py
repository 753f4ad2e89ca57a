"""Claims of vmamba_ref/init.py: each of the paper's three initializations has the spec's
distribution, and the network-wide pass sets linear and norm layers as the official code does."""

import math

import pytest
import torch
import torch.nn.functional as F

from vmamba_ref import SS2D, SS2DConfig, vmamba_mini


def ss2d(init, c=64, n=4, seed=0):
    torch.manual_seed(seed)
    return SS2D(c, SS2DConfig(d_state=n, init=init))


def test_mamba_init():
    op = ss2d("mamba")
    A = -torch.exp(op.A_logs)  # (k*d, n)
    assert torch.allclose(A, -torch.arange(1, 5, dtype=torch.float32).expand_as(A))
    assert torch.equal(op.Ds, torch.ones_like(op.Ds))
    dt = F.softplus(op.dt_projs_bias.double())  # (k, d)
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)
    # log-uniform: log(dt) is uniform on [log 1e-3, log 0.1], mean at the midpoint, std range/sqrt(12)
    log_dt = dt.log()
    lo, hi = math.log(1e-3), math.log(0.1)
    assert abs(log_dt.mean().item() - (lo + hi) / 2) < 0.15
    assert abs(log_dt.std().item() - (hi - lo) / math.sqrt(12)) < 0.15
    bound = op.r**-0.5
    assert op.dt_projs_weight.abs().max() <= bound and op.dt_projs_weight.abs().max() > 0.9 * bound
    assert op.x_proj_weight.abs().max() <= 1 / math.sqrt(op.d)


def test_random_init():
    op = ss2d("random", c=256)
    assert abs(op.A_logs.mean().item()) < 0.05 and abs(op.A_logs.std().item() - 1) < 0.05
    assert abs(op.dt_projs_weight.std().item() - 0.1) < 0.01
    assert abs(op.dt_projs_bias.std().item() - 0.1) < 0.01
    assert torch.equal(op.Ds, torch.ones_like(op.Ds))


def test_zero_init():
    op = ss2d("zero")
    assert torch.equal(op.A_logs, torch.zeros_like(op.A_logs))  # A = -1
    for p in (op.dt_projs_weight, op.dt_projs_bias):
        assert p.min() >= 0 and p.max() < 0.1 and p.std() > 0.01
    assert torch.equal(op.Ds, torch.ones_like(op.Ds))


def test_network_init_of_linear_and_norm_layers():
    torch.manual_seed(0)
    model = vmamba_mini()
    fc1 = model.layers[3].blocks[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002
    assert torch.equal(fc1.bias, torch.zeros_like(fc1.bias))
    norm = model.layers[0].blocks[0].norm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


@pytest.mark.parametrize("init", ["mamba", "random", "zero"])
def test_every_init_trains_the_same_network(init):
    model = vmamba_mini(ssm=SS2DConfig(init=init), in_chans=1)
    out = model(torch.randn(2, 1, 32, 32))
    out.sum().backward()
    assert torch.isfinite(out).all()


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match=r"SS2DConfig.init must be one of \['mamba', 'random', 'zero'\]"):
        SS2DConfig(init="v0")
