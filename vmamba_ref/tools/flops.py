"""FLOP counting in the VMamba authors' convention, on the meta device, through torch's counter.

VMamba reports FLOPs the way fvcore counts them (its `analyze/flops.py` and README): one multiply-add is one FLOP,
and only these operators cost anything:

| category     | operator                                   | FLOPs                                         |
|--------------|--------------------------------------------|-----------------------------------------------|
| `conv`       | convolution (1x1 "Linear2d", depthwise too) | b * prod(weight shape) * prod(output spatial) |
| `einsum`     | torch.einsum                               | product of the sizes of all subscripts        |
| `linear`     | linear layers (mm, addmm)                  | rows * in * out                               |
| `matmul`     | batched products (SS2D's x_proj, dt_proj)  | b * m * k * n                                 |
| `layer_norm` | layer norm                                 | 5 * numel with an affine, 4 * numel without   |
| `pool`       | adaptive average pooling                   | numel of the input                            |
| `scan`       | the SS2D core (selective scan, 4 routes)   | 9 * b * l * (k*d) * n + b * (k*d) * l         |

Activations, exponentials, element-wise sums and products, reshapes and the cross-scan/merge
cost nothing. The scan formula is the count Albert Gu gave for Mamba's selective scan
(state-spaces/mamba issue #110) and VMamba's `selective_scan_flop_jit`: 9 operations per state
element and step, plus one per channel and step for the D skip (counted when D is given; VMamba
has no z gate inside the scan, so no z term).

How the count runs. The model executes once under `torch.utils.flop_counter.FlopCounterMode` on
the meta device: tensors carry shapes and no data, so VMamba-B costs no arithmetic. Three
operators are routed through custom ops (namespace `vmamba_flops`) whose FLOP formulas are
registered with `register_flop_formula`, because torch lowers them before its counter sees them
or has no rule for them:

- the SS2D core: every `SS2D` in the model runs `torch.ops.vmamba_flops.ss2d_core` while it is
  counted, whatever its backend, so the count never depends on the backend; the reference's
  Python loop over time is never entered;
- `torch.einsum`: lowered to bmm, or to a plain product when the contracted size is 1, which a
  counter below the einsum would miss;
- adaptive average pooling: lowered to a mean for a 1x1 output.

torch's own formulas count 2 FLOPs per multiply-add and have no rule for layer norm, so the
counter passes fvcore-convention formulas for convolution, mm/addmm/bmm/baddbmm and layer norm.

Official implementation: `FLOPs.fvcore_flop_count` in VMamba's `analyze/utils.py` (fvcore on a
TorchScript trace, the scan as an opaque `PythonOp`). Deviations: einsums count the product of
all subscript sizes, the multiply-adds of the contraction; fvcore asks numpy's path optimiser,
which agrees whenever a subscript is summed and halves a pure outer product. The released models
run x_proj and dt_proj as grouped conv1d, which fvcore files under `conv` with the same
multiply-add count; SS2D runs them as batched matrix products, so the authors' `conv` total is
`conv + matmul` here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from vmamba_ref.contract import check_ss2d_core_args, compute_dtype, scan_flops
from vmamba_ref.layers import Linear2d
from vmamba_ref.ss2d import SS2D
from vmamba_ref.ss2d_core import ss2d_core as ss2d_core_ref

aten = torch.ops.aten

CATEGORIES = ("conv", "einsum", "linear", "matmul", "layer_norm", "pool", "scan")
"""The by-operator categories of a FlopReport, in report order."""

CONVENTION = "fvcore: one multiply-add = one FLOP (VMamba's analyze/utils.py)"


# --- formulas: shapes in, FLOPs out ------------------------------------------------------------


def conv_flops(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    out_shape: Sequence[int],
    transposed: bool = False,
) -> int:
    """Convolution: every output position of every output channel takes in/groups * kernel
    multiply-adds, i.e. b * prod(w_shape) * prod(output spatial). A transposed convolution runs
    over the input positions instead. Bias additions are free."""
    spatial = (x_shape if transposed else out_shape)[2:]
    return x_shape[0] * math.prod(w_shape) * math.prod(spatial)


def mm_flops(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """(m, k) @ (k, n): m * k * n multiply-adds."""
    m, k = a_shape
    k2, n = b_shape
    if k != k2:
        raise ValueError(f"mm_flops: inner sizes differ, a {tuple(a_shape)} and b {tuple(b_shape)}")
    return m * k * n


def bmm_flops(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """(b, m, k) @ (b, k, n): b * m * k * n multiply-adds."""
    b, m, k = a_shape
    b2, k2, n = b_shape
    if (b, k) != (b2, k2):
        raise ValueError(
            f"bmm_flops: batch or inner sizes differ, a {tuple(a_shape)} and b {tuple(b_shape)}"
        )
    return b * m * k * n


def layer_norm_flops(x_shape: Sequence[int], affine: bool) -> int:
    """fvcore's estimate for a norm layer: 5 operations per element with an affine, 4 without."""
    return math.prod(x_shape) * (5 if affine else 4)


