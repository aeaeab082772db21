"""How each einfold dtype lives in LLVM: its storage type in memory, the type arithmetic runs in, and loads,
stores and conversions between them (f16/bf16 compute in f32; complex values are (re, im) pairs of LLVM values)."""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from einfold import dtypes as dt
from einfold.errors import UnsupportedError

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()

Value = ir.Value | tuple[ir.Value, ir.Value]  # a scalar, or (re, im) for complex


@dataclass(frozen=True)
class Scalar:
    """An einfold element type seen from LLVM.

    kind: 'bool', 'int' (signed), 'uint', 'float' or 'complex'.
    element: the LLVM type of one stored component (i8 for bool, i16 for bf16, half, float, double, ...).
    compute: the LLVM type arithmetic runs in (i1 for bool, float for f16/bf16, the part type for complex).
    """

    dtype: dt.DType
    kind: str
    element: ir.Type
    compute: ir.Type

    @property
    def lanes(self) -> int:
        return 2 if self.kind == "complex" else 1

    @property
    def bits(self) -> int:
        return self.compute.width if isinstance(self.compute, ir.IntType) else {"float": 32, "double": 64}[
            str(self.compute)]


_SCALARS = {
    "bool": ("bool", I8, I1),
    "i8": ("int", I8, I8), "i16": ("int", I16, I16), "i32": ("int", I32, I32), "i64": ("int", I64, I64),
    "u8": ("uint", I8, I8), "u16": ("uint", I16, I16), "u32": ("uint", I32, I32), "u64": ("uint", I64, I64),
    "f16": ("float", F16, F32), "bf16": ("float", I16, F32), "f32": ("float", F32, F32), "f64": ("float", F64, F64),
    "c64": ("complex", F32, F32), "c128": ("complex", F64, F64),
}


def scalar(element: dt.DType, where: str = "") -> Scalar:
    """The LLVM view of a dtype, or UnsupportedError (zq is not implemented by this backend)."""
    if element.name not in _SCALARS:
        raise UnsupportedError(f"the llvm target does not support dtype {element}{' in ' + where if where else ''}; "
                               f"it supports {', '.join(_SCALARS)}")
    kind, storage, compute = _SCALARS[element.name]
    return Scalar(element, kind, storage, compute)


def element_pointer(b: ir.IRBuilder, base: ir.Value, sc: Scalar, index: ir.Value) -> ir.Value:
    """Address of element `index` (complex: of its real part)."""
    if sc.lanes == 2:
        index = b.shl(index, ir.Constant(I64, 1))
    return b.gep(base, [index], inbounds=True, source_etype=sc.element)


def load(b: ir.IRBuilder, base: ir.Value, sc: Scalar, index: ir.Value) -> Value:
    """Load element `index` of a buffer and widen it to the compute type."""
    address = element_pointer(b, base, sc, index)
    if sc.lanes == 2:
        imag_address = b.gep(address, [ir.Constant(I64, 1)], inbounds=True, source_etype=sc.element)
        return b.load(address, typ=sc.element), b.load(imag_address, typ=sc.element)
    raw = b.load(address, typ=sc.element)
    return widen(b, raw, sc)


def widen(b: ir.IRBuilder, raw: ir.Value, sc: Scalar) -> ir.Value:
    """A stored element as a compute value."""
    if sc.kind == "bool":
        return b.icmp_unsigned("!=", raw, ir.Constant(I8, 0))
    if sc.dtype.name == "f16":
        return b.fpext(raw, F32)
    if sc.dtype.name == "bf16":
        return b.bitcast(b.shl(b.zext(raw, I32), ir.Constant(I32, 16)), F32)
    return raw


def narrow(b: ir.IRBuilder, value: ir.Value, sc: Scalar) -> ir.Value:
    """A compute value as the stored element (f16/bf16 round to nearest even)."""
    if sc.kind == "bool":
        return b.zext(value, I8)
    if sc.dtype.name == "f16":
        return b.fptrunc(value, F16)
    if sc.dtype.name == "bf16":
        bits = b.bitcast(value, I32)
        lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
        rounded = b.lshr(b.add(bits, b.add(lsb, ir.Constant(I32, 0x7FFF))), ir.Constant(I32, 16))
        is_nan = b.fcmp_unordered("uno", value, value)
        quiet = b.or_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 0x40))
        return b.trunc(b.select(is_nan, quiet, rounded), I16)
    return value


def store(b: ir.IRBuilder, value: Value, base: ir.Value, sc: Scalar, index: ir.Value) -> None:
    address = element_pointer(b, base, sc, index)
    if sc.lanes == 2:
        re, im = value
        b.store(re, address)
        b.store(im, b.gep(address, [ir.Constant(I64, 1)], inbounds=True, source_etype=sc.element))
        return
    b.store(narrow(b, value, sc), address)


