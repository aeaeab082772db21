"""Scalar arithmetic of the `tvm` backend on TVM expressions: storage <-> compute conversions per einfold dtype,
complex numbers as (re, im) pairs, casts, and every elementwise op and `map` function of `compiler/functions.py`.

f16/bf16 compute in f32 and round when stored (as numpy does); bool is held as uint8 0/1; bf16 is held as its
uint16 bit pattern; complex tensors carry a trailing axis of 2 (re, im), the layout numpy's complex arrays have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx

from einfold import dtypes as dt
from einfold.errors import UnsupportedError
from einfold.functions import lookup


@dataclass(frozen=True)
class Storage:
    """How values of one einfold dtype live in TVM: buffer element type, arithmetic type, numpy view type."""

    buffer: str
    compute: str
    complex: bool
    numpy_view: np.dtype


STORAGE: dict[str, Storage] = {
    "bool": Storage("uint8", "uint8", False, np.dtype(np.uint8)),
    "i8": Storage("int8", "int8", False, np.dtype(np.int8)),
    "i16": Storage("int16", "int16", False, np.dtype(np.int16)),
    "i32": Storage("int32", "int32", False, np.dtype(np.int32)),
    "i64": Storage("int64", "int64", False, np.dtype(np.int64)),
    "u8": Storage("uint8", "uint8", False, np.dtype(np.uint8)),
    "u16": Storage("uint16", "uint16", False, np.dtype(np.uint16)),
    "u32": Storage("uint32", "uint32", False, np.dtype(np.uint32)),
    "u64": Storage("uint64", "uint64", False, np.dtype(np.uint64)),
    "f16": Storage("float16", "float32", False, np.dtype(np.float16)),
    "bf16": Storage("uint16", "float32", False, np.dtype(np.uint16)),
    "f32": Storage("float32", "float32", False, np.dtype(np.float32)),
    "f64": Storage("float64", "float64", False, np.dtype(np.float64)),
    "c64": Storage("float32", "float32", True, np.dtype(np.float32)),
    "c128": Storage("float64", "float64", True, np.dtype(np.float64)),
}


def storage(element: dt.DType, where: str = "") -> Storage:
    """The storage of a dtype, or UnsupportedError (e.g. zq(q): no exact modular arithmetic here)."""
    if element.name not in STORAGE:
        raise UnsupportedError(f"the tvm target does not support dtype {element}{where}; it supports "
                               f"{', '.join(STORAGE)}")
    return STORAGE[element.name]


class Complex:
    """A complex scalar as two real TVM expressions, with the arithmetic the lowering needs."""

    def __init__(self, re: tirx.Expr, im: tirx.Expr):
        self.re, self.im = re, im

    def __add__(self, other: Complex) -> Complex:
        return Complex(self.re + other.re, self.im + other.im)

    def __sub__(self, other: Complex) -> Complex:
        return Complex(self.re - other.re, self.im - other.im)

    def __mul__(self, other: Complex) -> Complex:
        return Complex(self.re * other.re - self.im * other.im, self.re * other.im + self.im * other.re)

    def __truediv__(self, other: Complex) -> Complex:
        # Smith's algorithm, as numpy divides complex numbers: scale by the larger part of the divisor.
        big_re = tirx.abs(other.re) >= tirx.abs(other.im)
        r1 = other.im / other.re
        d1 = other.re + other.im * r1
        r2 = other.re / other.im
        d2 = other.im + other.re * r2
        return Complex(tirx.Select(big_re, (self.re + self.im * r1) / d1, (self.re * r2 + self.im) / d2),
                       tirx.Select(big_re, (self.im - self.re * r1) / d1, (self.im * r2 - self.re) / d2))

    def __neg__(self) -> Complex:
        return Complex(-self.re, -self.im)


Scalar = tirx.Expr | Complex


def dtype_of(expr: tirx.Expr) -> str:
    """The element type of a TVM expression ('float32', 'int8', ...)."""
    dtype = getattr(expr, "dtype", None)  # tensor elements (ProducerLoad/TensorSlice) carry it directly
    return str(dtype) if dtype is not None else str(expr.ty)


def const(value: complex | float | int | bool, element: dt.DType) -> Scalar:
    """A constant of `element` in its compute type (rounded to the storage type first, as numpy stores it)."""
    store = storage(element)
    stored = np.asarray(value).astype(element.numpy)
    if store.complex:
        return Complex(tirx.const(float(stored.real), store.compute), tirx.const(float(stored.imag), store.compute))
    if element.is_float:
        return tirx.const(float(stored.astype(np.float64)), store.compute)
    return tirx.const(int(stored), store.compute)


def zero(element: dt.DType) -> Scalar:
    return const(0, element)


def from_storage(loaded: tirx.Expr, element: dt.DType) -> tirx.Expr:
    """A stored element (one real part for complex) in its compute type."""
    if element.name == "f16":
        return loaded.astype("float32")
    if element.name == "bf16":
        return tirx.reinterpret("float32", loaded.astype("uint32") << tirx.const(16, "uint32"))
    return loaded


def to_storage(value: tirx.Expr, element: dt.DType) -> tirx.Expr:
    """A compute-type value (one real part for complex) rounded to its stored form."""
    if element.name == "f16":
        return value.astype("float16")
    if element.name == "bf16":
        # Round to nearest even on the top 16 bits; NaN becomes the canonical quiet NaN.
        bits = tirx.reinterpret("uint32", value)
        rounded = (bits + tirx.const(0x7FFF, "uint32") + ((bits >> tirx.const(16, "uint32")) & tirx.const(1, "uint32"))
                   ) >> tirx.const(16, "uint32")
        return tirx.Select(tirx.isnan(value), tirx.const(0x7FC0, "uint16"), rounded.astype("uint16"))
    return value.astype(STORAGE[element.name].buffer)


def round_trip(value: Scalar, element: dt.DType) -> Scalar:
    """The value as it reads back after being stored as `element` (rounding for f16/bf16)."""
    if element.name in ("f16", "bf16"):
        return from_storage(to_storage(value, element), element)
    return value


def cast(value: Scalar, target: dt.DType) -> Scalar:
    """The reference's astype to `target`, in compute types (complex -> real keeps the real part, -> bool tests
    both parts)."""
    target_store = storage(target)
    if target.name == "bool":
        if isinstance(value, Complex):  # nonzero when either part is
            return tirx.Select(tirx.Or(value.re != 0, value.im != 0), tirx.const(1, "uint8"), tirx.const(0, "uint8"))
        return tirx.Select(value != tirx.const(0, dtype_of(value)), tirx.const(1, "uint8"), tirx.const(0, "uint8"))
    if isinstance(value, Complex):
        if target_store.complex:
            return Complex(value.re.astype(target_store.compute), value.im.astype(target_store.compute))
        value = value.re  # to a real type: the real part, as numpy's astype
    if target_store.complex:
        return Complex(value.astype(target_store.compute), tirx.const(0, target_store.compute))
    if target.name in ("f16", "bf16") and dtype_of(value) == "float64":
        value = value.astype("float16") if target.name == "f16" else value  # round once, straight from f64
    return round_trip(value.astype(target_store.compute), target)


# ----- elementwise binary ops ------------------------------------------------------------------------------------

def binary(opcode: str, a: Scalar, b: Scalar, element: dt.DType) -> Scalar:
    """add/sub/mul/div/pow with numpy's semantics for `element` (ints wrap and divide truncating)."""
    if element.name == "bool":
        return tirx.max(a, b) if opcode == "add" else tirx.min(a, b)
    if isinstance(a, Complex):
        if opcode == "pow":
            return complex_pow(a, b)
        return {"add": a.__add__, "sub": a.__sub__, "mul": a.__mul__, "div": a.__truediv__}[opcode](b)
    if element.is_int:
        if opcode == "div":
            return int_div(a, b, element)
        if opcode == "pow":
            raise UnsupportedError("integer pow is lowered in stages (Lowerer._int_pow), not as one expression")
    if opcode == "pow":
        return tirx.pow(a, b)
    return {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a / b}[opcode]()


