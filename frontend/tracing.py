"""Tracing: run a Python function on symbolic `Tensor`s and record what it computes as an einfold Program.

    program = einfold.trace(lambda x, w: einfold.relu(x @ w), (8, 64), (64, 32))   # x @ w: "ik,kj->ij"
    fast = einfold.function(target="numpy")(model)    # traced and compiled once per input signature
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import dtypes as dt
from ..driver import Executable
from ..driver import compile as compile_program
from ..errors import Error, IRError, UnsupportedError
from ..functions import lookup
from ..ir import Op, Program
from ..ops import TensorType, infer_type
from ..reference import evaluate_op
from ..spec import LETTERS

_VALUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


class _Recorder:
    """The state of one trace: the program being built and the numpy arrays captured as weights."""

    def __init__(self, program: Program):
        self.program = program
        self.const_of: dict[int, str] = {}  # id(array) -> the const value holding it
        self.captured: list[np.ndarray] = []  # keeps captured arrays alive, so their ids stay theirs

    def const(self, array: np.ndarray) -> str:
        if id(array) in self.const_of:
            return self.const_of[id(array)]
        base = _name_in_caller(array) or f"w{len(self.captured)}"
        name, k = base, 1
        while name in self.program.weights:
            name, k = f"{base}_{k}", k + 1
        try:
            value = self.program.const(name, array)
        except Error as error:
            raise IRError(f"cannot capture the numpy array {name!r} ({array.dtype}{list(array.shape)}) as a "
                          f"weight: {error}") from None
        self.captured.append(array)
        self.const_of[id(array)] = value
        return value


def _name_in_caller(array: np.ndarray) -> str | None:
    """The variable name the nearest calling user code gives `array`, if any (for readable weight names)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("einfold."):
        frame = frame.f_back
    if frame is None:
        return None
    for scope in (frame.f_locals, frame.f_globals):
        for key, value in scope.items():
            if value is array and _VALUE_NAME.fullmatch(key):
                return key
    return None


