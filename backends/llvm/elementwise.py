"""Scalar semantics of the elementwise ops as tables of emitters (one entry per op and kind of dtype):
`add sub mul div pow` (numpy rules: ints wrap, integer division truncates, bool add/mul are or/and), `neg`,
every `map` function of `einfold.functions` and `cast`. Loop nests call these per element; none of them loops."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from llvmlite import ir

from einfold.errors import UnsupportedError

from .loops import loop_carry
from .scalars import I1, I32, Scalar, Value, constant, convert, intrinsic, one, zero

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
ERROR_DIVIDE_BY_ZERO = 1
ERROR_NEGATIVE_POWER = 2
ERROR_MESSAGES = {
    ERROR_DIVIDE_BY_ZERO: "integer division by zero",
    ERROR_NEGATIVE_POWER: "integers to negative integer powers are not allowed",
}


@dataclass
class Emitter:
    """What an emitter needs: the builder, the module's error flag and the fast-math flags for float adds and
    multiplies (empty for elementwise ops, which must round like numpy; einsum sums may reassociate)."""

    b: ir.IRBuilder
    error_flag: ir.GlobalVariable
    float_flags: tuple[str, ...] = ()

    def fail_if(self, condition: ir.Value, code: int) -> None:
        """Record error `code` (read back after the call) when `condition` holds."""
        with self.b.if_then(condition, likely=False):
            self.b.store(ir.Constant(I32, code), self.error_flag)

    def call(self, name: str, typ: ir.Type, *args: ir.Value) -> ir.Value:
        return self.b.call(intrinsic(self.b.module, name, typ, len(args)), list(args))


# ----- arithmetic by kind -----------------------------------------------------------------------------------

def add(e: Emitter, sc: Scalar, x: Value, y: Value) -> Value:
    b = e.b
    if sc.kind == "complex":
        return b.fadd(x[0], y[0], flags=e.float_flags), b.fadd(x[1], y[1], flags=e.float_flags)
    if sc.kind == "float":
        return b.fadd(x, y, flags=e.float_flags)
    if sc.kind == "bool":
        return b.or_(x, y)
    return b.add(x, y)


def sub(e: Emitter, sc: Scalar, x: Value, y: Value) -> Value:
    b = e.b
    if sc.kind == "complex":
        return b.fsub(x[0], y[0]), b.fsub(x[1], y[1])
    if sc.kind == "float":
        return b.fsub(x, y)
    return b.sub(x, y)


def mul(e: Emitter, sc: Scalar, x: Value, y: Value) -> Value:
    b = e.b
    flags = e.float_flags
    if sc.kind == "complex":
        (xr, xi), (yr, yi) = x, y
        return (b.fsub(b.fmul(xr, yr, flags=flags), b.fmul(xi, yi, flags=flags), flags=flags),
                b.fadd(b.fmul(xr, yi, flags=flags), b.fmul(xi, yr, flags=flags), flags=flags))
    if sc.kind == "float":
        return b.fmul(x, y, flags=flags)
    if sc.kind == "bool":
        return b.and_(x, y)
    return b.mul(x, y)


def div(e: Emitter, sc: Scalar, x: Value, y: Value) -> Value:
    b = e.b
    if sc.kind == "float":
        return b.fdiv(x, y)
    if sc.kind == "complex":
        return _complex_div(e, sc, x, y)
    zero_value = ir.Constant(sc.compute, 0)
    is_zero = b.icmp_unsigned("==", y, zero_value)
    e.fail_if(is_zero, ERROR_DIVIDE_BY_ZERO)
    safe = b.select(is_zero, ir.Constant(sc.compute, 1), y)
    if sc.kind == "uint":
        return b.udiv(x, safe)
    # x / -1 is -x (wrapping), avoiding the trap of INT_MIN / -1.
    minus_one = b.icmp_signed("==", safe, ir.Constant(sc.compute, -1))
    return b.select(minus_one, b.sub(zero_value, x), b.sdiv(x, b.select(minus_one, ir.Constant(sc.compute, 1), safe)))


def _complex_div(e: Emitter, sc: Scalar, x: Value, y: Value) -> Value:
    """numpy's complex division (Smith's method, scaled by the larger part of the divisor)."""
    b = e.b
    (ar, ai), (br, bi) = x, y
    fabs = lambda v: e.call("llvm.fabs", sc.compute, v)  # noqa: E731
    unit = ir.Constant(sc.compute, 1.0)
    real_larger = b.fcmp_ordered(">=", fabs(br), fabs(bi))
    # |br| >= |bi|
    rat1 = b.fdiv(bi, br)
    scl1 = b.fdiv(unit, b.fadd(br, b.fmul(bi, rat1)))
    re1 = b.fmul(b.fadd(ar, b.fmul(ai, rat1)), scl1)
    im1 = b.fmul(b.fsub(ai, b.fmul(ar, rat1)), scl1)
    # |br| < |bi|
    rat2 = b.fdiv(br, bi)
    scl2 = b.fdiv(unit, b.fadd(bi, b.fmul(br, rat2)))
    re2 = b.fmul(b.fadd(b.fmul(ar, rat2), ai), scl2)
    im2 = b.fmul(b.fsub(b.fmul(ai, rat2), ar), scl2)
    # 0 / 0: numpy divides the parts by the zero magnitudes (nan or inf)
    zero_part = ir.Constant(sc.compute, 0.0)
    both_zero = b.and_(b.fcmp_ordered("==", br, zero_part), b.fcmp_ordered("==", bi, zero_part))
    re0, im0 = b.fdiv(ar, fabs(br)), b.fdiv(ai, fabs(bi))
    re = b.select(both_zero, re0, b.select(real_larger, re1, re2))
    im = b.select(both_zero, im0, b.select(real_larger, im1, im2))
    return re, im


def power(e: Emitter, sc: Scalar, x: Value, y: Value) -> Value:
    if sc.kind == "float":
        return e.call("llvm.pow", sc.compute, x, y)
    if sc.kind in ("int", "uint"):
        return _integer_power(e, sc, x, y)
    raise UnsupportedError(f"the llvm target has no pow for {sc.dtype}")


def _integer_power(e: Emitter, sc: Scalar, base: ir.Value, exponent: ir.Value) -> ir.Value:
    """Exponentiation by squaring; a negative exponent is an error, as in numpy."""
    b = e.b
    if sc.kind == "int":
        e.fail_if(b.icmp_signed("<", exponent, ir.Constant(sc.compute, 0)), ERROR_NEGATIVE_POWER)
    width = sc.compute.width
    state = [one(sc), base, exponent]
    with loop_carry(b, 0, width, state, name="pow") as (_, (result, square, rest), following):
        odd = b.trunc(rest, I1)
        following += [b.select(odd, b.mul(result, square), result), b.mul(square, square),
                      b.lshr(rest, ir.Constant(sc.compute, 1))]
    return state[0]


BINARY: dict[str, Callable[[Emitter, Scalar, Value, Value], Value]] = {
    "add": add, "sub": sub, "mul": mul, "div": div, "pow": power,
}


def binary(e: Emitter, opcode: str, sc: Scalar, x: Value, y: Value) -> Value:
    return BINARY[opcode](e, sc, x, y)


# ----- unary ops and map functions ----------------------------------------------------------------------------

def neg(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    if sc.kind == "complex":
        return e.b.fneg(x[0]), e.b.fneg(x[1])
    if sc.kind == "float":
        return e.b.fneg(x)
    return e.b.sub(ir.Constant(sc.compute, 0), x)


def _relu(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    b = e.b
    if sc.kind == "float":
        return b.select(b.fcmp_ordered("<", x, zero(sc)), zero(sc), x)
    if sc.kind == "int":
        return b.select(b.icmp_signed("<", x, zero(sc)), zero(sc), x)
    return x


def _abs(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    b = e.b
    if sc.kind == "float":
        return e.call("llvm.fabs", sc.compute, x)
    if sc.kind == "int":
        return b.select(b.icmp_signed("<", x, zero(sc)), b.sub(zero(sc), x), x)
    if sc.kind == "complex":
        re, im = x
        magnitude = e.call("llvm.sqrt", sc.compute, b.fadd(b.fmul(re, re), b.fmul(im, im)))
        return magnitude, ir.Constant(sc.compute, 0.0)
    return x


def _float_unary(name: str) -> Callable[[Emitter, Scalar, Value, dict[str, Any]], Value]:
    def emit(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
        return e.call(name, sc.compute, x)
    return emit


def _float(sc: Scalar, value: float) -> ir.Constant:
    return ir.Constant(sc.compute, value)


def _sigmoid(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    b = e.b
    denominator = b.fadd(_float(sc, 1.0), e.call("llvm.exp", sc.compute, b.fneg(x)))
    return b.fdiv(_float(sc, 1.0), denominator)


def _gelu(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x * x * x))), in the reference's order."""
    b = e.b
    cubic = b.fmul(b.fmul(b.fmul(_float(sc, 0.044715), x), x), x)
    inner = b.fmul(_float(sc, SQRT_2_OVER_PI), b.fadd(x, cubic))
    half_x = b.fmul(_float(sc, 0.5), x)
    return b.fmul(half_x, b.fadd(_float(sc, 1.0), e.call("llvm.tanh", sc.compute, inner)))


