"""The Numba math library: exp, log1p, softplus and sigmoid that vectorize and survive fastmath.

The scan's discretization (Mamba section 3.2, equations (1a, 1b) of `selective_scan.py`)
evaluates 2 + n transcendentals per element, which at VMamba-T's sizes is the compute floor of
the CPU kernels (`docs/kernels.md`, "On a 2-core CPU"). libm's scalar `expf` is about 10x slower
in a loop than a polynomial that LLVM vectorizes, so in float32 every function here is a
polynomial; in float64 it is libm, to match the reference to 1e-9.

| function             | what                                                            |
|----------------------|-----------------------------------------------------------------|
| `exp_`               | exp(x): float32 by a degree-5 polynomial, max relative error 4e-7 |
| `exp_nonpositive_`   | exp(x) for x <= 0, without the overflow path                    |
| `log1p_`             | log(1 + e) for e in [0, 1]                                       |
| `softplus_`          | log(1 + e^x), and x above `SOFTPLUS_THRESHOLD`                   |
| `sigmoid_`           | d softplus / dx                                                 |
| `softplus_sigmoid_`  | both from one exponential                                       |
| `zero_of`            | a zero of an array's dtype                                      |

Each is a Python stub (what runs under NUMBA_DISABLE_JIT=1) whose Numba implementation is
picked by dtype at compile time (`numba.extending.overload`). The softplus threshold is the
contract's `SOFTPLUS_THRESHOLD`, which Numba reads as a compile-time constant. No flag here
allows NaN or infinity to be assumed away (`config.py`): NaN in an input reaches the output.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from vmamba_fast.numba.config import JIT
from vmamba_ref.contract import SOFTPLUS_THRESHOLD

_LN2 = np.float32(0.6931471805599453)  # ln 2 in one float32: see `_exp_reduced32`
_EXP_LO = np.float32(-87.33654)  # exp below this is under FLT_MIN: flushed to zero
_EXP_HI = np.float32(88.72283)  # exp above this overflows: inf


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with those bits (a register move, no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


def exp_(x):
    """exp(x); float32 by a vectorizable polynomial (max relative error 2e-7 for |x| <= 10,
    4e-7 over the whole range: `_exp_reduced32`), float64 by libm."""
    return math.exp(x)


def exp_nonpositive_(x):
    """exp(x) for x <= 0 (or NaN): `exp_` without its overflow handling, a quarter fewer
    instructions. The caller guarantees the sign: softplus's exp(-|x|), and dA = exp(dt * A)
    for dt >= 0 (after softplus) and A <= 0 (every VMamba model: A = -exp(A_logs))."""
    return math.exp(x)


def log1p_(e):
    """log(1 + e) for e in [0, 1]; float32 by a vectorizable polynomial, float64 by libm."""
    return math.log1p(e)


def zero_of(a):
    """A zero of array `a`'s dtype (a float literal would promote float32 arithmetic to float64)."""
    return a.dtype.type(0)


@njit(**JIT)
def _exp_reduced32(x):
    """exp(x) = 2^z * exp(r) for x in [_EXP_LO, _EXP_HI]: (z, exp(r)) with z = round(x / ln2)
    and |r| <= ln2/2. exp(r) = 1 + r + r^2 q(r), q of degree 3: a minimax fit (relative error
    1.1e-7 before rounding, 2e-7 in float32 arithmetic) that saves three FMAs over Cephes'
    degree-7 expf polynomial at float32 precision.

    r = x - z ln2 takes one multiply by ln 2 rounded to float32, not Cody-Waite's two parts
    (an ln 2 split so that z times its first part is exact): under the kernels' fastmath flags
    LLVM reassociates the two-part form into this one, bit for bit (checked on 36.7 million
    arguments), and keeping the parts apart takes explicit FMA calls, which made exp 9% slower
    per element. The rounding of ln 2 puts an error of about |z| * 2e-9 into r, so the
    relative error of exp grows with |x|: at most 2e-7 for |x| <= 10, 3.9e-7 at the ends of
    the float32 range (measured against float64's exp), where the kernels' tolerance for float32
    is 2e-4."""
    z = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))  # np.floor keeps float32
    r = x - z * _LN2
    q = np.float32(0.008312525227665901) * r + np.float32(0.041890114545822144)
    q = q * r + np.float32(0.16667114198207855)
    q = q * r + np.float32(0.499992311000824)
    return np.int32(z), (q * (r * r) + r) + np.float32(1.0)