def adaptive_avg_pool_flops(x_shape: Sequence[int]) -> int:
    """fvcore's rule for adaptive average pooling: one operation per input element."""
    return math.prod(x_shape)


def einsum_flops(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """Multiply-adds of an einsum evaluated directly: every point of the index space (all
    subscripts, summed or kept) takes one multiplication per extra operand, each paired with an
    accumulation. Two operands: the product of all subscript sizes, the MACs of the contraction.
    One operand (a sum or a transpose): 0. `...` stands for the broadcast leading dimensions."""
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    if len(inputs) != len(shapes):
        raise ValueError(
            f"einsum_flops: equation {equation!r} names {len(inputs)} operands, got {len(shapes)} shapes"
        )
    sizes: dict[str, int] = {}
    ellipsis: list[int] = []  # broadcast sizes, aligned to the right
    for subscripts, shape in zip(inputs, shapes, strict=True):
        letters = subscripts.replace("...", "")
        n_ellipsis = len(shape) - len(letters)
        if n_ellipsis < 0 or (n_ellipsis > 0 and "..." not in subscripts):
            raise ValueError(
                f"einsum_flops: subscripts {subscripts!r} do not fit shape {tuple(shape)}"
            )
        head = subscripts.split("...")[0] if "..." in subscripts else letters
        dims = list(shape)
        broadcast = dims[len(head) : len(head) + n_ellipsis]
        named = dims[: len(head)] + dims[len(head) + n_ellipsis :]
        for letter, size in zip(letters, named, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
        pad = len(broadcast) - len(ellipsis)
        ellipsis = [1] * max(pad, 0) + ellipsis
        for i, size in enumerate(broadcast):
            j = len(ellipsis) - len(broadcast) + i
            ellipsis[j] = max(ellipsis[j], size)
    return (len(shapes) - 1) * math.prod(sizes.values()) * math.prod(ellipsis)


# --- counted custom ops ------------------------------------------------------------------------


@torch.library.custom_op("vmamba_flops::ss2d_core", mutates_args=())
def _ss2d_core_op(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """`vmamba_ref.ss2d_core` as one opaque operator, so that a FLOP counter sees the scan whole."""
    return ss2d_core_ref(x, delta, A, B, C, D, delta_bias, delta_softplus)  # (b, d, h, w)


@_ss2d_core_op.register_fake
def _ss2d_core_fake(x, delta, A, B, C, D, delta_bias, delta_softplus):
    b, d, h, w, _ = check_ss2d_core_args("ss2d_core", x, delta, A, B, C)
    return x.new_empty((b, d, h, w), dtype=compute_dtype(x.dtype))  # (b, d, h, w)


@register_flop_formula(torch.ops.vmamba_flops.ss2d_core)
def ss2d_core_flop_formula(
    x_shape,
    delta_shape,
    A_shape,
    B_shape,
    C_shape,
    D_shape,
    delta_bias_shape,
    delta_softplus,
    out_shape=None,
) -> int:
    """The SS2D core: one selective scan over u = cross_scan(x), (b, k*d, l), with A (k*d, n)."""
    b, _, h, w = x_shape
    kd, n = A_shape
    return scan_flops(b, kd, h * w, n, with_D=D_shape is not None)


@torch.library.custom_op("vmamba_flops::einsum", mutates_args=())
def _einsum_op(equation: str, operands: list[torch.Tensor]) -> torch.Tensor:
    """torch.einsum as one operator. The result is a copy: a custom op may not return a view of
    its inputs, which einsum does for a pure transpose."""
    return torch.einsum(equation, *operands).clone()


@_einsum_op.register_fake
def _einsum_fake(equation, operands):
    return torch.einsum(equation, *operands).clone()


@register_flop_formula(torch.ops.vmamba_flops.einsum)
def einsum_flop_formula(equation, operand_shapes, out_shape=None) -> int:
    """See `einsum_flops`."""
    return einsum_flops(equation, operand_shapes)


@torch.library.custom_op("vmamba_flops::adaptive_avg_pool2d", mutates_args=())
def _adaptive_avg_pool2d_op(x: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    """F.adaptive_avg_pool2d as one operator (torch lowers a 1x1 output to a mean)."""
    return F.adaptive_avg_pool2d(x, output_size).clone()


@_adaptive_avg_pool2d_op.register_fake
def _adaptive_avg_pool2d_fake(x, output_size):
    return F.adaptive_avg_pool2d(x, output_size).clone()


@register_flop_formula(torch.ops.vmamba_flops.adaptive_avg_pool2d)
def adaptive_avg_pool2d_flop_formula(x_shape, output_size, out_shape=None) -> int:
    """See `adaptive_avg_pool_flops`."""
    return adaptive_avg_pool_flops(x_shape)


# --- fvcore-convention formulas for aten ops, in torch's counter's calling convention ----------


def _conv_formula(
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    *args,
    out_shape=None,
    **kwargs,
) -> int:
    return conv_flops(x_shape, w_shape, out_shape, transposed)


def _mm_formula(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return mm_flops(a_shape, b_shape)


def _addmm_formula(_self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return mm_flops(a_shape, b_shape)


def _bmm_formula(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return bmm_flops(a_shape, b_shape)


def _baddbmm_formula(_self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return bmm_flops(a_shape, b_shape)


def _layer_norm_formula(
    x_shape, _normalized_shape, weight_shape, *args, out_shape=None, **kwargs
) -> int:
    return layer_norm_flops(x_shape, affine=weight_shape is not None)


FVCORE_FORMULAS = {
    aten.convolution: _conv_formula,
    aten._convolution: _conv_formula,
    aten.mm: _mm_formula,
    aten.addmm: _addmm_formula,
    aten.bmm: _bmm_formula,
    aten.baddbmm: _baddbmm_formula,
    aten.native_layer_norm: _layer_norm_formula,
}
"""Formulas handed to FlopCounterMode in place of torch's (2 FLOPs per multiply-add, no layer
norm). The vmamba_flops ops carry their own registered formulas."""

OP_CATEGORY = {
    aten.convolution: "conv",
    aten._convolution: "conv",
    torch.ops.vmamba_flops.einsum: "einsum",
    aten.mm: "linear",
    aten.addmm: "linear",
    aten.bmm: "matmul",
    aten.baddbmm: "matmul",
    aten.native_layer_norm: "layer_norm",
    torch.ops.vmamba_flops.adaptive_avg_pool2d: "pool",
    torch.ops.vmamba_flops.ss2d_core: "scan",
}


# --- the counting run --------------------------------------------------------------------------


class _RouteCountedOps(TorchFunctionMode):
    """Send torch.einsum and F.adaptive_avg_pool2d through their counted custom ops, before torch
    lowers them into operators that count differently."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.einsum:
            equation, *operands = args
            if len(operands) == 1 and isinstance(operands[0], list | tuple):
                operands = list(operands[0])  # the einsum(eq, [a, b]) form
            if not isinstance(equation, str):
                raise TypeError(
                    "count_flops: torch.einsum in sublist form is not supported; pass an equation string"
                )
            return torch.ops.vmamba_flops.einsum(equation, list(operands))
        if func is F.adaptive_avg_pool2d:
            x, output_size = (*args, *kwargs.values())
            return torch.ops.vmamba_flops.adaptive_avg_pool2d(x, _pool_size(x, output_size))
        return func(*args, **kwargs)


def _pool_size(x: torch.Tensor, output_size) -> list[int]:
    """F.adaptive_avg_pool2d's output_size (an int, or a pair with None = keep) as two ints."""
    pair = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    return [x.shape[-2 + i] if s is None else int(s) for i, s in enumerate(pair)]


class _MetaValueReads(TorchDispatchMode):
    """On the meta device tensors have no values. A boolean read (`if not bool(ok): raise`, as
    VMamba.check_input does for a finite input) is answered True, as for a valid input, and
    counted; a numeric read raises, since a count by shapes cannot follow data. Also records the
    operators that cost nothing in this convention."""

    def __init__(self) -> None:
        super().__init__()
        self.bool_reads = 0
        self.free_ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            if args[0].dtype != torch.bool:
                raise ValueError(
                    f"count_flops: the model reads a {args[0].dtype} value from a tensor; on the meta "
                    "device there are no values, so data-dependent control flow cannot be counted"
                )
            self.bool_reads += 1
            return True
        if func._overloadpacket not in OP_CATEGORY:
            self.free_ops[str(func._overloadpacket)] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def counted_scans(model: nn.Module) -> Iterator[None]:
    """Within the block, every SS2D in `model` runs its core as `torch.ops.vmamba_flops.ss2d_core`
    (the reference, with a FLOP formula and a shape-only fake) instead of its backend's
    implementation, and every Linear2d runs as the official 1x1 convolution
    (`Linear2d.forward_as_conv`, counted under `conv`); each module's own operators and forward
    are put back on exit."""
    saved = {m: m.ops for m in model.modules() if isinstance(m, SS2D)}
    linears = [m for m in model.modules() if isinstance(m, Linear2d)]
    try:
        for m, ops in saved.items():
            m.ops = dataclasses.replace(ops, ss2d_core=torch.ops.vmamba_flops.ss2d_core)
        for m in linears:
            m.forward = m.forward_as_conv
        yield
    finally:
        for m, ops in saved.items():
            m.ops = ops
        for m in linears:
            del m.forward  # the class's forward again


@dataclass(frozen=True)
class FlopReport:
    """FLOPs of one forward pass, in the VMamba authors' convention (one multiply-add = one FLOP).

    by_op: FLOPs per category of CATEGORIES (all present, zeros included).
    by_module: per module path (state_dict style, e.g. "layers.0.blocks.1.op"), its FLOPs by
        category, submodules included, in execution order; modules that cost nothing are absent.
    free_ops: operators that ran and cost nothing in this convention, with their call counts.
    bool_reads: boolean reads of tensor values answered True on the meta device (see
        `_MetaValueReads`); VMamba's input check makes one.
    """

    input_shape: tuple[int, ...]
    total: int
    by_op: dict[str, int]
    by_module: dict[str, dict[str, int]]
    params: int
    free_ops: dict[str, int] = field(default_factory=dict)
    bool_reads: int = 0
    convention: str = CONVENTION

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def module_total(self, name: str) -> int:
        """FLOPs of the module at `name` ("" = the whole model), 0 for a module that costs nothing."""
        if name == "":
            return self.total
        return sum(self.by_module.get(name, {}).values())

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self) | {
            "input_shape": list(self.input_shape),
            "gflops": self.gflops,
        }


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) < 1 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(
            f"count_flops: input_shape must be a sequence of positive ints, got {input_shape!r}"
        )
    return shape


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> FlopReport:
    """Count the FLOPs of `model(torch.empty(input_shape))` on the meta device.

    The model's own parameters are neither read nor moved: the run substitutes meta copies of
    them through `torch.func.functional_call`, so a model on any device (or already on meta) can
    be counted. Backend-independent: every SS2D is counted through `vmamba_flops::ss2d_core`.

    Raises ValueError for a bad input_shape, for a numeric read of a tensor value, and for an
    operator that torch would count but this convention has no rule for.
    """
    shape = _check_input_shape(input_shape)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    meta_state = {
        name: torch.empty_like(t, device="meta")
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    x = torch.empty(shape, dtype=dtype, device="meta")
    counter = FlopCounterMode(display=False, custom_mapping=FVCORE_FORMULAS)
    reads = _MetaValueReads()
    with counted_scans(model), torch.no_grad(), _RouteCountedOps(), counter, reads:
        torch.func.functional_call(model, meta_state, (x,))

    counts = counter.get_flop_counts()
    unknown = {str(op) for per_op in counts.values() for op in per_op if op not in OP_CATEGORY}
    if unknown:
        raise ValueError(
            f"count_flops: no rule in the VMamba (fvcore) convention for {sorted(unknown)}; "
            "torch counts these with 2 FLOPs per multiply-add"
        )

    def by_category(per_op: dict) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for op, flops in per_op.items():
            out[OP_CATEGORY[op]] += int(flops)
        return out

    # The tracker names modules "<root class>.<path>"; list them in definition order.
    root = type(model).__name__
    by_module = {
        name: by_category(counts[f"{root}.{name}"])
        for name, _ in model.named_modules()
        if name and f"{root}.{name}" in counts
    }
    by_op = by_category(counts.get("Global", {}))
    return FlopReport(
        input_shape=shape,
        total=sum(by_op.values()),
        by_op=by_op,
        by_module=by_module,
        params=sum(p.numel() for p in model.parameters()),
        free_ops=dict(sorted(reads.free_ops.items())),
        bool_reads=reads.bool_reads,
    )


def build_meta_model(name: str, backend: str = "ref") -> nn.Module:
    """The named model (a key of vmamba_ref.MODELS) built on the meta device in eval mode: no
    memory, no init arithmetic. Raises ValueError for an unknown name and
    BackendUnavailableError for a backend that is not installed."""
    from vmamba_ref.model import MODELS

    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    with torch.device("meta"):
        return MODELS[name](backend=backend).eval()


def count_model_flops(
    name: str, resolution: int = 224, batch_size: int = 1, backend: str = "ref"
) -> FlopReport:
    """FLOPs of the named model on a (batch_size, in_chans, resolution, resolution) input."""
    for arg, value in (("resolution", resolution), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"count_model_flops: {arg} must be a positive int, got {value!r}")
    model = build_meta_model(name, backend)
    return count_flops(model, (batch_size, model.config.in_chans, resolution, resolution))


# --- the per-module table ----------------------------------------------------------------------


def _unit(total: int) -> tuple[str, float]:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if total >= scale:
            return unit, scale
    return "", 1.0


def format_table(report: FlopReport, depth: int = 4) -> str:
    """A per-module table down to `depth` levels of the module path ("layers.0.blocks.1" is 4),
    one column per category that costs anything, then the share of the total."""
    if depth < 1:
        raise ValueError(f"format_table: depth must be >= 1, got {depth}")
    unit, scale = _unit(report.total)
    columns = [cat for cat in CATEGORIES if report.by_op[cat]]
    header = ["module", f"{unit}FLOPs", *columns, "share"]
    rows = [["(total)", report.total, *(report.by_op[cat] for cat in columns), report.total]]
    for name, per_cat in report.by_module.items():
        if name.count(".") < depth:
            total = sum(per_cat.values())
            rows.append(
                ["  " * name.count(".") + name, total, *(per_cat[cat] for cat in columns), total]
            )
    share = max(report.total, 1)
    text_rows = [
        [row[0], *(f"{v / scale:.4f}" for v in row[1:-1]), f"{100 * row[-1] / share:.1f}%"]
        for row in rows
    ]
    widths = [max(len(str(r[i])) for r in [header, *text_rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *text_rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
