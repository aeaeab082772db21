"""`einfold.einsum`: a drop-in for `numpy.einsum` that runs on numpy itself or on a compiled einfold target.

    einfold.einsum("bi,oi->bo", x, w)                  # numpy's own result, spec checked by einfold first
    einfold.einsum("bi,oi->bo", x, w, target="llvm")   # compiled once per (spec, shapes, dtypes), then run
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import dtypes as dt
from ..driver import Executable
from ..driver import compile as compile_program
from ..errors import Error, SpecError, UnsupportedError
from ..ir import Program
from ..spec import parse_subscripts, sublists_to_subscripts
from .tracing import Tensor, traced_einsum

CASTING_RULES = ("no", "equiv", "safe", "same_kind", "unsafe")


@dataclass(frozen=True)
class CacheInfo:
    """How the executable cache of `einfold.einsum` has been used."""

    hits: int
    misses: int
    size: int
    maxsize: int


class ExecutableCache:
    """A bounded LRU map from (spec, shapes, dtypes, compute dtype, target) to a compiled Executable."""

    def __init__(self, maxsize: int = 256):
        self.maxsize = maxsize
        self._entries: OrderedDict[tuple, Executable] = OrderedDict()
        self._hits = 0
        self._misses = 0

    def get(self, key: tuple, build: Callable[[], Executable]) -> Executable:
        """The cached executable for `key`, built (and the least recently used one dropped) if missing."""
        if key in self._entries:
            self._hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self._misses += 1
        executable = build()
        self._entries[key] = executable
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return executable

    def info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, len(self._entries), self.maxsize)

    def clear(self) -> None:
        self._entries.clear()
        self._hits = self._misses = 0


EXECUTABLES = ExecutableCache()


def cache_info() -> CacheInfo:
    return EXECUTABLES.info()


def clear_cache() -> None:
    EXECUTABLES.clear()


def einsum(subscripts: Any, *operands: Any, out: np.ndarray | None = None, dtype: Any = None, order: str = "K",
           casting: str = "safe", optimize: Any = True, target: str = "numpy") -> Any:
    """numpy.einsum's arguments and results; `target` picks where it runs ('numpy' runs numpy itself).

    `optimize` goes to numpy on the numpy target (pass optimize=False for numpy's own default path, which rounds
    multi-operand products in a different order); `casting` is enforced by einfold either way (numpy's optimized
    path skips that check). Compiled targets order contractions in their own passes.

    Also accepts numpy's interleaved form `einsum(a, [0, 1], b, [1, 2], [0, 2])`. If an operand is a traced
    `Tensor`, the einsum is recorded in the trace and a `Tensor` is returned.
    """
    if not isinstance(subscripts, str):
        subscripts, operand_list = sublists_to_subscripts((subscripts, *operands))
        operands = tuple(operand_list)
    if any(isinstance(x, Tensor) for x in operands):
        if out is not None:
            raise SpecError("einsum on traced Tensors cannot write into out=; use the returned Tensor")
        return traced_einsum(subscripts, operands, dtype=dtype, casting=casting)
    if casting not in CASTING_RULES:
        raise SpecError(f"casting must be one of {', '.join(map(repr, CASTING_RULES))} (got {casting!r})")
    if out is not None and not isinstance(out, np.ndarray):
        raise TypeError("keyword parameter out must be an array for einsum")
    arrays = [np.asarray(x) for x in operands]
    parsed = parse_subscripts(subscripts, [a.shape for a in arrays])
    if target == "numpy":
        check_casting(arrays, out, dtype, casting)
        return np.einsum(subscripts, *arrays, out=out, dtype=dtype, order=order, casting=casting, optimize=optimize)
    if out is not None:
        shape = parsed.spec.output_shape(parsed.sizes)
        if out.shape != shape:
            raise SpecError(f"einsum {subscripts!r}: out= has shape {out.shape} but the result has shape {shape}")
        if not out.flags.writeable:
            raise SpecError("einsum: the out= array is read-only")
    return _compiled_einsum(subscripts, arrays, out, dtype, order, casting, target)


def check_casting(arrays: list[np.ndarray], out: np.ndarray | None, dtype: Any, casting: str) -> np.dtype:
    """numpy's rules: the computation runs in `dtype`, else in the common type of the operands and `out`; every
    operand (out= included, which einsum reads as well as writes) must cast to it, and it must cast to out=.
    Returns the computation dtype; raises numpy's TypeError otherwise."""
    if dtype is None and any(a.dtype == object for a in arrays):
        return np.dtype(object)
    compute = np.dtype(dtype) if dtype is not None else np.result_type(*arrays, *([] if out is None else [out]))
    for k, array in enumerate([*arrays, *([] if out is None else [out])]):
        if not np.can_cast(array.dtype, compute, casting):
            raise TypeError(f"Iterator operand {k} dtype could not be cast from {array.dtype!r} to "
                            f"{compute!r} according to the rule {casting!r}")
    if out is not None and not np.can_cast(compute, out.dtype, casting):
        raise TypeError(f"Iterator requested dtype could not be cast from {compute!r} to {out.dtype!r}, "
                        f"the operand {len(arrays)} dtype, according to the rule {casting!r}")
    return compute


def _compiled_einsum(subscripts: str, arrays: list[np.ndarray], out: np.ndarray | None, dtype: Any, order: str,
                     casting: str, target: str) -> Any:
    arrays = [a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("=")) for a in arrays]
    compute = check_casting(arrays, out, dtype, casting)
    key = (subscripts, tuple((a.shape, a.dtype.str) for a in arrays), compute.str, target)
    executable = EXECUTABLES.get(key, lambda: _compile(subscripts, arrays, compute, target))
    result = np.asarray(executable(*arrays))
    if out is not None:
        np.copyto(out, result, casting="unsafe")
        return out
    if order in ("C", "F"):
        result = np.asarray(result, order=order)
    return result[()] if result.ndim == 0 else result


def _compile(subscripts: str, arrays: list[np.ndarray], compute: np.dtype, target: str) -> Executable:
    """One einsum over inputs in0, in1, ... of the operands' types, computed in `compute`."""
    try:
        element_types = [dt.dtype(a.dtype) for a in arrays]
        compute_type = dt.dtype(compute)
    except Error:
        given = ", ".join(str(a.dtype) for a in arrays)
        raise UnsupportedError(f"einfold.einsum(target={target!r}) supports {', '.join(dt.ALL_NAMES)}; got "
                               f"operands {given} computed in {compute}. Use target='numpy' for other dtypes") from None
    program = Program("einsum")
    names = [program.cast(program.input(f"in{k}", a.shape, t), compute_type)
             for k, (a, t) in enumerate(zip(arrays, element_types, strict=True))]
    program.set_outputs(program.einsum(subscripts, *names))
    return compile_program(program, target=target)
