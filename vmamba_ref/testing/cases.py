"""Concrete test cases for the scan operators: a few sizes and flags in, keyword arguments out.

A case is a frozen dataclass (sizes, dtype, parameter regime, which optional arguments are
present, which tensors are non-contiguous, a seed); `case.build()` turns it into the keyword
arguments of the reference function, deterministically. The Hypothesis strategies in
`strategies.py` draw cases, so a shrunk counterexample prints as a call you can paste to get the
same tensors back, e.g. `SelectiveScanCase(batch=1, ..., seed=0).build()`.

Parameter regimes (`init`), after the initializations the VMamba paper compares in its appendix,
the official code's `ssm_init` options "v0", "v1" and "v2" (`vmamba_ref/init.py` implements
them; docs/tutorial/initialization.md walks through them):

| init        | A (k*d, n)               | D            | step size dt = softplus(delta + delta_bias) |
|-------------|--------------------------|--------------|---------------------------------------------|
| "mamba"     | -[1, 2, ..., n]          | 1            | log-uniform in [1e-3, 0.1] ("v0")           |
| "random"    | -exp(N(0, 1))            | U(0.5, 1.5)  | softplus(0.1 N(0, 1) + delta) ("v1")        |
| "zero"      | -1                       | 1            | softplus(0.1 U(0, 1) + delta) ("v2")        |
| "tiny_step" | -[1, 2, ..., n]          | 1            | about 1e-4, the dt floor: the state barely decays |
| "huge_step" | -[1, 2, ..., n]          | 1            | 5 to 20: the state forgets at every step    |

Deviation from the official code: its `ssm_init="v1"` sets D = 1; the "random" regime draws D
so that a kernel which reads D at the wrong channel is caught. Every float is bounded (normal
draws are clipped at 3 standard deviations), so no regime overflows. With
`delta_softplus=False` the step sizes are passed already positive, in the same regime.

Values are drawn in float64 from a seeded generator, always in the same order whatever the
options, then rounded to the case's dtype: switching an option off does not change the other
tensors. u, delta, B, C (and x, ys) take the case's dtype; A, D, delta_bias and initial_state
take float32 for float16/bfloat16/float32 cases and float64 for float64 cases, as VMamba's
kernels expect. A non-contiguous tensor keeps every other element of its last dimension of size
above one, and the gaps in its storage hold NaN, so a kernel that ignores strides reads NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from vmamba_ref.contract import compute_dtype

Init = Literal["mamba", "random", "zero", "tiny_step", "huge_step"]
INITS: tuple[str, ...] = get_args(Init)
# Layouts of B and C, as mamba_ssm's selective_scan_fn takes them: one per group of channels
# (b, g, n, l) (VMamba's, g = k routes), one for all channels (b, n, l), or constant (k*d, n).
ProjectionLayout = Literal["grouped", "variable", "constant"]
PROJECTION_LAYOUTS: tuple[str, ...] = get_args(ProjectionLayout)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)
ROUTES = 4  # k of the cross-scan

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 0.1, 1e-4  # VMamba's v0 step-size init
HUGE_DT = (5.0, 20.0)
NORMAL_CLIP = 3.0


class KernelInputs(dict):
    """Keyword arguments for one scan operator (`fn(**inputs)`), remembering the case that made
    them; its repr is the call that rebuilds them."""

    def __init__(self, case: object, arguments: dict[str, Any]) -> None:
        super().__init__(arguments)
        self.case = case

    def __repr__(self) -> str:
        return f"{self.case!r}.build()"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints falsifying examples with this hook."""
        printer.text(repr(self))


def describe_inputs(inputs: dict[str, Any]) -> str:
    """One line per argument: dtype and shape of tensors (with strides when non-contiguous),
    the value of everything else."""
    lines = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            text = f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
            if not value.is_contiguous():
                text += f" non-contiguous, strides {tuple(value.stride())}"
            if value.requires_grad:
                text += " requires_grad"
            if value.device.type != "cpu":
                text += f" on {value.device}"
        else:
            text = repr(value)
        lines.append(f"{name}={text}")
    return ", ".join(lines)


