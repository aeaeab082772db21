"""Element types of the IR: numpy's numeric types, bfloat16, and the modular integers `zq(q)`.

Each dtype has a short name used in the textual IR (`f32`, `bf16`, `c128`, `zq(97)`, ...).
Values of `zq(q)` are stored as uint64 arrays holding integers in [0, q).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import IRError


@dataclass(frozen=True)
class DType:
    """An element type. `modulus` is set only for `zq(q)`."""

    name: str
    modulus: int | None = None

    def __str__(self) -> str:
        return self.name

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that stores values of this type."""
        return _STORAGE[self.name] if self.modulus is None else np.dtype(np.uint64)

    @property
    def is_modular(self) -> bool:
        return self.modulus is not None

    @property
    def is_float(self) -> bool:
        return self.name in ("f16", "bf16", "f32", "f64")

    @property
    def is_complex(self) -> bool:
        return self.name in ("c64", "c128")

    @property
    def is_int(self) -> bool:
        return self.name[0] in "iu" and self.modulus is None

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


_STORAGE = {
    "bool": np.dtype(np.bool_),
    "i8": np.dtype(np.int8), "i16": np.dtype(np.int16), "i32": np.dtype(np.int32), "i64": np.dtype(np.int64),
    "u8": np.dtype(np.uint8), "u16": np.dtype(np.uint16), "u32": np.dtype(np.uint32), "u64": np.dtype(np.uint64),
    "f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16),
    "f32": np.dtype(np.float32), "f64": np.dtype(np.float64),
    "c64": np.dtype(np.complex64), "c128": np.dtype(np.complex128),
}
_BY_STORAGE = {v: k for k, v in _STORAGE.items()}
_ALIASES = {
    "bool_": "bool", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "float16": "f16", "half": "f16", "bfloat16": "bf16", "float32": "f32", "float": "f32",
    "float64": "f64", "double": "f64", "complex64": "c64", "complex128": "c128",
}

bool_ = DType("bool")
int8, int16, int32, int64 = DType("i8"), DType("i16"), DType("i32"), DType("i64")
uint8, uint16, uint32, uint64 = DType("u8"), DType("u16"), DType("u32"), DType("u64")
float16, bfloat16, float32, float64 = DType("f16"), DType("bf16"), DType("f32"), DType("f64")
complex64, complex128 = DType("c64"), DType("c128")

ALL_NAMES = tuple(_STORAGE)


def zq(q: int) -> DType:
    """The ring of integers modulo q (2 <= q < 2**64), stored as uint64."""
    q = int(q)
    if not 2 <= q < 2**64:
        raise IRError(f"zq modulus must satisfy 2 <= q < 2**64, got {q}")
    return DType(f"zq({q})", q)


_ZQ = re.compile(r"zq\((\d+)\)$")


def dtype(value: object) -> DType:
    """Coerce a DType, an IR name ('f32', 'zq(97)'), a numpy name ('float32') or a numpy dtype."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in _STORAGE:
            return DType(text)
        if text in _ALIASES:
            return DType(_ALIASES[text])
        match = _ZQ.match(text)
        if match:
            return zq(int(match.group(1)))
    try:
        np_dtype = np.dtype(value)  # type: ignore[call-overload]
    except TypeError:
        np_dtype = None
    if np_dtype is not None and np_dtype in _BY_STORAGE:
        return DType(_BY_STORAGE[np_dtype])
    raise IRError(f"unknown dtype {value!r}; expected one of {', '.join(ALL_NAMES)} or zq(q)")


def result_type(*types: DType) -> DType:
    """numpy's promotion of several dtypes (zq only combines with itself)."""
    modular = {t for t in types if t.is_modular}
    if modular:
        if len(set(types)) != 1:
            raise IRError(f"cannot combine {', '.join(map(str, types))}: zq values only combine with the same zq")
        return types[0]
    try:
        return dtype(np.result_type(*(t.numpy for t in types)))
    except TypeError:  # e.g. bf16 with i16/i32/i64/u16/u32/u64/f16: numpy knows no common type
        raise IRError(f"no common dtype for {', '.join(map(str, types))}; insert a cast") from None
