"""The `.ein` text language: parse a program with lark (`ein.lark`) and build an einfold `Program` from it.

Index notation `y[b, k] = h[b, j] * w[j, k]` becomes `einsum "bj,jk->bk"`; docs/language.md describes the language.
"""

from __future__ import annotations

import functools
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lark
import numpy as np

from einfold import dtypes as dt
from einfold.errors import IRError, SourceError, SpecError
from einfold.functions import FUNCTIONS
from einfold.ir import NAME_PATTERN, Program
from einfold.ops import TensorType
from einfold.spec import LETTERS

Number = int | float | complex
Where = lark.Tree | lark.Token

INITIALISERS = ("random", "normal", "zeros", "ones", "eye", "dft", "hadamard", "load")
MAP_FUNCTIONS = tuple(name for name in FUNCTIONS if name != "poly")
BUILTINS = ("einsum", "reshape", "cast", "poly", *MAP_FUNCTIONS)
MAX_DIM = 2**62
_REQUIRED = object()  # marks a parameter without a default in a signature

# name -> parameters (name, default); einsum is variadic and checked on its own.
SIGNATURES: dict[str, tuple[tuple[str, Any], ...]] = {
    "reshape": (("x", _REQUIRED), ("shape", _REQUIRED)),
    "cast": (("x", _REQUIRED), ("dtype", _REQUIRED)),
    "poly": (("x", _REQUIRED), ("coeffs", _REQUIRED)),
    **{name: (("x", _REQUIRED),) for name in MAP_FUNCTIONS},
    "random": (("seed", None), ("scale", 1)),
    "normal": (("seed", None), ("scale", 1)),
    "zeros": (), "ones": (), "eye": (), "dft": (), "hadamard": (),
    "load": (("path", _REQUIRED), ("key", None)),
}

_TOKEN_NAMES = {"NAME": "a name", "NUMBER": "a number", "IMAG": "an imaginary number like 2j",
                "STRING": "a string", "_NL": "end of line", "$END": "end of input"}
_FOUND_NAMES = {"NAME": "name", "NUMBER": "number", "IMAG": "number", "STRING": "string"}


@dataclass(frozen=True)
class Tensor:
    """A tensor value of the program being built, by its SSA name."""

    name: str


@dataclass(frozen=True)
class Binding:
    """What a name of the source stands for, a dim's size or a tensor, and the line that defined it."""

    value: int | Tensor
    line: int