def parameter_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of A, D, delta_bias and initial_state for data of `dtype`: the compute dtype."""
    return compute_dtype(dtype)


PARAMETER_NAMES = ("A", "D", "delta_bias", "initial_state")  # held in parameter_dtype


def cast_inputs(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """The same inputs in `dtype`: a case's inputs rebuilt from the case with that dtype (so the
    repr still rebuilds them); other dicts cast, A, D, delta_bias and initial_state to
    `parameter_dtype(dtype)`, keeping requires_grad and strides (storage gaps NaN)."""
    case = getattr(inputs, "case", None)
    if case is not None and is_dataclass(case) and hasattr(case, "dtype"):
        return replace(case, dtype=dtype).build()  # type: ignore[type-var]
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            target = parameter_dtype(dtype) if name in PARAMETER_NAMES else dtype
            cast = value.detach().to(target)
            shape, stride = value.shape, value.stride()
            if not value.is_contiguous() and value.numel() > 0 and 0 not in stride:
                span = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
                base = torch.full((span,), float("nan"), dtype=target, device=value.device)
                cast = base.as_strided(shape, stride).copy_(cast)
            value = cast.requires_grad_(value.requires_grad)
        out[name] = value
    return out


def inverse_softplus(dt: torch.Tensor) -> torch.Tensor:
    """The bias b with softplus(b) = dt (dt > 0): b = dt + log(-expm1(-dt)), VMamba's dt init."""
    return dt + torch.log(-torch.expm1(-dt))


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


def _normal(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).clamp(-NORMAL_CLIP, NORMAL_CLIP)


def with_gaps(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: every other element along the last dimension
    of size above one, the skipped storage filled with NaN. A tensor of one element is returned
    as a copy (it is contiguous in any layout)."""
    dims = [i for i, size in enumerate(t.shape) if size > 1]
    if not dims:
        return t.clone()
    dim = dims[-1]
    shape = list(t.shape)
    shape[dim] *= 2
    base = torch.full(shape, math.nan, dtype=t.dtype, device=t.device)  # last long dim doubled
    index = [slice(None)] * t.dim()
    index[dim] = slice(None, None, 2)
    view = base[tuple(index)]  # t.shape, strided
    view.copy_(t)
    return view


@dataclass(frozen=True)
class SSMParameters:
    """The scan parameters of one case, in float64, before rounding to the case's dtypes."""

    delta: torch.Tensor  # (b, k*d, l)
    A: torch.Tensor  # (k*d, n)
    D: torch.Tensor  # (k*d,)
    delta_bias: torch.Tensor | None  # (k*d,)


def ssm_parameters(
    gen: torch.Generator,
    init: str,
    batch: int,
    channels: int,
    length: int,
    state: int,
    with_delta_bias: bool,
    delta_softplus: bool,
) -> SSMParameters:
    """Draw delta, A, D and delta_bias for `channels` = k*d scan channels in regime `init`
    (see the module docstring). Always consumes the generator in the same order."""
    shape = (batch, channels, length)
    delta_raw = _uniform(gen, shape, -0.5, 0.5)  # (b, k*d, l), a projection of x in the model
    a_logs = _normal(gen, (channels, state))  # (k*d, n)
    d_random = _uniform(gen, (channels,), 0.5, 1.5)  # (k*d,)
    u01 = torch.rand(channels, generator=gen, dtype=torch.float64)  # (k*d,)
    normal = _normal(gen, (channels,))  # (k*d,)

    ladder = torch.arange(1, state + 1, dtype=torch.float64).expand(channels, state)  # (k*d, n)
    if init == "random":
        A = -torch.exp(a_logs)
        bias = 0.1 * normal
    elif init == "zero":
        A = -torch.ones(channels, state, dtype=torch.float64)
        bias = 0.1 * u01
    elif init == "mamba":
        A = -ladder
        dt = torch.exp(u01 * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
        bias = inverse_softplus(dt.clamp(min=DT_FLOOR))
    elif init == "tiny_step":
        A = -ladder
        bias = inverse_softplus(torch.full((channels,), DT_FLOOR, dtype=torch.float64))
    elif init == "huge_step":
        A = -ladder
        bias = inverse_softplus(HUGE_DT[0] + u01 * (HUGE_DT[1] - HUGE_DT[0]))
    else:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
    D = d_random if init == "random" else torch.ones(channels, dtype=torch.float64)

    if delta_softplus:
        if with_delta_bias:
            return SSMParameters(delta_raw, A.contiguous(), D, bias)
        return SSMParameters(delta_raw + bias[:, None], A.contiguous(), D, None)
    # Without softplus the scan takes delta + delta_bias as the step size: keep it positive.
    dt = F.softplus(delta_raw + bias[:, None])  # (b, k*d, l)
    if with_delta_bias:
        return SSMParameters(0.5 * dt, A.contiguous(), D, 0.5 * F.softplus(bias))
    return SSMParameters(dt, A.contiguous(), D, None)


def _check_case(case: object) -> None:
    name = type(case).__name__
    for field in fields(case):  # type: ignore[arg-type]
        value = getattr(case, field.name)
        if field.type != "int":
            continue
        least = 0 if field.name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}.{field.name} must be an int >= {least}, got {value!r}")
    dtype = case.dtype  # type: ignore[attr-defined]
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}.dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    init = getattr(case, "init", "mamba")
    if init not in INITS:
        raise ValueError(f"{name}.init must be one of {list(INITS)}, got {init!r}")
    for field in ("B_layout", "C_layout"):
        layout = getattr(case, field, "grouped")
        if layout not in PROJECTION_LAYOUTS:
            raise ValueError(f"{name}.{field} must be one of {list(PROJECTION_LAYOUTS)}, got {layout!r}")
    pair = {getattr(case, "B_layout", "grouped"), getattr(case, "C_layout", "grouped")}
    if pair == {"grouped", "variable"} and getattr(case, "routes", 1) > 1:
        raise ValueError(
            f"{name}: a variable B or C has one group, so beside a grouped one routes must be 1, "
            f"got routes={case.routes}"  # type: ignore[attr-defined]
        )


