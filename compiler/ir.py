"""The einfold IR: a `Program` is an SSA list of `Op`s over typed tensor values.

Values are named by strings (printed `%name`); every op defines exactly one value. Weights are `const`
ops naming an array kept by reference in `Program.weights` and printed by name, shape and hash.
The builder methods (`input`, `const`, `einsum`, `add`, `map`, ...) infer and check types as they go.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import dtypes as dt
from .errors import IRError
from .ops import ELEMENTWISE_BINARY, TensorType, flops, infer_type
from .spec import parse_subscripts

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*|[0-9]+(?:\.[A-Za-z0-9_]+)*")


@dataclass(frozen=True)
class Op:
    """One SSA instruction: `result = opcode(operands) {attrs} : type`. Attribute values are JSON-like."""

    opcode: str
    result: str
    type: TensorType
    operands: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.opcode, self.result))

    def __str__(self) -> str:
        from .printer import format_op
        return format_op(self)

    def with_attrs(self, **updates: Any) -> Op:
        return replace(self, attrs={**self.attrs, **updates})


def weight_hash(array: np.ndarray) -> str:
    """A short content hash of a weight (dtype, shape and bytes), printed in the IR."""
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class Program:
    """An SSA program. Build it with the methods below, print it with `str()`, check it with `verify()`."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.ops: list[Op] = []
        self.outputs: list[str] = []
        self.weights: dict[str, np.ndarray] = {}
        self._defs: dict[str, Op] = {}
        self._counter = 0

    # ----- reading -------------------------------------------------------------------------------
    def __str__(self) -> str:
        from .printer import format_program
        return format_program(self)

    def __repr__(self) -> str:
        return f"<Program {self.name}: {len(self.ops)} ops>"

    def defining_op(self, name: str) -> Op:
        try:
            return self._defs[name]
        except KeyError:
            raise IRError(f"value %{name} is not defined in program @{self.name}") from None

    def type_of(self, name: str) -> TensorType:
        return self.defining_op(name).type

    @property
    def inputs(self) -> list[Op]:
        return [op for op in self.ops if op.opcode == "input"]

    @property
    def consts(self) -> list[Op]:
        return [op for op in self.ops if op.opcode == "const"]

    def users(self) -> dict[str, list[Op]]:
        """For each value, the ops that read it."""
        users: dict[str, list[Op]] = {op.result: [] for op in self.ops}
        for op in self.ops:
            for operand in op.operands:
                users.setdefault(operand, []).append(op)
        return users

    def op_flops(self, op: Op) -> int:
        return flops(op.opcode, [self.type_of(v) for v in op.operands], op.type, op.attrs)

    def flops(self) -> int:
        return sum(self.op_flops(op) for op in self.ops)

    def params(self) -> int:
        """Number of weight elements the program reads."""
        return sum(op.type.size for op in self.consts)

    # ----- building ------------------------------------------------------------------------------
    def fresh_name(self, hint: str | None = None) -> str:
        if hint is not None:
            base = hint
            name, k = base, 1
            while name in self._defs:
                name, k = f"{base}.{k}", k + 1
            return name
        while str(self._counter) in self._defs:
            self._counter += 1
        name = str(self._counter)
        self._counter += 1
        return name

    def append(self, opcode: str, operands: Iterable[str] = (), attrs: dict[str, Any] | None = None,
               type: TensorType | None = None, name: str | None = None) -> str:
        """Add an op, inferring (or checking) its type. Returns the new value's name."""
        operands = tuple(operands)
        attrs = dict(attrs or {})
        operand_types = [self.type_of(v) for v in operands]
        where = f"{opcode} defining %{name or '?'}"
        try:
            result_type = infer_type(opcode, operand_types, attrs, type)
        except IRError as error:
            raise IRError(f"{where}: {error}") from None
        if type is not None and type != result_type:
            raise IRError(f"{where}: declared type {type} but the operands give {result_type}")
        name = name if name is not None else self.fresh_name()
        if not NAME_PATTERN.fullmatch(name):
            raise IRError(f"invalid value name {name!r}: use letters, digits, '_' and '.'")
        if name in self._defs:
            raise IRError(f"value %{name} is defined twice")
        op = Op(opcode, name, result_type, operands, attrs)
        self.ops.append(op)
        self._defs[name] = op
        return name

    def add_op(self, op: Op) -> str:
        """Append an existing Op (same checks as `append`)."""
        return self.append(op.opcode, op.operands, op.attrs, op.type, op.result)

    def input(self, name: str, shape: Iterable[int], dtype: object = "f32") -> str:
        if name in self._defs:
            raise IRError(f"input %{name} is defined twice")
        return self.append("input", type=TensorType(_shape(shape), dt.dtype(dtype)), name=name)

    def const(self, name: str, array: object, dtype: object | None = None) -> str:
        """A named weight. The array is kept by reference (not copied) unless a cast is needed."""
        element_type = dt.dtype(dtype) if dtype is not None else dt.dtype(np.asarray(array).dtype)
        data = np.asarray(array)
        if data.dtype != element_type.numpy:
            data = data.astype(element_type.numpy)
        if element_type.is_modular and data.size and int(data.max()) >= element_type.modulus:
            raise IRError(f"const {name!r}: values must lie in [0, {element_type.modulus}) for {element_type}")
        if name in self.weights and self.weights[name] is not data:
            raise IRError(f"a different weight named {name!r} already exists")
        self.weights[name] = data
        return self.append("const", attrs={"name": name, "sha": weight_hash(data)},
                           type=TensorType(data.shape, element_type), name=self.fresh_name(name))

    def literal(self, value: complex | float | int | bool, dtype: object) -> str:
        element_type = dt.dtype(dtype)
        if isinstance(value, complex):
            stored: Any = [value.real, value.imag]
        elif isinstance(value, (bool, np.bool_)):
            stored = bool(value)
        elif isinstance(value, (int, np.integer)):
            stored = int(value)
        else:
            stored = float(value)
        return self.append("literal", attrs={"value": stored}, type=TensorType((), element_type))

    def einsum(self, subscripts: str, *operands: str, name: str | None = None) -> str:
        """An einsum in numpy's notation (ellipsis, broadcasting, implicit output), normalised."""
        types = [self.type_of(v) for v in operands]
        parsed = parse_subscripts(subscripts, [t.shape for t in types])
        common = dt.result_type(*(t.dtype for t in types)) if types else dt.float64
        operands = tuple(self.cast(v, common) for v in operands)
        return self.append("einsum", operands, {"spec": str(parsed.spec)}, name=name)

    def elementwise(self, opcode: str, a: str, b: str, name: str | None = None) -> str:
        if opcode not in ELEMENTWISE_BINARY:
            raise IRError(f"{opcode!r} is not an elementwise binary op; use one of {ELEMENTWISE_BINARY}")
        common = dt.result_type(self.type_of(a).dtype, self.type_of(b).dtype)
        return self.append(opcode, (self.cast(a, common), self.cast(b, common)), name=name)

    def add(self, a: str, b: str) -> str:
        return self.elementwise("add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.elementwise("sub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.elementwise("mul", a, b)

    def div(self, a: str, b: str) -> str:
        return self.elementwise("div", a, b)

    def pow(self, a: str, b: str) -> str:
        return self.elementwise("pow", a, b)

    def neg(self, a: str) -> str:
        return self.append("neg", (a,))

    def map(self, fn: str, x: str, coeffs: Iterable[float] | None = None, name: str | None = None) -> str:
        attrs: dict[str, Any] = {"fn": fn}
        if coeffs is not None:
            attrs["coeffs"] = [float(c) for c in coeffs]
        return self.append("map", (x,), attrs, name=name)

    def reshape(self, x: str, shape: Iterable[int]) -> str:
        t = self.type_of(x)
        return self.append("reshape", (x,), type=TensorType(_shape(shape, t.size), t.dtype))

    def cast(self, x: str, dtype: object) -> str:
        """Cast to `dtype`; returns `x` itself when it already has that type."""
        t = self.type_of(x)
        target = dt.dtype(dtype)
        if t.dtype == target:
            return x
        return self.append("cast", (x,), type=TensorType(t.shape, target))

    def set_outputs(self, *names: str) -> None:
        for name in names:
            self.defining_op(name)
        self.outputs = list(names)

    # ----- whole-program operations --------------------------------------------------------------
    def copy(self, ops: Iterable[Op] | None = None, outputs: Iterable[str] | None = None) -> Program:
        """A new program with the same name and weights, and the given (or the same) ops and outputs."""
        new = Program(self.name)
        new.weights = dict(self.weights)
        for op in (self.ops if ops is None else ops):
            new.ops.append(op)
            new._defs[op.result] = op
        new.outputs = list(self.outputs if outputs is None else outputs)
        used = {op.attrs["name"] for op in new.consts}
        new.weights = {k: v for k, v in new.weights.items() if k in used}
        return new

    def verify(self) -> Program:
        from .verify import verify
        verify(self)
        return self


def _shape(shape: Iterable[int], size: int | None = None) -> tuple[int, ...]:
    """A concrete shape; one -1 may stand for the rest when `size` is given."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise IRError(f"a shape must be a sequence of integers, got {shape!r}") from None
    if size is not None and dims.count(-1) == 1:
        known = math.prod(d for d in dims if d != -1)
        if known and size % known == 0:
            dims = tuple(size // known if d == -1 else d for d in dims)
    if any(d < 0 for d in dims):
        raise IRError(f"shape {dims} has a negative dimension")
    return dims





def _resolve(name: str, mapping: dict[str, str]) -> str:
    while name in mapping:
        name = mapping[name]
    return name


def rebuild(program: Program, ops: Iterable[Op], mapping: dict[str, str]) -> Program:
    """A copy of `program` with the given ops; operands and outputs renamed through `mapping`
    (followed transitively), as passes that replace one value by another need."""
    renamed = [replace(op, operands=tuple(_resolve(v, mapping) for v in op.operands)) for op in ops]
    return program.copy(renamed, [_resolve(name, mapping) for name in program.outputs])