class Tensor:
    """A symbolic value in a trace: numpy-style arithmetic on it records ops instead of computing.

    `.shape`, `.dtype` (an einfold DType), `.ndim`; `+ - * / **` with Tensors, Python numbers (weak, as in
    numpy) and numpy arrays (captured as weights); unary `-`; `@`; `.T`; `.reshape`; `.astype`; `.sum`.
    """

    __array_ufunc__ = None  # numpy defers to our reflected operators: `array @ tensor` -> Tensor.__rmatmul__
    __slots__ = ("_recorder", "name")

    def __init__(self, recorder: _Recorder, name: str):
        self._recorder = recorder
        self.name = name

    @property
    def type(self) -> TensorType:
        return self._recorder.program.type_of(self.name)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> dt.DType:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.type.shape)

    @property
    def size(self) -> int:
        return self.type.size

    def __repr__(self) -> str:
        return f"Tensor(%{self.name}: {self.type})"

    def __len__(self) -> int:
        if not self.shape:
            raise IRError(f"len() of a 0-d Tensor {self!r}")
        return self.shape[0]

    # ----- things a trace cannot do --------------------------------------------------------------
    def _no_value(self, what: str) -> IRError:
        return IRError(f"{what} needs the value of traced Tensor %{self.name} ({self.type}), which does not exist "
                       f"while tracing: the function runs once on symbolic inputs. Python `if`, `while`, `and`, "
                       f"`or`, `not` and conversions cannot depend on tensor values; compute with einfold ops "
                       f"instead, or decide outside the traced function")

    def __bool__(self) -> bool:
        raise self._no_value("a Python truth test")

    def __float__(self) -> float:
        raise self._no_value("float()")

    def __int__(self) -> int:
        raise self._no_value("int()")

    def __index__(self) -> int:
        raise self._no_value("use as an index")

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise self._no_value("conversion to a numpy array")

    def __getitem__(self, key: Any) -> Tensor:
        raise UnsupportedError(f"indexing a traced Tensor ({self!r}[{key!r}]) is not supported; use einsum, "
                               "reshape or .T")

    def __iter__(self) -> Any:
        raise UnsupportedError(f"iterating over a traced Tensor ({self!r}) is not supported")

    def _no_compare(self, other: object) -> Any:
        raise UnsupportedError(f"comparisons of traced Tensors ({self!r}) are not supported: the IR has no "
                               "comparison ops")

    __lt__ = __le__ = __gt__ = __ge__ = _no_compare

    # ----- arithmetic ----------------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return _binary("add", self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _binary("add", other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _binary("sub", self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _binary("sub", other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _binary("mul", self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _binary("mul", other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _binary("div", self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _binary("div", other, self)

    def __pow__(self, other: Any) -> Tensor:
        return _binary("pow", self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _binary("pow", other, self)

    def __neg__(self) -> Tensor:
        try:
            return self._new(self._recorder.program.neg(self.name))
        except IRError as error:
            raise IRError(f"-{self!r}: {error}") from None

    def __pos__(self) -> Tensor:
        return self

    def __matmul__(self, other: Any) -> Tensor:
        return matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return matmul(other, self)

    # ----- shape and type ------------------------------------------------------------------------
    @property
    def T(self) -> Tensor:
        """Axes reversed: einsum "abc->cba"."""
        if self.ndim < 2:
            return self
        letters = LETTERS[:self.ndim]
        return self._new(self._recorder.program.einsum(f"{letters}->{letters[::-1]}", self.name))

    def reshape(self, *shape: Any) -> Tensor:
        """Row-major reshape; `x.reshape(2, 3)`, `x.reshape((2, 3))` and one -1 work as in numpy."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        try:
            return self._new(self._recorder.program.reshape(self.name, shape))
        except IRError as error:
            raise IRError(f"{self!r}.reshape{tuple(shape)}: {error}") from None

    def astype(self, dtype: Any) -> Tensor:
        return self._new(self._recorder.program.cast(self.name, dtype))

    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        """numpy's sum as an einsum ("abc->b" for axis=(0, 2)); bool and small integers add up in 64 bits."""
        axes = _normalise_axes(axis, self.ndim, self)
        x = self
        if x.dtype.name == "bool" or (x.dtype.is_int and x.dtype.itemsize < 8):
            x = x.astype("u64" if x.dtype.name.startswith("u") else "i64")
        letters = LETTERS[:self.ndim]
        kept = "".join(letter for k, letter in enumerate(letters) if k not in axes)
        result = x._new(x._recorder.program.einsum(f"{letters}->{kept}", x.name))
        if keepdims:
            result = result.reshape(tuple(1 if k in axes else n for k, n in enumerate(self.shape)))
        return result

    def _new(self, name: str) -> Tensor:
        return Tensor(self._recorder, name)


def _normalise_axes(axis: int | Sequence[int] | None, ndim: int, tensor: Tensor) -> set[int]:
    if axis is None:
        return set(range(ndim))
    items = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    axes: set[int] = set()
    for item in items:
        k = operator.index(item)
        if not -ndim <= k < ndim:
            raise IRError(f"{tensor!r}.sum: axis {k} is out of bounds for a tensor of {ndim} dimension(s)")
        if k % ndim in axes:
            raise IRError(f"{tensor!r}.sum: axis {k} is repeated")
        axes.add(k % ndim)
    return axes


# ----- turning operands into values ---------------------------------------------------------------
def _recorder_of(*values: Any) -> _Recorder:
    recorders = {id(v._recorder): v._recorder for v in values if isinstance(v, Tensor)}
    if len(recorders) != 1:
        raise IRError("Tensors from different traces cannot be combined; trace the whole computation as one "
                      "function")
    return next(iter(recorders.values()))


def _weak_literal_dtype(value: bool | int | float | complex, like: dt.DType) -> dt.DType:
    """numpy's rule for a Python number next to an array: it takes the array's type if its kind fits."""
    if isinstance(value, bool):
        return like
    if isinstance(value, int):
        return dt.int64 if like.name == "bool" else like
    if isinstance(value, float):
        return like if like.is_float or like.is_complex else dt.float64
    if like.is_complex:
        return like
    return dt.complex64 if like.name in ("f16", "bf16", "f32") else dt.complex128


def _literal(program: Program, value: bool | int | float | complex, element: dt.DType) -> str:
    if element.is_modular:
        if not isinstance(value, int):
            raise IRError(f"only integers combine with {element} values, got {value!r}")
        return program.literal(value % element.modulus, element)
    if element.is_int and not isinstance(value, bool):
        info = np.iinfo(element.numpy)
        if not info.min <= value <= info.max:
            raise IRError(f"Python integer {value} is out of bounds for {element}")
    return program.literal(value, element)


def _lift(recorder: _Recorder, value: Any, like: dt.DType | None) -> str:
    """A value name for an operand: a Tensor, a numpy array (-> const), or a number (-> literal).

    With `like`, Python numbers are weak (they take `like`'s type when its kind fits); without it they are
    converted as numpy converts them (int -> i64, float -> f64), as einsum operands are.
    """
    if isinstance(value, Tensor):
        if value._recorder is not recorder:
            raise IRError("Tensors from different traces cannot be combined")
        return value.name
    if isinstance(value, np.ndarray):
        return recorder.const(value)
    if isinstance(value, np.generic):
        return _literal(recorder.program, value.item(), dt.dtype(value.dtype))
    if isinstance(value, (bool, int, float, complex)):
        element = _weak_literal_dtype(value, like) if like is not None else dt.dtype(np.asarray(value).dtype)
        return _literal(recorder.program, value, element)
    raise IRError(f"a traced function cannot use a {type(value).__name__} ({value!r}) as a tensor; use a Tensor, "
                  "a numpy array or a Python number")


def _describe(program: Program, name: str) -> str:
    return f"%{name}: {program.type_of(name)}"


def _binary(opcode: str, left: Any, right: Any) -> Tensor:
    recorder = _recorder_of(left, right)
    program = recorder.program
    like = (left if isinstance(left, Tensor) else right).dtype
    a, b = _lift(recorder, left, like), _lift(recorder, right, like)
    try:
        if opcode == "div":  # true division, as numpy's `/`: integers and bools divide as f64
            common = dt.result_type(program.type_of(a).dtype, program.type_of(b).dtype)
            if not (common.is_float or common.is_complex or common.is_modular):
                a, b = program.cast(a, dt.float64), program.cast(b, dt.float64)
        return Tensor(recorder, program.elementwise(opcode, a, b))
    except IRError as error:
        raise IRError(f"`{_describe(program, a)} {_SYMBOLS[opcode]} {_describe(program, b)}`: {error}") from None


def matmul(a: Any, b: Any) -> Tensor:
    """numpy's `a @ b` as an einsum: "...ik,...kj->...ij", with 1-d operands losing their axis."""
    recorder = _recorder_of(a, b)
    program = recorder.program
    left, right = _lift(recorder, a, None), _lift(recorder, b, None)
    ta, tb = program.type_of(left), program.type_of(right)
    where = f"`{_describe(program, left)} @ {_describe(program, right)}`"
    if not ta.shape or not tb.shape:
        raise IRError(f"{where}: matmul needs operands with at least one dimension; use * for scalars")
    k_left, k_right = ta.shape[-1], tb.shape[-2 if len(tb.shape) > 1 else 0]
    if k_left != k_right:
        raise IRError(f"{where}: the contracted dimensions differ ({k_left} != {k_right})")
    batch_left, batch_right = ta.shape[:-2], tb.shape[:-2]
    try:
        np.broadcast_shapes(batch_left, batch_right)
    except ValueError:
        raise IRError(f"{where}: batch dimensions {batch_left} and {batch_right} do not broadcast") from None
    left_term = "...ik" if len(ta.shape) > 1 else "k"
    right_term = "...kj" if len(tb.shape) > 1 else "k"
    out = ("..." if len(ta.shape) > 1 or len(tb.shape) > 1 else "")
    out += ("i" if len(ta.shape) > 1 else "") + ("j" if len(tb.shape) > 1 else "")
    return Tensor(recorder, program.einsum(f"{left_term},{right_term}->{out}", left, right))


def traced_einsum(subscripts: str, operands: Sequence[Any], dtype: Any = None, casting: str = "safe") -> Tensor:
    """`einfold.einsum` on traced Tensors (numpy arrays become weights): records one einsum op."""
    recorder = _recorder_of(*operands)
    program = recorder.program
    names = [_lift(recorder, x, None) for x in operands]
    if dtype is not None:
        target = dt.dtype(dtype)
        for k, name in enumerate(names):
            source = program.type_of(name).dtype
            if source != target and (source.is_modular or target.is_modular
                                     or not np.can_cast(source.numpy, target.numpy, casting)):
                raise TypeError(f"Iterator operand {k} dtype could not be cast from {source.numpy!r} to "
                                f"{target.numpy!r} according to the rule {casting!r}")
        names = [program.cast(name, target) for name in names]
    return Tensor(recorder, program.einsum(subscripts, *names))


# ----- scalar functions ----------------------------------------------------------------------------
def _float_type(element: dt.DType) -> dt.DType:
    """The float type numpy computes `exp(x)` etc. in for a bool or integer x (int8 -> f16, i32 -> f64)."""
    return dt.dtype(np.result_type(element.numpy, np.float16))


def _map(fn: str, x: Any, coeffs: Sequence[float] | None = None) -> Any:
    info = lookup(fn)
    attrs: dict[str, Any] = {"fn": fn}
    if coeffs is not None:
        attrs["coeffs"] = [float(c) for c in coeffs]
    if isinstance(x, Tensor):
        program = x._recorder.program
        name = x.name
        element = x.dtype
        if info.float_only and not (element.is_float or element.is_complex or element.is_modular):
            name = program.cast(name, _float_type(element))
        elif coeffs is not None and element.is_int and any(c != int(c) for c in attrs["coeffs"]):
            raise IRError(f"poly({x!r}) needs integer coefficients for an integer tensor, got {list(coeffs)}; "
                          "cast x to a float type first")
        try:
            return Tensor(x._recorder, program.map(fn, name, coeffs))
        except IRError as error:
            raise IRError(f"{fn}({x!r}): {error}") from None
    array = np.asarray(x)
    try:
        element = dt.dtype(array.dtype)
    except IRError:
        raise IRError(f"{fn}() takes a traced Tensor or a numpy array of {', '.join(dt.ALL_NAMES)}; "
                      f"got {array.dtype}") from None
    if info.float_only and not (element.is_float or element.is_complex):
        element = _float_type(element)
        array = array.astype(element.numpy)
    value_type = TensorType(array.shape, element)
    infer_type("map", [value_type], attrs)
    return evaluate_op(Op("map", "x", value_type, ("x",), attrs), [array], {})


def relu(x: Any) -> Any:
    """max(x, 0), elementwise."""
    return _map("relu", x)


def exp(x: Any) -> Any:
    return _map("exp", x)


def log(x: Any) -> Any:
    return _map("log", x)


def tanh(x: Any) -> Any:
    return _map("tanh", x)


def gelu(x: Any) -> Any:
    """GELU in its tanh form."""
    return _map("gelu", x)


def sigmoid(x: Any) -> Any:
    return _map("sigmoid", x)


def sqrt(x: Any) -> Any:
    return _map("sqrt", x)


def square(x: Any) -> Any:
    return _map("square", x)


def poly(x: Any, coeffs: Sequence[float]) -> Any:
    """sum_k coeffs[k] * x**k (coefficients from degree 0 up)."""
    coeffs = list(coeffs)
    if not coeffs:
        raise IRError("poly needs at least one coefficient")
    return _map("poly", x, coeffs)


# ----- tracing a function --------------------------------------------------------------------------
def _input_type(example: Any, parameter: str) -> TensorType:
    """An example argument as an input type: an array, a shape tuple (f32) or (shape, dtype)."""
    if isinstance(example, (np.ndarray, np.generic)):
        return TensorType(example.shape, dt.dtype(example.dtype))
    if isinstance(example, TensorType):
        return example
    if isinstance(example, (tuple, list)):
        if all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in example):
            return TensorType(tuple(int(d) for d in example), dt.float32)
        if (len(example) == 2 and isinstance(example[0], (tuple, list))
                and all(isinstance(d, (int, np.integer)) for d in example[0])):
            return TensorType(tuple(int(d) for d in example[0]), dt.dtype(example[1]))
    raise IRError(f"the example for parameter {parameter!r} must be a numpy array, a shape tuple or "
                  f"(shape, dtype); got {example!r}")