def _finish(arguments: dict[str, Any], case: Any, grad_names: tuple[str, ...]) -> KernelInputs:
    """Move tensors to the case's device, lay out the non-contiguous ones, set requires_grad."""
    unknown = set(case.noncontiguous) - set(arguments)
    if unknown:
        raise ValueError(
            f"{type(case).__name__}.noncontiguous names {sorted(unknown)}, which are not "
            f"arguments; choose from {sorted(k for k, v in arguments.items() if isinstance(v, torch.Tensor))}"
        )
    out = {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            value = value.to(case.device)
            if name in case.noncontiguous:
                value = with_gaps(value)
            if case.requires_grad and name in grad_names:
                value.requires_grad_()
        out[name] = value
    return KernelInputs(case, out)


@dataclass(frozen=True)
class CrossScanCase:
    """Input of `cross_scan(x)`: x (batch, channels, height, width)."""

    batch: int
    channels: int
    height: int
    width: int
    dtype: torch.dtype = torch.float32
    requires_grad: bool = False
    noncontiguous: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        _check_case(self)

    def build(self) -> KernelInputs:
        """`{"x": (b, d, h, w)}` with values in [-1, 1]."""
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.batch, self.channels, self.height, self.width)
        x = _uniform(gen, shape, -1.0, 1.0).to(self.dtype)  # (b, d, h, w)
        return _finish({"x": x}, self, ("x",))


@dataclass(frozen=True)
class CrossMergeCase:
    """Input of `cross_merge(ys)`: ys (batch, 4, channels, height, width)."""

    batch: int
    channels: int
    height: int
    width: int
    dtype: torch.dtype = torch.float32
    requires_grad: bool = False
    noncontiguous: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        _check_case(self)

    def build(self) -> KernelInputs:
        """`{"ys": (b, k, d, h, w)}` with values in [-1, 1]."""
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.batch, ROUTES, self.channels, self.height, self.width)
        ys = _uniform(gen, shape, -1.0, 1.0).to(self.dtype)  # (b, k, d, h, w)
        return _finish({"ys": ys}, self, ("ys",))


_SCAN_GRAD = ("u", "delta", "A", "B", "C", "D", "delta_bias", "initial_state", "z")