def int_div(a: tirx.Expr, b: tirx.Expr, element: dt.DType) -> tirx.Expr:
    """C division (truncating) that never traps: b == 0 is reported by a check stage; x / -1 is -x (wrapping)."""
    one = tirx.const(1, dtype_of(a))
    if element.name.startswith("u"):
        return tirx.truncdiv(a, tirx.Select(b == 0, one, b))
    minus_one = tirx.const(-1, dtype_of(a))
    safe = tirx.Select(tirx.Or(b == 0, b == minus_one), one, b)
    return tirx.Select(b == minus_one, tirx.const(0, dtype_of(a)) - a, tirx.truncdiv(a, safe))


POW_BITS_PER_STAGE = 4


def int_pow_steps(result: tirx.Expr, power: tirx.Expr, exponent: tirx.Expr, bits: range) -> tuple[tirx.Expr, tirx.Expr]:
    """Square-and-multiply over some bits of the exponent: result *= power for each set bit, power squared each
    step (wrapping like numpy). Only a few bits per stage: TVM's passes grow exponentially with nesting depth."""
    dtype = dtype_of(power)
    one = tirx.const(1, dtype)
    for i in bits:
        bit = (exponent >> tirx.const(i, dtype)) & one
        result = result * tirx.Select(bit == one, power, one)
        power = power * power
    return result, power


# ----- map functions ---------------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = 0.7978845608028654


def _like(x: Scalar, value: float) -> Scalar:
    if isinstance(x, Complex):
        return Complex(tirx.const(value, dtype_of(x.re)), tirx.const(0.0, dtype_of(x.re)))
    return tirx.const(value, dtype_of(x))


def _libm(name: str, x: tirx.Expr) -> tirx.Expr:
    """A C math library call (more accurate than TVM's inline expansions), e.g. tanh/tanhf."""
    return tirx.call_pure_extern(dtype_of(x), name + ("f" if dtype_of(x) == "float32" else ""), x)