def _reciprocal(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    return div(e, sc, one(sc), x)


def _square(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    return mul(e, sc, x, x)


def _poly(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    """Horner's rule with the coefficients rounded to the compute dtype first, as the reference does."""
    storage = np.float32 if sc.dtype.name in ("f16", "bf16") else sc.dtype.numpy
    result = zero(sc)
    for c in reversed(attrs["coeffs"]):
        coefficient = np.asarray(c).astype(storage).item()
        result = add(e, sc, mul(e, sc, result, x), constant(sc, coefficient))
    return result


def _complex_exp(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    re, im = x
    scale = e.call("llvm.exp", sc.compute, re)
    return e.b.fmul(scale, e.call("llvm.cos", sc.compute, im)), e.b.fmul(scale, e.call("llvm.sin", sc.compute, im))


def _complex_log(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    re, im = x
    magnitude, _ = _abs(e, sc, x, attrs)
    return e.call("llvm.log", sc.compute, magnitude), e.call("llvm.atan2", sc.compute, im, re)


def _complex_sqrt(e: Emitter, sc: Scalar, x: Value, attrs: dict[str, Any]) -> Value:
    """sqrt(z): t = sqrt((|z| + |re|) / 2); (t, im / 2t) when re >= 0, else (|im| / 2t, t with im's sign)."""
    b = e.b
    re, im = x
    magnitude, _ = _abs(e, sc, x, attrs)
    t = e.call("llvm.sqrt", sc.compute, b.fmul(b.fadd(magnitude, e.call("llvm.fabs", sc.compute, re)),
                                              _float(sc, 0.5)))
    twice_t = b.fmul(t, _float(sc, 2.0))
    nonnegative = b.fcmp_ordered(">=", re, _float(sc, 0.0))
    out_re = b.select(nonnegative, t, b.fdiv(e.call("llvm.fabs", sc.compute, im), twice_t))
    out_im = b.select(nonnegative, b.fdiv(im, twice_t), e.call("llvm.copysign", sc.compute, t, im))
    is_zero = b.fcmp_ordered("==", t, _float(sc, 0.0))
    return b.select(is_zero, _float(sc, 0.0), out_re), b.select(is_zero, im, out_im)


_ANY = ("bool", "int", "uint", "float", "complex")
UnaryEmitter = Callable[[Emitter, Scalar, Value, dict[str, Any]], Value]
UNARY: dict[tuple[str, str], UnaryEmitter] = {
    **{("neg", kind): neg for kind in ("int", "float", "complex")},
    **{("relu", kind): _relu for kind in ("bool", "int", "uint", "float")},
    **{("abs", kind): _abs for kind in _ANY},
    **{("square", kind): _square for kind in _ANY},
    **{("poly", kind): _poly for kind in _ANY},
    ("exp", "float"): _float_unary("llvm.exp"),
    ("log", "float"): _float_unary("llvm.log"),
    ("tanh", "float"): _float_unary("llvm.tanh"),
    ("sqrt", "float"): _float_unary("llvm.sqrt"),
    ("sigmoid", "float"): _sigmoid,
    ("gelu", "float"): _gelu,
    ("reciprocal", "float"): _reciprocal,
    ("reciprocal", "complex"): _reciprocal,
    ("exp", "complex"): _complex_exp,
    ("log", "complex"): _complex_log,
    ("sqrt", "complex"): _complex_sqrt,
}


def unary_emitter(opcode: str, attrs: dict[str, Any], sc: Scalar, where: str) -> UnaryEmitter:
    """The emitter of `neg` or `map fn`, or UnsupportedError naming the op when this dtype has none."""
    name = attrs["fn"] if opcode == "map" else opcode
    emitter = UNARY.get((name, sc.kind))
    if emitter is None:
        raise UnsupportedError(f"{where}: the llvm target does not implement {name} on {sc.dtype}")
    return emitter


def check_binary(opcode: str, sc: Scalar, where: str) -> None:
    if opcode == "pow" and sc.kind not in ("int", "uint", "float"):
        raise UnsupportedError(f"{where}: the llvm target does not implement pow on {sc.dtype}")


def cast(e: Emitter, x: Value, src: Scalar, dst: Scalar) -> Value:
    return convert(e.b, x, src, dst)


def apply(e: Emitter, op: Any, operand_scalars: list[Scalar], result: Scalar, args: list[Value]) -> Value:
    """The value of one elementwise op (add..pow, neg, map, cast) from its operands' values."""
    where = f"{op.opcode} defining %{op.result}"
    if op.opcode in BINARY:
        check_binary(op.opcode, result, where)
        return binary(e, op.opcode, result, args[0], args[1])
    if op.opcode in ("neg", "map"):
        return unary_emitter(op.opcode, op.attrs, result, where)(e, result, args[0], op.attrs)
    if op.opcode == "cast":
        return cast(e, args[0], operand_scalars[0], result)
    raise UnsupportedError(f"{where}: not an elementwise op")


def check(op: Any, operand_scalars: list[Scalar], result: Scalar) -> None:
    """Raise UnsupportedError at compile time for an elementwise op this target cannot emit."""
    where = f"{op.opcode} defining %{op.result}"
    if op.opcode in BINARY:
        check_binary(op.opcode, result, where)
    elif op.opcode in ("neg", "map"):
        unary_emitter(op.opcode, op.attrs, result, where)