def _parameter_names(fn: Callable, count: int) -> list[str]:
    """Input names from `fn`'s positional parameters (`*args` gives args0, args1, ...)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return [f"arg{k}" for k in range(count)]
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = next((p for p in parameters if p.kind == p.VAR_POSITIONAL), None)
    required = [p for p in positional if p.default is p.empty]
    if count < len(required) or (count > len(positional) and variadic is None):
        raise IRError(f"{getattr(fn, '__name__', fn)} takes {len(required)} to {len(positional)} tensor "
                      f"argument(s) ({', '.join(p.name for p in positional)}), but {count} example(s) were given")
    names = [p.name for p in positional[:count]]
    names += [f"{variadic.name}{k}" for k in range(count - len(names))] if variadic else []
    return [name if _VALUE_NAME.fullmatch(name) else f"arg{k}" for k, name in enumerate(names)]


def _program_name(fn: Callable, name: str | None) -> str:
    raw = name or getattr(fn, "__name__", "traced")
    cleaned = re.sub(r"[^A-Za-z0-9_]", "", raw)
    return cleaned if _VALUE_NAME.fullmatch(cleaned) else "traced"


def _trace(fn: Callable, examples: Sequence[Any], name: str | None) -> tuple[Program, bool]:
    if not callable(fn):
        raise IRError(f"trace() needs a function, got {fn!r}")
    program = Program(_program_name(fn, name))
    recorder = _Recorder(program)
    inputs = []
    for parameter, example in zip(_parameter_names(fn, len(examples)), examples, strict=True):
        input_type = _input_type(example, parameter)
        inputs.append(Tensor(recorder, program.input(parameter, input_type.shape, input_type.dtype)))
    result = fn(*inputs)
    returns_tuple = isinstance(result, (tuple, list))
    outputs = list(result) if returns_tuple else [result]
    for k, value in enumerate(outputs):
        if not isinstance(value, Tensor) or value._recorder is not recorder:
            what = f"output {k}" if returns_tuple else "the result"
            raise IRError(f"traced function {program.name} must return a Tensor computed from its inputs (or a "
                          f"tuple of them); {what} is a {type(value).__name__}: {value!r}")
    if not outputs:
        raise IRError(f"traced function {program.name} returns an empty tuple")
    program.set_outputs(*(t.name for t in outputs))
    return program.verify(), returns_tuple


def trace(fn: Callable, *example_args: Any, name: str | None = None) -> Program:
    """Run `fn` once on symbolic Tensors shaped like the examples and return the Program it computes."""
    return _trace(fn, example_args, name)[0]


class TracedFunction:
    """`fn`, traced and compiled on the first call for each input signature (shapes and dtypes), then run."""

    def __init__(self, fn: Callable, target: str, options: dict[str, Any]):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.target = target
        self.options = options
        self._compiled: dict[tuple, tuple[Executable, bool]] = {}

    def __repr__(self) -> str:
        return f"<einfold.function {getattr(self.fn, '__name__', self.fn)} target={self.target}>"

    @property
    def signatures(self) -> list[tuple]:
        """The input signatures traced so far: one ((shape, dtype), ...) per compiled program."""
        return list(self._compiled)

    def executable(self, *args: Any) -> Executable:
        """The compiled program for these arguments' signature (traced and compiled if new)."""
        return self._entry([np.asarray(a) for a in args])[0]

    def _entry(self, arrays: list[np.ndarray]) -> tuple[Executable, bool]:
        key = tuple((a.shape, a.dtype.str) for a in arrays)
        if key not in self._compiled:
            program, returns_tuple = _trace(self.fn, arrays, None)
            self._compiled[key] = (compile_program(program, target=self.target, **self.options), returns_tuple)
        return self._compiled[key]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise IRError(f"{self!r} takes its tensors positionally; got keyword(s) {', '.join(kwargs)}")
        arrays = [np.asarray(a) for a in args]
        executable, returns_tuple = self._entry(arrays)
        result = executable(*arrays)
        if returns_tuple and not isinstance(result, tuple):
            return (result,)
        return result


def function(target: str | Callable = "numpy", **compile_options: Any) -> Any:
    """Decorator: `@einfold.function(target='llvm')` traces, compiles and caches per input signature.

    `@einfold.function` without arguments uses the numpy target.
    """
    if callable(target):
        return TracedFunction(target, "numpy", compile_options)
    return lambda fn: TracedFunction(fn, target, compile_options)