class _BracketPostLexer:
    """Drops newlines inside (...) and [...], blank lines, and makes the last statement end with a newline."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[lark.Token]) -> Iterator[lark.Token]:
        depth = 0
        last: lark.Token | None = None
        for token in stream:
            if token.type == "_NL":
                if depth or last is None or last.type == "_NL":
                    continue
            elif token.type in ("LPAR", "LSQB"):
                depth += 1
            elif token.type in ("RPAR", "RSQB"):
                depth = max(depth - 1, 0)
            last = token
            yield token
        if last is not None and last.type != "_NL":
            yield lark.Token.new_borrow_pos("_NL", "\n", last)


@functools.cache
def _parser() -> lark.Lark:
    grammar = (Path(__file__).parent / "ein.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                     postlex=_BracketPostLexer())


@functools.cache
def _terminal_names() -> dict[str, str]:
    names = dict(_TOKEN_NAMES)
    for terminal in _parser().terminals:
        if terminal.pattern.type == "str":
            names[terminal.name] = repr(terminal.pattern.value)
    return names


def load_ein(source: str | os.PathLike, dims: dict[str, int] | None = None, filename: str | None = None) -> Program:
    """Build a Program from `.ein` source: a path (a PathLike, or a str ending in `.ein` without a newline)
    or the program text. `dims` overrides declared dim defaults; `load()` paths are relative to the file."""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and source.endswith(".ein") and "\n" not in source):
        path = Path(source)
        filename = filename or str(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise SourceError(f"cannot read the .ein file: {error}", filename) from None
        base_dir, default_name = path.resolve().parent, _program_name(path.stem)
    elif isinstance(source, str):
        text = source
        base_dir = Path(filename).resolve().parent if filename else Path.cwd()
        default_name = _program_name(Path(filename).stem) if filename else "main"
        filename = filename or "<string>"
    else:
        raise SourceError(f"load_ein takes a path or the program text, got {type(source).__name__}",
                          filename or "<string>")
    tree = _parse(text, filename)
    return _Builder(text, filename, base_dir, default_name, dict(dims or {})).build(tree)


def _program_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)
    return name if NAME_PATTERN.fullmatch(name) else f"p_{name}"


def _parse(text: str, filename: str) -> lark.Tree:
    lines = text.splitlines()
    try:
        return _parser().parse(text)
    except lark.exceptions.UnexpectedInput as error:
        line, column = getattr(error, "line", -1), getattr(error, "column", -1)
        if not isinstance(line, int) or line < 1:  # at the end of the input
            line = max(len(lines), 1)
            column = len(lines[line - 1]) + 1 if lines else 1
        source_line = lines[line - 1] if line <= len(lines) else ""
        raise SourceError(_syntax_message(error), filename, line, column, source_line) from None


def _syntax_message(error: lark.exceptions.UnexpectedInput) -> str:
    names = _terminal_names()
    expected = sorted({names.get(name, name) for name in (getattr(error, "expected", None)
                                                         or getattr(error, "allowed", None) or ())})
    wanted = f"; expected {_one_of(expected)}" if expected else ""
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        return f"syntax error: unexpected character {error.char!r}{wanted}"
    token = getattr(error, "token", None)
    if token is None or token.type in ("$END", "_NL"):
        found = names[token.type] if token is not None else names["$END"]
    elif token.type in _FOUND_NAMES:
        found = f"{_FOUND_NAMES[token.type]} {str(token)!r}"
    else:
        found = repr(str(token))
    return f"syntax error: unexpected {found}{wanted}"


def _one_of(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "one of " + ", ".join(items)


class _Builder:
    """Walks the parse tree statement by statement, adding ops to a Program."""

    def __init__(self, text: str, filename: str, base_dir: Path, default_name: str, dims: dict[str, int]):
        self.lines = text.splitlines()
        self.filename = filename
        self.base_dir = base_dir
        self.dims = dims
        self.program = Program(default_name)
        self.names: dict[str, Binding] = {}
        self.named_program = False
        self.returned: lark.Tree | None = None

    # ----- errors ------------------------------------------------------------------------------
    def error(self, message: str, where: Where | None, column_offset: int = 0) -> SourceError:
        line, column = _position(where)
        source = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return SourceError(message, self.filename, line, column + column_offset, source)

    # ----- statements --------------------------------------------------------------------------
    def build(self, tree: lark.Tree) -> Program:
        declared = {str(item.children[0]) for item in tree.find_data("dim_item")}
        unknown = sorted(set(self.dims) - declared)
        if unknown:
            raise SourceError(f"dims override {', '.join(map(repr, unknown))}, which the program does not declare"
                              f"; declared dims: {', '.join(sorted(declared)) or 'none'}", self.filename)
        for statement in tree.children:
            if self.returned is not None:
                raise self.error("a statement after `return`; `return` must come last", statement)
            getattr(self, f"_{statement.data}")(statement)
        if self.returned is None:
            raise SourceError("the program has no `return` statement; end it with e.g. `return y`", self.filename)
        try:
            return self.program.verify()
        except IRError as error:
            raise self.error(str(error), self.returned) from None

    def _program_decl(self, node: lark.Tree) -> None:
        (name,) = node.children
        if self.named_program:
            raise self.error("the program is named twice; keep one `program NAME` line", node)
        self.named_program = True
        self.program.name = str(name)

    def _dim_decl(self, node: lark.Tree) -> None:
        for item in node.children:
            name, default = item.children
            self.check_new(name)
            if str(name) in self.dims:
                value = self.dims[str(name)]
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < MAX_DIM:
                    raise self.error(f"dims[{str(name)!r}] must be a positive integer, got {value!r}", name)
            elif default is not None:
                if not default.isdigit() or not 1 <= int(default) < MAX_DIM:
                    raise self.error(f"the default of dim {name} must be a positive integer, got {default}",
                                     default)
                value = int(default)
            else:
                raise self.error(f"dim {name} has no default and no override: write `dim {name} = 64` "
                                 f"or pass dims={{{str(name)!r}: 64}} (--dim {name}=64)", name)
            self.names[str(name)] = Binding(int(value), name.line)

    def _input_decl(self, node: lark.Tree) -> None:
        for item in node.children:
            name, type_node = item.children
            self.check_new(name)
            tensor_type = self.tensor_type(type_node)
            self.program.input(str(name), tensor_type.shape, tensor_type.dtype)
            self.names[str(name)] = Binding(Tensor(str(name)), name.line)

    def _weight_decl(self, node: lark.Tree) -> None:
        name, type_node, init = node.children
        self.check_new(name)
        tensor_type = self.tensor_type(type_node)
        try:
            data = self.initial_value(init, str(name), tensor_type)
        except (MemoryError, ValueError) as error:
            raise self.error(f"cannot make weight {name} of type {tensor_type}: {error}", init) from None
        try:
            value = self.program.const(str(name), data, tensor_type.dtype)
        except IRError as error:
            raise self.error(str(error), init) from None
        self.names[str(name)] = Binding(Tensor(value), name.line)

    def _assign(self, node: lark.Tree) -> None:
        name, expr = node.children
        self.check_new(name)
        value = self.eval(expr, str(name))
        self.bind_result(name, value, expr)

    def _index_assign(self, node: lark.Tree) -> None:
        name, indices, expr = node.children
        self.check_new(name)
        output = _index_tokens(indices)
        seen: set[str] = set()
        for index in output:
            if str(index) in seen:
                raise self.error(f"index {index} appears twice on the left of `=`; output indices must differ",
                                 index)
            seen.add(str(index))
        value = IndexStatement(self, output, expr).build(str(name))
        self.bind_result(name, value, expr)

    def _return_stmt(self, node: lark.Tree) -> None:
        outputs = []
        for expr in node.children:
            value = self.eval(expr)
            if not isinstance(value, Tensor):
                raise self.error(f"`return` takes tensors, got {_describe(value)}", expr)
            outputs.append(value.name)
        self.program.set_outputs(*outputs)
        self.returned = node

    # ----- helpers for statements --------------------------------------------------------------
    def check_new(self, name: lark.Token) -> None:
        if str(name) in self.names:
            previous = self.names[str(name)]
            raise self.error(f"{name} is already defined (line {previous.line}); every name is defined once",
                             name)

    def bind_result(self, name: lark.Token, value: object, expr: lark.Tree) -> None:
        if not isinstance(value, Tensor):
            hint = f"; write e.g. cast({value}, f32) for a scalar tensor" if _is_number(value) else ""
            raise self.error(f"{name} must be a tensor, got {_describe(value)}{hint}", expr)
        self.names[str(name)] = Binding(value, name.line)

    def tensor_type(self, node: lark.Tree) -> TensorType:
        dtype_node, *dims = node.children
        element = self.dtype(dtype_node)
        shape = tuple(self.dim_value(self.eval(d), d, "a shape") for d in dims if d is not None)
        return TensorType(shape, element)

    def dtype(self, node: lark.Tree) -> dt.DType:
        name, modulus = node.children
        if modulus is not None:
            if str(name) != "zq" or not modulus.isdigit():
                raise self.error(f"unknown dtype {name}({modulus}); the only dtype with an argument is zq(q)", node)
            try:
                return dt.zq(int(modulus))
            except IRError as error:
                raise self.error(str(error), modulus) from None
        if str(name) not in dt.ALL_NAMES:
            raise self.error(f"unknown dtype {str(name)!r}; expected one of {', '.join(dt.ALL_NAMES)} or zq(q)", name)
        return dt.dtype(str(name))

    def dim_value(self, value: object, where: Where, what: str, allow_minus_one: bool = False) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or not (-1 if allow_minus_one else 0) <= value < MAX_DIM:
            raise self.error(f"{what} needs non-negative integer sizes below 2**62, got {_describe(value)}", where)
        return value

    def tensor_of(self, value: Tensor) -> TensorType:
        return self.program.type_of(value.name)

    # ----- expressions -------------------------------------------------------------------------
    def eval(self, node: lark.Tree, name: str | None = None) -> object:
        """Value of an expression: a Tensor, a Python number, a str or a list. `name` names its last op."""
        handler: Callable[[lark.Tree, str | None], object] = getattr(self, f"_eval_{node.data}")
        try:
            return handler(node, name)
        except (IRError, SpecError) as error:
            anchor = node.children[1] if node.data == "binary" else node
            raise self.error(str(error), anchor) from None

    def _eval_number(self, node: lark.Tree, name: str | None) -> Number:
        text = str(node.children[0])
        return float(text) if any(c in text for c in ".eE") else int(text)

    def _eval_imaginary(self, node: lark.Tree, name: str | None) -> complex:
        return complex(0, float(str(node.children[0])[:-1]))

    def _eval_string(self, node: lark.Tree, name: str | None) -> str:
        return str(node.children[0])[1:-1]

    def _eval_list(self, node: lark.Tree, name: str | None) -> list:
        return [self.eval(child) for child in node.children if child is not None]

    def _eval_var(self, node: lark.Tree, name: str | None) -> int | Tensor:
        (token,) = node.children
        binding = self.names.get(str(token))
        if binding is not None:
            return binding.value
        if str(token) in INITIALISERS:
            hint = f"; {token} is a weight initialiser, used as `weight w: f32[n, n] = {token}`"
        elif str(token) in BUILTINS:
            hint = f"; {token} is a function: call it as {token}(...)"
        else:
            hint = ""
        raise self.error(f"undefined name {str(token)!r}{hint}", token)

    def _eval_indexed(self, node: lark.Tree, name: str | None) -> object:
        raise self.error("index notation like x[i, j] only appears in a statement `y[i, k] = x[i, j] * w[j, k]`, "
                         "as a product of indexed tensors and numbers (or a sum of such products)", node)

    def _eval_negate(self, node: lark.Tree, name: str | None) -> object:
        minus, operand = node.children
        value = self.eval(operand)
        if _is_number(value):
            return -value
        tensor = self.expect_tensor(value, operand, "`-`")
        try:
            return Tensor(self.program.append("neg", (tensor.name,), name=name))
        except IRError as error:
            raise self.error(str(error), minus) from None

    def _eval_binary(self, node: lark.Tree, name: str | None) -> object:
        left, operator, right = node.children
        return self.arithmetic(str(operator), self.eval(left), self.eval(right), operator, name)

    def arithmetic(self, operator: str, a: object, b: object, where: Where, name: str | None = None) -> object:
        for value in (a, b):
            if not isinstance(value, Tensor) and not _is_number(value):
                raise self.error(f"`{operator}` takes tensors and numbers, got {_describe(value)}", where)
        if _is_number(a) and _is_number(b):
            return self.fold(operator, a, b, where)
        if _is_number(a):
            a = self.literal(a, self.tensor_of(b).dtype, where)
        if _is_number(b):
            b = self.literal(b, self.tensor_of(a).dtype, where)
        opcode = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}[operator]
        return Tensor(self.program.elementwise(opcode, a.name, b.name, name=name))

    def fold(self, operator: str, a: Number, b: Number, where: Where) -> Number:
        if operator == "**" and isinstance(a, int) and isinstance(b, int) and abs(b) > 64:
            a = float(a)  # keeps `10 ** 10 ** 10` from building a huge integer
        try:
            folds = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                     "**": lambda: a ** b}
            return folds[operator]()
        except (ZeroDivisionError, OverflowError) as error:
            raise self.error(f"cannot compute {a!r} {operator} {b!r}: {error}", where) from None

    def literal(self, value: Number, element: dt.DType, where: Where) -> Tensor:
        """A scalar literal of the other operand's dtype; refuses values that dtype cannot hold."""
        problem = ""
        if isinstance(value, complex) and not element.is_complex:
            problem = f"a complex number needs a complex tensor, not {element}"
        elif isinstance(value, float) and not (element.is_float or element.is_complex):
            if not value.is_integer():
                problem = f"{element} cannot hold the non-integer {value!r}; cast the tensor first"
            value = int(value) if not problem else value
        if not problem and isinstance(value, int) and not (element.is_float or element.is_complex):
            if element.is_modular:
                value %= element.modulus
            elif element.name == "bool":
                problem = "" if value in (0, 1) else f"bool holds only 0 and 1, not {value}"
            else:
                info = np.iinfo(element.numpy)
                if not info.min <= value <= info.max:
                    problem = f"{value} is outside the range [{info.min}, {info.max}] of {element}"
        if not problem and (element.is_float or element.is_complex):
            limit, magnitude = float(np.finfo(element.numpy).max), abs(value)
            if limit < magnitude != math.inf:
                problem = f"its magnitude exceeds the largest {element}, {limit:g}"
        if problem:
            raise self.error(f"the number {value!r} cannot be a literal of type {element}: {problem}", where)
        if element.is_complex:
            value = complex(value)
        elif element.is_float:
            value = float(value)
        return Tensor(self.program.literal(value, element))

    def expect_tensor(self, value: object, where: Where, what: str) -> Tensor:
        if not isinstance(value, Tensor):
            raise self.error(f"{what} takes a tensor, got {_describe(value)}", where)
        return value

    # ----- calls -------------------------------------------------------------------------------
    def _eval_call(self, node: lark.Tree, name: str | None) -> object:
        function, *args = node.children
        args = [a for a in args if a is not None]
        fn = str(function)
        if fn == "einsum":
            return self.einsum_call(function, args, name)
        if fn in INITIALISERS:
            raise self.error(f"{fn}(...) is a weight initialiser; use it as `weight w: f32[n, n] = {fn}(...)`",
                             function)
        if fn not in SIGNATURES:
            raise self.error(f"unknown function {fn!r}; known functions: {', '.join(sorted(BUILTINS))}", function)
        params = self.bind_arguments(function, args)
        if fn == "reshape":
            return self.reshape_call(params, name)
        if fn == "cast":
            return self.cast_call(params, name)
        x = self.eval(params["x"])
        if fn == "poly":
            coeffs = self.eval(params["coeffs"])
            if not isinstance(coeffs, list) or not coeffs or not all(_is_real(c) for c in coeffs):
                raise self.error("poly takes its coefficients as a list of real numbers [c0, c1, ...], "
                                 f"got {_describe(coeffs)}", params["coeffs"])
            if _is_number(x):
                return sum(c * x**k for k, c in enumerate(coeffs))
            return Tensor(self.program.map("poly", self.expect_tensor(x, params["x"], "poly").name, coeffs,
                                           name=name))
        if _is_number(x):
            try:
                with np.errstate(all="ignore"):
                    return np.asarray(FUNCTIONS[fn].reference(np.asarray(x, dtype=np.result_type(x, 1.0)))).item()
            except OverflowError as error:
                raise self.error(f"cannot compute {fn}({x!r}): {error}", function) from None
        return Tensor(self.program.map(fn, self.expect_tensor(x, params["x"], fn).name, name=name))

    def bind_arguments(self, function: lark.Token, args: list[lark.Tree]) -> dict[str, Any]:
        """Match positional and keyword arguments (unevaluated trees) to the function's parameters."""
        fn = str(function)
        params = SIGNATURES[fn]
        names = [p for p, _ in params]
        usage = f"{fn}({', '.join(p if d is _REQUIRED else f'{p}={d}' for p, d in params)})"
        bound: dict[str, Any] = {}
        keywords_started = False
        for position, arg in enumerate(args):
            if arg.data == "keyword":
                keywords_started = True
                key, value = arg.children
                if str(key) not in names:
                    raise self.error(f"{fn} has no parameter {str(key)!r}; it is called as {usage}", key)
                if str(key) in bound:
                    raise self.error(f"{fn} got its argument {str(key)!r} twice", key)
                bound[str(key)] = value
            elif keywords_started:
                raise self.error(f"a positional argument after a keyword argument; {fn} is called as {usage}", arg)
            elif position >= len(names):
                raise self.error(f"{fn} takes {len(names)} argument(s), got {len(args)}; it is called as {usage}",
                                 arg)
            else:
                bound[names[position]] = arg
        for param, default in params:
            if param not in bound:
                if default is _REQUIRED:
                    raise self.error(f"{fn} is missing its argument {param!r}; it is called as {usage}", function)
                bound[param] = default
        return bound

    def einsum_call(self, function: lark.Token, args: list[lark.Tree], name: str | None) -> Tensor:
        if not args or any(a.data == "keyword" for a in args):
            raise self.error('einsum is called as einsum("spec", a, b, ...) without keywords', function)
        spec_node, *operand_nodes = args
        spec = self.eval(spec_node)
        if not isinstance(spec, str):
            raise self.error(f'einsum takes a spec string first, like "ij,jk->ik", got {_describe(spec)}',
                             spec_node)
        operands = [self.expect_tensor(self.eval(o), o, f"einsum operand {k}").name
                    for k, o in enumerate(operand_nodes)]
        try:
            return Tensor(self.program.einsum(spec, *operands, name=name))
        except SpecError as error:
            message, column = _spec_caret(str(error))
            raise self.error(message, spec_node, column + 1 if column is not None else 0) from None

    def reshape_call(self, params: dict[str, Any], name: str | None) -> Tensor:
        x = self.expect_tensor(self.eval(params["x"]), params["x"], "reshape")
        shape_value = self.eval(params["shape"])
        if not isinstance(shape_value, list):
            raise self.error(f"reshape takes the new shape as a list like [b, m, m], got {_describe(shape_value)}",
                             params["shape"])
        shape = [self.dim_value(v, params["shape"], "reshape", allow_minus_one=True) for v in shape_value]
        source = self.tensor_of(x)
        if shape.count(-1) > 1:
            raise self.error("reshape allows at most one -1 in its shape", params["shape"])
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            if known == 0 or source.size % known:
                raise self.error(f"reshape cannot fit {source} ({source.size} elements) into {shape}",
                                 params["shape"])
            shape = [source.size // known if d == -1 else d for d in shape]
        target = TensorType(tuple(shape), source.dtype)
        try:
            return Tensor(self.program.append("reshape", (x.name,), type=target, name=name))
        except IRError as error:
            raise self.error(str(error), params["shape"]) from None

    def cast_call(self, params: dict[str, Any], name: str | None) -> Tensor:
        target = self.dtype_argument(params["dtype"])
        value = self.eval(params["x"])
        if _is_number(value):
            return self.literal(value, target, params["x"])
        x = self.expect_tensor(value, params["x"], "cast")
        source = self.tensor_of(x)
        if source.dtype == target:
            return x
        if target.is_modular and not (source.dtype.is_int or source.dtype.name == "bool" or source.dtype.is_modular):
            raise self.error(f"cast to {target} needs an integer tensor, not {source.dtype}; "
                             "values of zq are integers", params["x"])
        return Tensor(self.program.append("cast", (x.name,), type=TensorType(source.shape, target), name=name))

    def dtype_argument(self, node: lark.Tree) -> dt.DType:
        if node.data == "var":
            return self.dtype(lark.Tree("dtype", [node.children[0], None], node.meta))
        if node.data == "call" and str(node.children[0]) == "zq" and len(node.children) == 2 \
                and node.children[1] is not None and node.children[1].data == "number":
            return self.dtype(lark.Tree("dtype", [node.children[0], node.children[1].children[0]], node.meta))
        if node.data == "string":
            try:
                return dt.dtype(self._eval_string(node, None))
            except IRError as error:
                raise self.error(str(error), node) from None
        raise self.error("cast takes a dtype second, like cast(x, f64) or cast(x, zq(97))", node)

    # ----- weights -----------------------------------------------------------------------------
    def initial_value(self, node: lark.Tree, weight: str, tensor_type: TensorType) -> np.ndarray:
        """The array an initialiser (or a list of numbers) gives for a weight of the declared type."""
        shape, element = tensor_type.shape, tensor_type.dtype
        if node.data == "list":
            values = self.eval(node)
            try:
                data = np.asarray(values)
            except ValueError:
                raise self.error("a weight given as a list needs a rectangular nested list of numbers", node) from None
            if data.dtype.kind not in "biufc":
                raise self.error("a weight given as a list holds numbers only", node)
            return self.fit(data, weight, tensor_type, "the list", node)
        if node.data == "var" and str(node.children[0]) in INITIALISERS:
            function, params = node.children[0], self.bind_arguments(node.children[0], [])
        elif node.data == "call" and str(node.children[0]) in INITIALISERS:
            function = node.children[0]
            params = self.bind_arguments(function, [a for a in node.children[1:] if a is not None])
        else:
            raise self.error(f"weight {weight} needs an initialiser: one of {', '.join(INITIALISERS)} "
                             "(e.g. random(seed=0), load(\"w.npy\")) or a list of numbers", node)
        fn = str(function)
        args = {k: (self.eval(v) if isinstance(v, lark.Tree) else v) for k, v in params.items()}
        if fn == "load":
            return self.load(args, params, weight, tensor_type)
        if fn in ("random", "normal"):
            return self.random(fn, args, params, weight, tensor_type)
        if fn in ("zeros", "ones"):
            return (np.zeros if fn == "zeros" else np.ones)(shape, element.numpy)
        if len(shape) != 2 or (fn != "eye" and shape[0] != shape[1]):
            square = "square " if fn != "eye" else ""
            raise self.error(f"{fn} makes a {square}matrix; declare {weight} with a 2-d shape, got {list(shape)}",
                             node)
        if fn == "eye":
            return np.eye(*shape, dtype=element.numpy)
        if fn == "dft":
            if not element.is_complex:
                raise self.error(f"dft is complex: declare {weight} as c64 or c128, not {element}", node)
            n = shape[0]
            k = np.arange(n)
            return np.exp(-2j * np.pi * (np.outer(k, k) % max(n, 1)) / max(n, 1)).astype(element.numpy)
        n = shape[0]
        if n < 1 or n & (n - 1):
            raise self.error(f"hadamard needs n a power of two, got n = {n}", node)
        if element.name == "bool" or element.name.startswith("u"):
            raise self.error(f"hadamard has entries -1, which {element} cannot hold", node)
        matrix = np.ones((1, 1), dtype=np.int64)
        while matrix.shape[0] < n:
            matrix = np.block([[matrix, matrix], [matrix, -matrix]])
        if element.is_modular:
            return (matrix % element.modulus).astype(np.uint64)
        return matrix.astype(element.numpy)

    def random(self, fn: str, args: dict[str, Any], params: dict[str, Any], weight: str,
               tensor_type: TensorType) -> np.ndarray:
        shape, element = tensor_type.shape, tensor_type.dtype
        seed, scale = args["seed"], args["scale"]
        if seed is None:
            seed = zlib.crc32(weight.encode())
        if not isinstance(seed, int) or seed < 0:
            raise self.error(f"{fn}(seed=...) takes a non-negative integer, got {_describe(seed)}", params["seed"])
        if not _is_real(scale):
            raise self.error(f"{fn}(scale=...) takes a real number, got {_describe(scale)}", params["scale"])
        rng = np.random.default_rng(seed)
        if element.is_float or element.is_complex:
            draw = rng.standard_normal if fn == "normal" else (lambda size: rng.uniform(-1.0, 1.0, size))
            if element.is_complex:
                data = (draw(shape) + 1j * draw(shape)) * (math.sqrt(0.5) if fn == "normal" else 1.0)
            else:
                data = draw(shape)
            return (data * scale).astype(element.numpy)
        if fn == "normal":
            raise self.error(f"normal needs a float or complex weight; use random for {element}", params["seed"])
        if element.is_modular:
            return rng.integers(0, element.modulus, shape, dtype=np.uint64)
        if element.name == "bool":
            return rng.integers(0, 2, shape).astype(np.bool_)
        if not isinstance(scale, int) or scale < 0:
            raise self.error(f"random on {element} draws integers in [-scale, scale]: scale must be a "
                             f"non-negative integer, got {scale!r}", params["scale"])
        info = np.iinfo(element.numpy)
        low, high = max(-scale, info.min), min(scale, info.max)
        return rng.integers(low, high + 1, shape).astype(element.numpy)

    def load(self, args: dict[str, Any], params: dict[str, Any], weight: str, tensor_type: TensorType) -> np.ndarray:
        relative, key = args["path"], args["key"]
        if not isinstance(relative, str):
            raise self.error(f"load takes a file name string, got {_describe(relative)}", params["path"])
        if key is not None and not isinstance(key, str):
            raise self.error(f"load's key is a string naming an array in the .npz, got {_describe(key)}",
                             params["key"])
        path = self.base_dir / relative
        if not path.is_file():
            raise self.error(f"no such weight file {relative!r} (looked for {path})", params["path"])
        try:
            stored = np.load(path, allow_pickle=False)
            if isinstance(stored, np.ndarray):
                if key is not None:
                    raise self.error(f"{relative} holds a single array; drop the key {key!r}", params["key"])
                data = stored
            else:
                with stored:
                    data = self.pick_array(stored, key, relative, params)
        except (OSError, ValueError, EOFError) as error:
            raise self.error(f"cannot read weight file {relative!r}: {error}", params["path"]) from None
        return self.fit(data, weight, tensor_type, relative, params["path"])

    def pick_array(self, stored: Any, key: str | None, relative: str, params: dict[str, Any]) -> np.ndarray:
        keys = list(stored.files)
        if key is None:
            if len(keys) != 1:
                raise self.error(f"{relative} holds arrays {', '.join(keys)}: name one, as load({relative!r}, "
                                 f"{keys[0]!r})" if keys else f"{relative} holds no arrays", params["path"])
            key = keys[0]
        if key not in keys:
            raise self.error(f"{relative} has no array {key!r}; it holds {', '.join(keys)}", params["key"])
        return stored[key]

    def fit(self, data: np.ndarray, weight: str, tensor_type: TensorType, origin: str, where: Where) -> np.ndarray:
        """`data` as the declared type of the weight, refusing another shape or an unsafe conversion."""
        element = tensor_type.dtype
        if tuple(data.shape) != tensor_type.shape:
            raise self.error(f"weight {weight} is declared {tensor_type} but {origin} has shape {data.shape}", where)
        if element.is_modular:
            if data.dtype.kind not in "biu" or (data.size and (data.min() < 0 or int(data.max()) >= element.modulus)):
                raise self.error(f"weight {weight} is {element}: {origin} must hold integers in "
                                 f"[0, {element.modulus})", where)
            return data.astype(np.uint64)
        if data.dtype == element.numpy:
            return data
        if not np.can_cast(data.dtype, element.numpy, "same_kind"):
            raise self.error(f"weight {weight} is {element}; cannot safely convert {origin} ({data.dtype}) to it",
                             where)
        return data.astype(element.numpy)


class IndexStatement:
    """`y[i, k] = 2 * a[i, j] * b[j, k] - c[k, i]`: one einsum per product term (indices missing on the left are
    summed), scaled by its numbers, and the terms added up."""

    def __init__(self, builder: _Builder, output: list[lark.Token], expr: lark.Tree):
        self.builder = builder
        self.output = output
        self.expr = expr
        self.terms = list(self.split_terms(expr, +1))
        self.letters = self.assign_letters()

    def split_terms(self, node: lark.Tree, sign: int) -> Iterator[tuple[int, lark.Tree]]:
        if node.data == "binary" and str(node.children[1]) in "+-":
            left, operator, right = node.children
            yield from self.split_terms(left, sign)
            yield from self.split_terms(right, sign if str(operator) == "+" else -sign)
        else:
            yield sign, node

    def factors(self, node: lark.Tree, found: list[tuple[Tensor, list[lark.Token], lark.Tree]]) -> Number:
        """Collect the indexed tensors of one product into `found`; return the product of its numbers."""
        if node.data == "binary" and str(node.children[1]) in ("*", "/"):
            left, operator, right = node.children
            coefficient = self.factors(left, found)
            if str(operator) == "*":
                return coefficient * self.factors(right, found)
            divisor = self.builder.eval(right)
            if not _is_number(divisor):
                raise self.builder.error("in index notation only numbers can divide, "
                                         f"got {_describe(divisor)}", right)
            return self.builder.fold("/", coefficient, divisor, operator)
        if node.data == "negate":
            return -self.factors(node.children[1], found)
        if node.data == "indexed":
            name, indices = node.children
            value = self.builder._eval_var(lark.Tree("var", [name], node.meta), None)
            tensor = self.builder.expect_tensor(value, name, "indexing")
            tokens = _index_tokens(indices)
            ndim = len(self.builder.tensor_of(tensor).shape)
            if len(tokens) != ndim:
                raise self.builder.error(f"{name} has {ndim} dimension(s) {list(self.builder.tensor_of(tensor).shape)}"
                                         f" but is written with {len(tokens)} index(es)", node)
            found.append((tensor, tokens, node))
            return 1
        value = self.builder.eval(node)
        if _is_number(value):
            return value
        if isinstance(value, Tensor) and not self.builder.tensor_of(value).shape:
            found.append((value, [], node))
            return 1
        raise self.builder.error("in index notation write every tensor with its indices, like x[i, j]; "
                                 f"got {_describe(value)}", node)

    def assign_letters(self) -> dict[str, str]:
        """One einsum letter per index name: one-letter names keep their letter, longer names get a free one."""
        tokens = list(self.output) + [t for node in self.expr.find_data("indexed")
                                      for t in _index_tokens(node.children[1])]
        names = list(dict.fromkeys(str(t) for t in tokens))
        letters = {n: n for n in names if n in LETTERS}
        free = (c for c in LETTERS if c not in letters)
        for n in names:
            if n not in letters:
                letters[n] = next(free, "")
                if not letters[n]:
                    raise self.builder.error("too many different indices: einsum has 52 letters", self.expr)
        return letters

    def build(self, name: str) -> Tensor:
        """The statement's value; its last op is named `name`. The first term always has sign +1."""
        (_, first), *rest = self.terms
        result = self.term_value(first, None if rest else name)
        for k, (sign, term) in enumerate(rest):
            operator = self.operator_before(term)
            value = self.term_value(term, None)
            try:
                result = self.builder.arithmetic("+" if sign > 0 else "-", result, value, operator,
                                                 name if k == len(rest) - 1 else None)
            except IRError as error:
                raise self.builder.error(str(error), operator) from None
        return result

    def operator_before(self, term: lark.Tree) -> Where:
        for node in self.expr.iter_subtrees():
            if node.data == "binary" and node.children[2] is term:
                return node.children[1]
        return term

    def term_value(self, term: lark.Tree, name: str | None) -> Tensor:
        b = self.builder
        found: list[tuple[Tensor, list[lark.Token], lark.Tree]] = []
        coefficient = self.factors(term, found)
        if not found:
            raise b.error("this term has no indexed tensor; a term of index notation needs one, like x[i, j]", term)
        present = {str(t) for _, tokens, _ in found for t in tokens}
        for index in self.output:
            if str(index) not in present:
                raise b.error(f"output index {index} does not appear in this term; each term must carry every "
                              "index of the left side", term)
        inputs = ["".join(self.letters[str(t)] for t in tokens) for _, tokens, _ in found]
        output = "".join(self.letters[str(t)] for t in self.output)
        scaled = coefficient != 1
        if len(found) == 1 and inputs[0] == output:
            value = found[0][0]
        else:
            try:
                value = Tensor(b.program.einsum(",".join(inputs) + "->" + output, *(t.name for t, _, _ in found),
                                                name=None if scaled else name))
            except (SpecError, IRError) as error:
                raise b.error(_spec_caret(str(error))[0], term) from None
        if scaled:
            factor = b.literal(coefficient, b.tensor_of(value).dtype, term)
            try:
                return Tensor(b.program.elementwise("mul", value.name, factor.name, name=name))
            except IRError as error:
                raise b.error(str(error), term) from None
        return value


def _index_tokens(indices: lark.Tree) -> list[lark.Token]:
    return [t for t in indices.children if t is not None]


def _position(where: Where | None) -> tuple[int, int]:
    if isinstance(where, lark.Token):
        return where.line or 0, where.column or 0
    if isinstance(where, lark.Tree) and not where.meta.empty:
        return where.meta.line, where.meta.column
    return 0, 0


def _spec_caret(message: str) -> tuple[str, int | None]:
    """Split an einsum SpecError into its first line and the column of its caret within the spec, if it has one."""
    lines = message.split("\n")
    if len(lines) == 3 and lines[2].strip() == "^":
        return lines[0], len(lines[2]) - 5
    return message, None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, complex)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"the tensor {value.name}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"the number {value!r}"