@overload(exp_)
def _exp_impl(x):
    if x == types.float32:

        def exp32(x):
            # The clamps are written so that NaN compares false and passes through unchanged.
            xc = _EXP_LO if x < _EXP_LO else x
            xc = _EXP_HI if xc > _EXP_HI else xc
            zi, p = _exp_reduced32(xc)
            # 2^z as two factors, each a valid normal float for z in [-126, 128].
            z1 = zi >> np.int32(1)
            s1 = _float32_from_bits((z1 + np.int32(127)) << np.int32(23))
            s2 = _float32_from_bits((zi - z1 + np.int32(127)) << np.int32(23))
            res = p * s1 * s2
            res = np.float32(0.0) if x < _EXP_LO else res
            return np.float32(np.inf) if x > _EXP_HI else res

        return exp32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


@overload(exp_nonpositive_)
def _exp_nonpositive_impl(x):
    if x == types.float32:

        def exp_nonpositive32(x):
            # z in [-126, 0]: 2^z is one normal float, and nothing can overflow.
            xc = _EXP_LO if x < _EXP_LO else x
            zi, p = _exp_reduced32(xc)
            res = p * _float32_from_bits((zi + np.int32(127)) << np.int32(23))
            return np.float32(0.0) if x < _EXP_LO else res

        return exp_nonpositive32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


@overload(log1p_)
def _log1p_impl(e):
    if e == types.float32:

        def log1p32(e):
            # log(1 + e) = e * P(e), P of degree 8: a Chebyshev least-squares fit of log1p(e)/e
            # on [0, 1] (relative error 1.9e-7 in float32). No division and no cancellation, so
            # reassociation under fastmath cannot spoil it, and tiny e gives e exactly.
            p = np.float32(0.005253457929939032)
            p = p * e + np.float32(-0.02958850748836994)
            p = p * e + np.float32(0.07836166769266129)
            p = p * e + np.float32(-0.13674770295619965)
            p = p * e + np.float32(0.19111430644989014)
            p = p * e + np.float32(-0.24844369292259216)
            p = p * e + np.float32(0.33319270610809326)
            p = p * e + np.float32(-0.49999502301216125)
            p = p * e + np.float32(1.0)
            return e * p

        return log1p32
    if e == types.float64:
        return lambda e: math.log1p(e)
    return None


@overload(zero_of)
def _zero_of_impl(a):
    if a.dtype == types.float32:
        return lambda a: np.float32(0.0)
    return lambda a: np.float64(0.0)


def softplus_(x):
    """softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|) (equation (1a) of
    `selective_scan.py`), accurate for all x, and x itself above SOFTPLUS_THRESHOLD, as torch's
    F.softplus and VMamba's CUDA kernels do (the reference's definition; in float64 the dropped
    e^-x is visible)."""
    if x > SOFTPLUS_THRESHOLD:
        return x
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid_(x):
    """sigmoid(x) = d softplus / dx, from e^-|x| so that it never overflows."""
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


def softplus_sigmoid_(x):
    """(softplus(x), its derivative) from one exponential: what the backward needs of delta.
    The derivative is sigmoid(x), and 1 above SOFTPLUS_THRESHOLD where softplus is x."""
    return softplus_(x), (1.0 if x > SOFTPLUS_THRESHOLD else sigmoid_(x))


def _typed(x, value):
    """`value` as a constant of x's float type, for use inside an overload's implementation."""
    return np.float32(value) if x == types.float32 else np.float64(value)


@overload(softplus_)
def _softplus_impl(x):
    if x not in (types.float32, types.float64):
        return None
    zero, threshold = _typed(x, 0.0), _typed(x, SOFTPLUS_THRESHOLD)

    def softplus(x):
        sp = (x if x > zero else zero) + log1p_(exp_nonpositive_(-abs(x)))
        return x if x > threshold else sp

    return softplus


@overload(softplus_sigmoid_)
def _softplus_sigmoid_impl(x):
    if x not in (types.float32, types.float64):
        return None
    zero, one = _typed(x, 0.0), _typed(x, 1.0)
    threshold = _typed(x, SOFTPLUS_THRESHOLD)

    def softplus_sigmoid(x):
        e = exp_nonpositive_(-abs(x))
        sg = one / (one + e) if x >= zero else e / (one + e)
        sp = (x if x > zero else zero) + log1p_(e)
        return (x, one) if x > threshold else (sp, sg)

    return softplus_sigmoid


@overload(sigmoid_)
def _sigmoid_impl(x):
    if x not in (types.float32, types.float64):
        return None
    one = _typed(x, 1.0)

    def sigmoid(x):
        e = exp_nonpositive_(-abs(x))
        return one / (one + e) if x >= 0 else e / (one + e)

    return sigmoid
