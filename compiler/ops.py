"""The op set of the IR, as one table: for each opcode, how its result type and FLOP count follow
from its operand types and attributes. The builder, the verifier and the stats all read it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dtypes as dt
from .errors import IRError, SpecError
from .functions import lookup
from .spec import EinsumSpec


@dataclass(frozen=True)
class TensorType:
    """Shape and element type of an SSA value."""

    shape: tuple[int, ...]
    dtype: dt.DType

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        raise IRError(f"shapes {a} and {b} do not broadcast") from None


def _expect_operands(opcode: str, types: list[TensorType], count: int) -> None:
    if len(types) != count:
        raise IRError(f"{opcode} takes {count} operand(s), got {len(types)}")


def _elementwise_binary(opcode: str, types: list[TensorType], attrs: dict, declared: TensorType | None) -> TensorType:
    _expect_operands(opcode, types, 2)
    a, b = types
    if a.dtype != b.dtype:
        raise IRError(f"{opcode}: operand dtypes differ ({a.dtype} vs {b.dtype}); insert a cast")
    if a.dtype.is_modular and opcode in ("div", "pow"):
        raise IRError(f"{opcode} is not defined on {a.dtype}")
    if a.dtype.name == "bool" and opcode in ("sub", "div", "pow"):
        raise IRError(f"{opcode} is not defined on bool")
    return TensorType(broadcast_shapes(a.shape, b.shape), a.dtype)


def _neg(opcode: str, types: list[TensorType], attrs: dict, declared: TensorType | None) -> TensorType:
    _expect_operands(opcode, types, 1)
    if types[0].dtype.name == "bool" or types[0].dtype.name.startswith("u"):
        raise IRError(f"neg is not defined on {types[0].dtype}")
    return types[0]


def _einsum(opcode: str, types: list[TensorType], attrs: dict, declared: TensorType | None) -> TensorType:
    spec = EinsumSpec.parse(attrs["spec"])
    if len(types) != len(spec.inputs):
        raise IRError(f"einsum '{spec}' names {len(spec.inputs)} operands, got {len(types)}")
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise IRError(f"einsum '{spec}': operand dtypes differ ({', '.join(str(t.dtype) for t in types)}); "
                      "insert casts")
    try:
        sizes = spec.sizes([t.shape for t in types])
    except SpecError as error:
        raise IRError(str(error)) from None
    return TensorType(spec.output_shape(sizes), types[0].dtype)


def _map(opcode: str, types: list[TensorType], attrs: dict, declared: TensorType | None) -> TensorType:
    _expect_operands(opcode, types, 1)
    fn = lookup(attrs["fn"])
    t = types[0]
    if fn.float_only and not (t.dtype.is_float or t.dtype.is_complex):
        raise IRError(f"map {fn.name} needs a float or complex operand, got {t.dtype}")
    if t.dtype.is_modular and not fn.polynomial:
        raise IRError(f"map {fn.name} is not defined on {t.dtype}; only polynomials are")
    if fn.name == "poly":
        coeffs = attrs.get("coeffs")
        if not isinstance(coeffs, list) or not coeffs or not all(isinstance(c, (int, float)) for c in coeffs):
            raise IRError("map poly needs coeffs=[c0, c1, ...], a non-empty list of numbers")
    elif set(attrs) - {"fn", "epilogue_of"}:  # epilogue_of: the fuse-epilogue pass's mark
        raise IRError(f"map {fn.name} takes no attributes, got {sorted(set(attrs) - {'fn', 'epilogue_of'})}")
    return t


def _reshape(opcode: str, types: list[TensorType], attrs: dict, declared: TensorType | None) -> TensorType:
    _expect_operands(opcode, types, 1)
    if declared is None:
        raise IRError("reshape needs its result type")
    if declared.size != types[0].size or declared.dtype != types[0].dtype:
        raise IRError(f"reshape of {types[0]} ({types[0].size} elements) to {declared} "
                      f"({declared.size} elements)")
    return declared


def _cast(opcode: str, types: list[TensorType], attrs: dict, declared: TensorType | None) -> TensorType:
    _expect_operands(opcode, types, 1)
    if declared is None:
        raise IRError("cast needs its result type")
    if declared.shape != types[0].shape:
        raise IRError(f"cast changes the shape {types[0].shape} to {declared.shape}; use reshape")
    return declared


def _leaf(opcode: str, types: list[TensorType], attrs: dict, declared: TensorType | None) -> TensorType:
    _expect_operands(opcode, types, 0)
    if declared is None:
        raise IRError(f"{opcode} needs its result type")
    return declared


@dataclass(frozen=True)
class OpInfo:
    """What the IR knows about an opcode: its attribute names, type rule and cost."""

    required_attrs: tuple[str, ...]
    infer: Callable[[str, list[TensorType], dict, TensorType | None], TensorType]
    flops: Callable[[list[TensorType], TensorType, dict], int]


def _einsum_flops(types: list[TensorType], out: TensorType, attrs: dict) -> int:
    spec = EinsumSpec.parse(attrs["spec"])
    return spec.flops(spec.sizes([t.shape for t in types]))


def _zero(types: list[TensorType], out: TensorType, attrs: dict) -> int:
    return 0


def _per_element(types: list[TensorType], out: TensorType, attrs: dict) -> int:
    return out.size


def _map_flops(types: list[TensorType], out: TensorType, attrs: dict) -> int:
    fn = lookup(attrs["fn"])
    per = 2 * (len(attrs["coeffs"]) - 1) if fn.name == "poly" else fn.flops_per_element
    return out.size * max(per, 1)


OPS: dict[str, OpInfo] = {
    "input": OpInfo((), _leaf, _zero),
    "const": OpInfo(("name",), _leaf, _zero),
    "literal": OpInfo(("value",), _leaf, _zero),
    "einsum": OpInfo(("spec",), _einsum, _einsum_flops),
    "add": OpInfo((), _elementwise_binary, _per_element),
    "sub": OpInfo((), _elementwise_binary, _per_element),
    "mul": OpInfo((), _elementwise_binary, _per_element),
    "div": OpInfo((), _elementwise_binary, _per_element),
    "pow": OpInfo((), _elementwise_binary, _per_element),
    "neg": OpInfo((), _neg, _per_element),
    "map": OpInfo(("fn",), _map, _map_flops),
    "reshape": OpInfo((), _reshape, _zero),
    "cast": OpInfo((), _cast, _zero),
}

ELEMENTWISE_BINARY = ("add", "sub", "mul", "div", "pow")


def infer_type(opcode: str, types: list[TensorType], attrs: dict[str, Any],
               declared: TensorType | None = None) -> TensorType:
    """Result type of an op (leaves, reshape and cast take the declared one); raises IRError."""
    info = OPS.get(opcode)
    if info is None:
        raise IRError(f"unknown opcode {opcode!r}; known: {', '.join(OPS)}")
    missing = [name for name in info.required_attrs if name not in attrs]
    if missing:
        raise IRError(f"{opcode} is missing attribute(s) {', '.join(missing)}")
    try:
        return info.infer(opcode, types, attrs, declared)
    except SpecError as error:
        raise IRError(str(error)) from None


def flops(opcode: str, types: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> int:
    return OPS[opcode].flops(types, out, attrs)