def complex_exp(z: Complex) -> Complex:
    scale = tirx.exp(z.re)
    return Complex(scale * tirx.cos(z.im), scale * tirx.sin(z.im))


def complex_log(z: Complex) -> Complex:
    return Complex(tirx.log(tirx.hypot(z.re, z.im)), tirx.atan2(z.im, z.re))


def complex_pow(a: Complex, b: Complex) -> Complex:
    """exp(b log a), with numpy's values at a = 0: 1 for b = 0, else 0."""
    value = complex_exp(complex_log(a) * b)
    zero_, one = tirx.const(0.0, dtype_of(a.re)), tirx.const(1.0, dtype_of(a.re))
    base_zero = tirx.And(a.re == zero_, a.im == zero_)
    exponent_zero = tirx.And(b.re == zero_, b.im == zero_)
    at_zero = tirx.Select(exponent_zero, one, zero_)
    return Complex(tirx.Select(base_zero, at_zero, value.re), tirx.Select(base_zero, zero_, value.im))


def complex_sqrt(z: Complex) -> Complex:
    """Principal square root: t = sqrt((|z| + |re|) / 2), then the other part is im / 2t."""
    zero_ = tirx.const(0.0, dtype_of(z.re))
    t = tirx.sqrt((tirx.hypot(z.re, z.im) + tirx.abs(z.re)) * tirx.const(0.5, dtype_of(z.re)))
    safe_t = tirx.Select(t == zero_, tirx.const(1.0, dtype_of(t)), t)
    other = z.im / (safe_t + safe_t)
    positive = z.re >= zero_
    re = tirx.Select(positive, t, tirx.abs(other))
    im = tirx.Select(positive, other, tirx.Select(z.im < zero_, -t, t))
    return Complex(tirx.Select(t == zero_, zero_, re), tirx.Select(t == zero_, zero_, im))


def _tanh(x: Scalar) -> Scalar:
    if isinstance(x, Complex):
        e = complex_exp(x + x)
        return (e - _like(x, 1.0)) / (e + _like(x, 1.0))
    return _libm("tanh", x)


def _exp(x: Scalar) -> Scalar:
    return complex_exp(x) if isinstance(x, Complex) else tirx.exp(x)


def _relu(x: Scalar, element: dt.DType) -> Scalar:
    if isinstance(x, Complex):
        # numpy's maximum(z, 0) orders complex numbers lexicographically.
        zero_ = tirx.const(0.0, dtype_of(x.re))
        keep = tirx.Or(x.re > zero_, tirx.And(x.re == zero_, x.im > zero_))
        return Complex(tirx.Select(keep, x.re, zero_), tirx.Select(keep, x.im, zero_))
    if element.is_float:  # NaN propagates, as in np.maximum
        return tirx.Select(tirx.isnan(x), x, tirx.max(x, tirx.const(0, dtype_of(x))))
    return tirx.max(x, tirx.const(0, dtype_of(x)))


def _abs(x: Scalar, element: dt.DType) -> Scalar:
    if isinstance(x, Complex):
        return Complex(tirx.hypot(x.re, x.im), tirx.const(0.0, dtype_of(x.re)))
    if element.name == "bool" or element.name.startswith("u"):
        return x
    return tirx.abs(x)


def _poly(x: Scalar, coeffs: list[float], element: dt.DType) -> Scalar:
    """Horner's rule from the highest coefficient, each coefficient in the value's type (as the reference)."""
    result = zero(element)
    for c in reversed(coeffs):
        if isinstance(x, Complex):
            term = Complex(tirx.const(float(c), dtype_of(x.re)), tirx.const(0.0, dtype_of(x.re)))
        elif element.is_float:
            term = tirx.const(float(c), dtype_of(x))
        else:
            term = tirx.const(int(np.asarray(c).astype(element.numpy)), dtype_of(x))
        result = result * x + term
    return result


def apply_map(fn_name: str, x: Scalar, element: dt.DType, coeffs: list[float] | None = None) -> Scalar:
    """The `map` function `fn_name` on one element (f16/bf16 already widened to f32)."""
    fn = lookup(fn_name).name
    if fn == "relu":
        return _relu(x, element)
    if fn == "abs":
        return _abs(x, element)
    if fn == "square":
        return x * x
    if fn == "poly":
        return _poly(x, coeffs or [], element)
    if fn == "exp":
        return _exp(x)
    if fn == "log":
        return complex_log(x) if isinstance(x, Complex) else tirx.log(x)
    if fn == "tanh":
        return _tanh(x)
    if fn == "sqrt":
        return complex_sqrt(x) if isinstance(x, Complex) else tirx.sqrt(x)
    if fn == "reciprocal":
        return _like(x, 1.0) / x
    if fn == "sigmoid":
        return _like(x, 1.0) / (_like(x, 1.0) + _exp(-x))
    if fn == "gelu":
        inner = _like(x, _SQRT_2_OVER_PI) * (x + _like(x, 0.044715) * x * x * x)
        return _like(x, 0.5) * x * (_like(x, 1.0) + _tanh(inner))
    raise UnsupportedError(f"the tvm target has no lowering for map function {fn!r}")