@dataclass(frozen=True)
class SelectiveScanCase:
    """Arguments of `selective_scan`: u, delta (batch, routes*channels, length); A
    (routes*channels, state); B, C (batch, routes, state, length) in the "grouped" layout,
    (batch, state, length) "variable" or (routes*channels, state) "constant"; optional D,
    delta_bias, initial_state and the gate z (batch, routes*channels, length); flags
    delta_softplus and return_last_state."""

    batch: int
    routes: int
    channels: int
    length: int
    state: int
    dtype: torch.dtype = torch.float32
    init: str = "mamba"
    with_D: bool = True
    with_delta_bias: bool = True
    delta_softplus: bool = True
    with_initial_state: bool = False
    return_last_state: bool = False
    requires_grad: bool = False
    noncontiguous: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"
    B_layout: str = "grouped"  # a ProjectionLayout
    C_layout: str = "grouped"  # a ProjectionLayout
    with_z: bool = False  # the gate: y * silu(z), as mamba_ssm's selective_scan_fn

    def __post_init__(self) -> None:
        _check_case(self)

    def build(self) -> KernelInputs:
        """The reference's keyword arguments; optional ones absent are passed as None."""
        gen = torch.Generator().manual_seed(self.seed)
        b, k, n, l = self.batch, self.routes, self.state, self.length
        kd = k * self.channels
        u = _uniform(gen, (b, kd, l), -1.0, 1.0)  # (b, k*d, l)
        B = _uniform(gen, (b, k, n, l), -1.0, 1.0)  # (b, k, n, l)
        C = _uniform(gen, (b, k, n, l), -1.0, 1.0)  # (b, k, n, l)
        h0 = _uniform(gen, (b, kd, n), -1.0, 1.0)  # (b, k*d, n)
        p = ssm_parameters(gen, self.init, b, kd, l, n, self.with_delta_bias, self.delta_softplus)
        data, param = self.dtype, parameter_dtype(self.dtype)
        arguments = {
            "u": u.to(data),
            "delta": p.delta.to(data),
            "A": p.A.to(param),
            "B": self._projection(gen, B, self.B_layout).to(param if self.B_layout == "constant" else data),
            "C": self._projection(gen, C, self.C_layout).to(param if self.C_layout == "constant" else data),
            "D": p.D.to(param) if self.with_D else None,
            "delta_bias": None if p.delta_bias is None else p.delta_bias.to(param),
            "delta_softplus": self.delta_softplus,
            "initial_state": h0.to(param) if self.with_initial_state else None,
            "return_last_state": self.return_last_state,
        }
        if self.with_z:  # drawn last, so cases without a gate keep their values
            arguments["z"] = _uniform(gen, (b, kd, l), -2.0, 2.0).to(data)  # (b, k*d, l)
        return _finish(arguments, self, _SCAN_GRAD)

    def _projection(self, gen: torch.Generator, grouped: torch.Tensor, layout: str) -> torch.Tensor:
        """B or C in `layout`, from its grouped draw (b, k, n, l): the first group's for all
        channels (b, n, l), or a fresh constant (k*d, n)."""
        if layout == "grouped":
            return grouped  # (b, k, n, l)
        if layout == "variable":
            return grouped[:, 0]  # (b, n, l)
        return _uniform(gen, (self.routes * self.channels, self.state), -1.0, 1.0)  # (k*d, n)


@dataclass(frozen=True)
class SS2DCoreCase:
    """Arguments of `ss2d_core`: x (batch, channels, height, width); delta (batch, 4, channels,
    height, width); A (4*channels, state); B, C (batch, 4, state, height, width); optional D and
    delta_bias; flag delta_softplus."""

    batch: int
    channels: int
    height: int
    width: int
    state: int
    dtype: torch.dtype = torch.float32
    init: str = "mamba"
    with_D: bool = True
    with_delta_bias: bool = True
    delta_softplus: bool = True
    requires_grad: bool = False
    noncontiguous: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        _check_case(self)

    def build(self) -> KernelInputs:
        """The reference's keyword arguments; optional ones absent are passed as None."""
        gen = torch.Generator().manual_seed(self.seed)
        b, d, h, w, n = self.batch, self.channels, self.height, self.width, self.state
        x = _uniform(gen, (b, d, h, w), -1.0, 1.0)  # (b, d, h, w)
        B = _uniform(gen, (b, ROUTES, n, h, w), -1.0, 1.0)  # (b, k, n, h, w)
        C = _uniform(gen, (b, ROUTES, n, h, w), -1.0, 1.0)  # (b, k, n, h, w)
        p = ssm_parameters(
            gen, self.init, b, ROUTES * d, h * w, n, self.with_delta_bias, self.delta_softplus
        )
        delta = p.delta.view(b, ROUTES, d, h, w)  # (b, k*d, l) -> (b, k, d, h, w), on the grid
        data, param = self.dtype, parameter_dtype(self.dtype)
        arguments = {
            "x": x.to(data),
            "delta": delta.to(data),
            "A": p.A.to(param),
            "B": B.to(data),
            "C": C.to(data),
            "D": p.D.to(param) if self.with_D else None,
            "delta_bias": None if p.delta_bias is None else p.delta_bias.to(param),
            "delta_softplus": self.delta_softplus,
        }
        return _finish(arguments, self, ("x", "delta", "A", "B", "C", "D", "delta_bias"))