def constant(sc: Scalar, value: complex | float | int | bool) -> Value:
    """A compute-type constant (the caller has already rounded `value` to the dtype, as numpy would)."""
    if sc.kind == "complex":
        value = complex(value)
        return ir.Constant(sc.compute, value.real), ir.Constant(sc.compute, value.imag)
    if sc.kind == "float":
        return ir.Constant(sc.compute, float(value))
    if sc.kind == "bool":
        return ir.Constant(I1, int(bool(value)))
    bits = sc.compute.width
    return ir.Constant(sc.compute, int(value) & ((1 << bits) - 1))


def zero(sc: Scalar) -> Value:
    return constant(sc, 0)


def one(sc: Scalar) -> Value:
    return constant(sc, 1)


def convert(b: ir.IRBuilder, value: Value, src: Scalar, dst: Scalar) -> Value:
    """numpy's `astype` between compute values: complex drops the imaginary part, floats truncate toward zero
    into integers, anything nonzero is True."""
    if dst.kind == "complex":
        if src.kind == "complex":
            return tuple(_float_to_float(b, part, src, dst) for part in value)  # type: ignore[return-value]
        return convert(b, value, src, _part_scalar(dst)), ir.Constant(dst.compute, 0.0)
    if src.kind == "complex":
        re, im = value
        if dst.kind == "bool":
            zero_part = ir.Constant(src.compute, 0.0)
            return b.or_(b.fcmp_unordered("!=", re, zero_part), b.fcmp_unordered("!=", im, zero_part))
        return convert(b, re, _part_scalar(src), dst)
    if dst.kind == "bool":
        if src.kind == "float":
            return b.fcmp_unordered("!=", value, ir.Constant(src.compute, 0.0))
        if src.kind == "bool":
            return value
        return b.icmp_unsigned("!=", value, ir.Constant(src.compute, 0))
    if dst.kind == "float":
        if src.kind == "float":
            return _float_to_float(b, value, src, dst)
        if src.kind == "int":
            return b.sitofp(value, dst.compute)
        return b.uitofp(value, dst.compute)
    # integer destination
    if src.kind == "float":
        return b.fptosi(value, dst.compute) if dst.kind == "int" else b.fptoui(value, dst.compute)
    width, target = src.compute.width, dst.compute.width
    if width == target:
        return value
    if width > target:
        return b.trunc(value, dst.compute)
    return b.sext(value, dst.compute) if src.kind == "int" else b.zext(value, dst.compute)


def _part_scalar(sc: Scalar) -> Scalar:
    """The real type of a complex one."""
    return scalar(dt.float32 if sc.dtype.name == "c64" else dt.float64)


def _float_to_float(b: ir.IRBuilder, value: ir.Value, src: Scalar, dst: Scalar) -> ir.Value:
    if src.compute == dst.compute:
        return value
    if src.compute == F32:
        return b.fpext(value, F64)
    if dst.dtype.name == "f16":
        return round_to_odd_f32(b, value)  # numpy rounds f64 -> f16 once; ml_dtypes' bf16 goes through f32
    return b.fptrunc(value, F32)


def round_to_odd_f32(b: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """double -> float rounded to odd, so that a later rounding to f16 is correctly rounded (no double rounding):
    truncate toward zero, then set the last bit when inexact."""
    nearest = b.fptrunc(value, F32)
    back = b.fpext(nearest, F64)
    inexact = b.fcmp_ordered("!=", back, value)
    magnitude_up = b.fcmp_ordered(">", b.call(intrinsic(b.module, "llvm.fabs", F64), [back]),
                                  b.call(intrinsic(b.module, "llvm.fabs", F64), [value]))
    bits = b.bitcast(nearest, I32)
    toward_zero = b.select(magnitude_up, b.sub(bits, ir.Constant(I32, 1)), bits)
    odd = b.or_(toward_zero, ir.Constant(I32, 1))
    finite = b.fcmp_ordered("<", b.call(intrinsic(b.module, "llvm.fabs", F32), [nearest]),
                            ir.Constant(F32, float("inf")))
    return b.bitcast(b.select(b.and_(inexact, finite), odd, bits), F32)


def intrinsic(module: ir.Module, name: str, typ: ir.Type, arity: int = 1) -> ir.Function:
    """Declare (once) an overloaded LLVM intrinsic such as `llvm.exp.f32` or `llvm.fma.v8f32`."""
    suffix = _type_suffix(typ)
    full = f"{name}.{suffix}"
    if full in module.globals:
        return module.globals[full]
    return ir.Function(module, ir.FunctionType(typ, [typ] * arity), full)


def _type_suffix(typ: ir.Type) -> str:
    if isinstance(typ, ir.VectorType):
        return f"v{typ.count}{_type_suffix(typ.element)}"
    if isinstance(typ, ir.IntType):
        return f"i{typ.width}"
    return {"float": "f32", "double": "f64", "half": "f16"}[str(typ)]
