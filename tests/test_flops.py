"""Claims of vmamba_ref/tools/flops.py: the released models' FLOPs reproduce the VMamba authors' numbers
exactly, every category agrees with a closed-form count written from the architecture, the count
does not depend on the backend, and counting leaves the model as it was."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vmamba_ref import contract
from vmamba_ref.config import VMambaConfig
from vmamba_ref.contract import BACKENDS, BackendUnavailableError, get_ops, scan_flops
from vmamba_ref.model import vmamba_mini
from vmamba_ref.ss2d import SS2D
from vmamba_ref.tools.cli import main
from vmamba_ref.tools.flops import (
    CATEGORIES,
    build_meta_model,
    count_flops,
    count_model_flops,
    einsum_flops,
    format_table,
)

# Spec section 9: the official fvcore count at 1x3x224x224, head included.
SPEC_GFLOPS = {"vmamba_tiny": 4.905609984, "vmamba_small": 8.71577472, "vmamba_base": 15.358944256}
# Spec section 9, VMamba-T by operator, in G rounded to 4 places. The official x_proj/dt_proj are
# grouped conv1d, so the official "conv" is conv + matmul here (SS2D runs them as matmuls).
SPEC_TINY_BY_OP = {"conv": 4.8119, "layer_norm": 0.0297, "scan": 0.0632, "linear": 0.0008}


def closed_form(config: VMambaConfig, b: int, height: int, width: int) -> dict[str, int]:
    """The count by category, written out from the architecture (paper section 3 and table 1; the authors' fvcore counting),
    independently of any tracing: every conv is b * out * in/groups * kh * kw * positions."""
    out = dict.fromkeys(CATEGORIES, 0)

    def ln(c, positions):
        out["layer_norm"] += 5 * b * c * positions

    def conv(c_out, c_in_per_group, kernel, positions):
        out["conv"] += b * c_out * c_in_per_group * kernel * kernel * positions

    def half(s):  # 3x3, stride 2, padding 1; and the zero-padded 2x2 patch merging
        return (s + 1) // 2

    c0 = config.dims[0]
    if config.stem == "conv2":
        h, w = half(height), half(width)
        conv(c0 // 2, config.in_chans, 3, h * w)
        ln(c0 // 2, h * w)
        h, w = half(h), half(w)
        conv(c0, c0 // 2, 3, h * w)
        ln(c0, h * w)
    else:
        h, w = height // 4, width // 4
        conv(c0, config.in_chans, 4, h * w)
        ln(c0, h * w)
    ssm = config.ssm
    for i, (depth, c) in enumerate(zip(config.depths, config.dims, strict=True)):
        l = h * w
        d, n, r = ssm.inner_dim(c), ssm.d_state, ssm.rank(c)
        for _ in range(depth):
            ln(c, l)  # norm
            conv(2 * d if ssm.gated else d, c, 1, l)  # in_proj
            conv(d, 1, ssm.d_conv, l)  # depthwise
            out["matmul"] += b * 4 * (r + 2 * n) * d * l  # x_proj
            out["matmul"] += b * 4 * d * r * l  # dt_proj
            out["scan"] += 9 * b * l * 4 * d * n + b * 4 * d * l
            ln(d, l)  # out_norm
            conv(c, d, 1, l)  # out_proj
            if config.mlp_ratio > 0:
                hidden = int(c * config.mlp_ratio)
                ln(c, l)
                conv(hidden, c, 1, l)
                conv(c, hidden, 1, l)
        if i + 1 < len(config.dims):
            c_next = config.dims[i + 1]
            h, w = half(h), half(w)
            if config.downsample == "conv":
                conv(c_next, c, 3, h * w)
                ln(c_next, h * w)
            else:
                ln(4 * c, h * w)
                conv(c_next, 4 * c, 1, h * w)
    c3 = config.dims[-1]
    ln(c3, h * w)
    out["pool"] += b * c3 * h * w
    out["linear"] += b * c3 * config.num_classes
    return out


@pytest.mark.parametrize("name", sorted(SPEC_GFLOPS))
def test_released_models_reproduce_the_official_count(name):
    report = count_model_flops(name, resolution=224)
    assert report.total == round(SPEC_GFLOPS[name] * 1e9)
    assert report.total == sum(report.by_op.values())


def test_tiny_breakdown_matches_the_official_one():
    by_op = count_model_flops("vmamba_tiny").by_op
    official = {
        "conv": by_op["conv"] + by_op["matmul"],
        "layer_norm": by_op["layer_norm"],
        "scan": by_op["scan"],
        "linear": by_op["linear"],
    }
    assert {k: round(v / 1e9, 4) for k, v in official.items()} == SPEC_TINY_BY_OP
    assert by_op["pool"] == 768 * 7 * 7  # fvcore: one per input element of the pooling
    assert by_op["einsum"] == 0  # the projections are matmuls; nothing else multiplies


@pytest.mark.parametrize(
    ("name", "b", "height", "width"),
    [
        ("vmamba_mini", 2, 40, 40),  # rank-1 dt_proj in stage 1; 10 -> 5 -> 3 -> 2 grids
        ("vmamba_mini", 1, 32, 48),  # non-square
        ("vmamba_tiny", 1, 224, 224),
        ("vmamba_vanilla_tiny", 1, 64, 64),  # gated SS2D, n = 16, patch stem, patch merging
    ],
)
def test_every_category_agrees_with_the_closed_form(name, b, height, width):
    model = build_meta_model(name)
    report = count_flops(model, (b, 3, height, width))
    assert report.by_op == closed_form(model.config, b, height, width)


def test_per_module_counts_add_up():
    report = count_model_flops("vmamba_mini", resolution=64)
    top = [name for name in report.by_module if re.fullmatch(r"patch_embed|layers\.\d", name)]
    assert top == ["patch_embed", "layers.0", "layers.1", "layers.2", "layers.3"]
    classifier = ["classifier.norm", "classifier.pool", "classifier.head"]
    assert sum(report.module_total(n) for n in top + classifier) == report.total
    block = report.by_module["layers.0.blocks.0"]
    assert report.by_module["layers.0.blocks.0.op"]["scan"] == block["scan"] > 0
    assert block["scan"] == scan_flops(1, 4 * 16, 16 * 16, 1)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "ref"])
def test_count_does_not_depend_on_the_backend(backend):
    try:
        get_ops(backend)
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    reference = count_model_flops("vmamba_tiny", backend="ref")
    other = count_model_flops("vmamba_tiny", backend=backend)
    assert other.by_module == reference.by_module
    assert other.total == reference.total


def _numba_or_skip():
    try:
        get_ops("numba")
    except BackendUnavailableError as err:
        pytest.skip(str(err))


def test_the_numba_models_own_scan_op_gives_the_same_count():
    """The numba backend runs SS2D through vmamba_fast's `vmamba::ss2d_core_fwd`, whose FLOP
    formula is registered with torch. Counted by torch's own FlopCounterMode on a real CPU run
    (no substitution, no meta device), its scan total equals ours."""
    _numba_or_skip()
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = vmamba_mini(backend="numba").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 40, 40))
    through_backend = counter.get_flop_counts()["Global"][torch.ops.vmamba.ss2d_core_fwd]
    assert through_backend == count_flops(model, (2, 3, 40, 40)).by_op["scan"] > 0


def test_vmamba_fast_formulas_agree_on_shapes():
    _numba_or_skip()
    from torch.utils.flop_counter import flop_registry

    for b, d, h, w, n in [(1, 96, 56, 56, 1), (2, 24, 5, 7, 16)]:
        x = torch.empty(b, d, h, w, device="meta")
        delta = torch.empty(b, 4, d, h, w, device="meta")
        A = torch.empty(4 * d, n, device="meta")
        B = C = torch.empty(b, 4, n, h, w, device="meta")
        D = delta_bias = torch.empty(4 * d, device="meta")
        core = flop_registry[torch.ops.vmamba.ss2d_core_fwd]
        assert core(x, delta, A, B, C, D, delta_bias, True, out_val=x) == scan_flops(
            b, 4 * d, h * w, n
        )
        u = torch.empty(b, 4 * d, h * w, device="meta")
        Bs = torch.empty(b, 4, n, h * w, device="meta")
        scan = flop_registry[torch.ops.vmamba.selective_scan_fwd]
        assert scan(u, u, A, Bs, Bs, D, delta_bias, None, True, out_val=(u, A)) == (
            scan_flops(b, 4 * d, h * w, n)
        )


def test_counting_a_real_model_leaves_it_untouched():
    torch.manual_seed(0)
    model = vmamba_mini()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ops_before = [m.ops for m in model.modules() if isinstance(m, SS2D)]
    report = count_flops(model, (1, 3, 32, 32))
    assert report.total == count_model_flops("vmamba_mini", resolution=32).total
    assert report.params == sum(p.numel() for p in model.parameters()) == 280_042
    assert [m.ops for m in model.modules() if isinstance(m, SS2D)] == ops_before
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
        self.norm = nn.LayerNorm(8, elementwise_affine=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.dw(self.conv(x))  # (b, 8, h, w)
        y = self.norm(x.permute(0, 2, 3, 1))  # (b, h, w, 8)
        z = self.fc(y)  # (b, h, w, 4)
        outer = torch.einsum("bhwc,d->bhwcd", z, torch.ones(3, device=z.device))  # (b, h, w, 4, 3)
        pooled = F.adaptive_avg_pool2d(x, (2, None))  # (b, 8, 2, w)
        return outer.sum() + pooled.sum() + torch.einsum("...ij->...ji", [pooled]).sum()


def test_each_rule_on_a_hand_counted_module():
    b, h, w = 2, 6, 10
    report = count_flops(_Toy(), (b, 3, h, w))
    assert report.by_op == {
        "conv": b * 8 * 3 * 9 * h * w + b * 8 * 1 * 25 * h * w,
        "einsum": b * h * w * 4 * 3,  # an outer product: one multiply per output element
        "linear": b * h * w * 8 * 4,
        "matmul": 0,
        "layer_norm": 4 * b * h * w * 8,  # no affine: 4 per element
        "pool": b * 8 * h * w,
        "scan": 0,
    }
    assert set(report.by_module) == {"conv", "dw", "norm", "fc"}


def test_einsum_rule():
    assert einsum_flops("bi,ij->bj", [(2, 3), (3, 5)]) == 2 * 3 * 5
    assert einsum_flops("b d h w, k e d -> b k e h w", [(2, 16, 4, 4), (4, 3, 16)]) == 2 * 16 * 16 * 4 * 3
    assert einsum_flops("...ij,...jk->...ik", [(7, 2, 3), (1, 3, 4)]) == 7 * 2 * 3 * 4
    assert einsum_flops("ij->ji", [(3, 4)]) == 0
    assert einsum_flops("i,i,i->", [(5,), (5,), (5,)]) == 2 * 5
    with pytest.raises(ValueError, match="names 2 operands"):
        einsum_flops("ij,jk->ik", [(2, 3)])


def test_scan_rule_is_the_papers_count():
    b, kd, l, n = 2, 384, 3136, 1
    assert scan_flops(b, kd, l, n) == 9 * b * l * kd * n + b * kd * l
    assert scan_flops(b, kd, l, 16, with_D=False) == 9 * b * l * kd * 16


def test_vmamba_flops_and_the_operators_count_with_one_formula():
    """One home for the FLOP formula: `vmamba flops` and the `vmamba::` operators' registered
    formulas call the contract's `scan_flops`, the same function object, and agree."""
    from vmamba_fast import ops
    from vmamba_ref.tools import flops as flops_tool

    assert flops_tool.scan_flops is contract.scan_flops and ops.scan_flops is contract.scan_flops
    b, d, h, w, n = 2, 8, 5, 3, 4
    x, delta = torch.randn(b, d, h, w), torch.randn(b, 4, d, h, w)
    A, B, C = -torch.rand(4 * d, n), torch.randn(b, 4, n, h, w), torch.randn(b, 4, n, h, w)
    for D in (torch.randn(4 * d), None):
        with torch.device("meta"):
            args = [t.to("meta") for t in (x, delta, A, B, C)]
            D_meta = None if D is None else D.to("meta")
        counts = []
        for op in (torch.ops.vmamba.ss2d_core_fwd, torch.ops.vmamba_flops.ss2d_core):
            with FlopCounterMode(display=False) as counter:
                op(*args, D_meta, None, True)
            counts.append(counter.get_total_flops())
        assert counts[0] == counts[1] == scan_flops(b, 4 * d, h * w, n, with_D=D is not None)


class _ReadsAFloat(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum().item() > 0 else x


class _ChecksABool(nn.Module):
    def forward(self, x):
        if not bool(torch.isfinite(x).all()):
            raise ValueError("not finite")
        return nn.functional.linear(x, torch.ones(3, x.shape[-1]))


def test_value_reads_on_meta():
    with pytest.raises(ValueError, match="data-dependent control flow"):
        count_flops(_ReadsAFloat(), (2, 3))
    report = count_flops(_ChecksABool(), (2, 5))
    assert report.bool_reads == 1
    assert report.by_op["linear"] == 2 * 5 * 3


class _Backward(nn.Module):
    def forward(self, x):
        w = torch.ones(4, 3, 3, 3, device=x.device)
        return torch.ops.aten.convolution_backward(
            torch.ones(1, 4, 8, 8, device=x.device), x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
            [True, True, False],
        )[0]


def test_an_op_without_a_rule_is_refused():
    with pytest.raises(ValueError, match="no rule .*convolution_backward"):
        count_flops(_Backward(), (1, 3, 8, 8))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(_Toy(), (2, 0, 4, 4))
    with pytest.raises(ValueError, match="resolution"):
        count_model_flops("vmamba_mini", resolution=0)
    with pytest.raises(ValueError, match="model must be one of"):
        count_model_flops("vmamba_huge")
    with pytest.raises(ValueError, match="depth"):
        format_table(count_model_flops("vmamba_mini", resolution=32), depth=0)


def test_cli_json_and_table(capsys):
    assert main(["flops", "vmamba_tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 4_905_609_984 and report["params"] == 30_249_064
    assert report["input_shape"] == [1, 3, 224, 224] and set(report["by_op"]) == set(CATEGORIES)
    assert math.isclose(report["gflops"], 4.905609984)
    assert main(["flops", "vmamba_mini", "--resolution", "64", "--depth", "2"]) == 0
    table = capsys.readouterr().out
    assert "layers.0 " in table and "layers.0.blocks" not in table
    assert f"{count_model_flops('vmamba_mini', resolution=64).total:,}" in table


def test_cli_names_a_bad_argument(capsys):
    with pytest.raises(SystemExit):
        main(["flops", "vmamba_mini", "--resolution", "0"])
    assert "--resolution" in capsys.readouterr().err
