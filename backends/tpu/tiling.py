"""Lowering of einfold IR to the engine's tiled program: a list of steps, each run by one unit (MXU, VPU, or none).

    einsum "zr,brc->bzc"(A: zq, X: zq)  ->  bytes(X) [vpu]; gemm(BAT(A): int8, bytes) -> int32 [mxu]; combine [vpu]
    mul(Y: zq, T: zq) -> mulmod [vpu];   einsum over floats (2 operands) -> bf16 gemm, f32 accumulation [mxu]
Limb selects/embeddings (einsums with one-hot constants), reshapes and casts that keep the values are views.
Every step is a frozen dataclass that prints as one line of the `--emit tpu` listing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from einfold.errors import UnsupportedError
from einfold.ir import Op, Program
from einfold.reference import literal_array
from einfold.spec import EinsumSpec

from .bat import BatBlock, BatWeights, bat_weights, byte_count
from .engine import Engine

BF16_EXACT = 2**24


@dataclass(frozen=True)
class View:
    """No data motion: reshape, reinterpretation, limb select/embed (a strided slice) or assembly of limbs."""

    out: str
    srcs: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    how: str
    axis: int = 0
    index: int = 0
    count: int = 1
    unit = "none"

    def line(self) -> str:
        detail = {"select": f" limb {self.index} of axis {self.axis}", "embed": f" as limb {self.index}/{self.count}"
                  f" of axis {self.axis}"}.get(self.how, "")
        return f"%{self.out} = view {self.how}{detail} ({', '.join('%' + s for s in self.srcs)})"


@dataclass(frozen=True)
class Reduce:
    """x mod q of uint64 values that may exceed q (cast to zq), by Barrett on the vector unit."""

    out: str
    src: str
    shape: tuple[int, ...]
    q: int
    dtype: str = "uint64"
    unit = "vpu"

    def line(self) -> str:
        return f"%{self.out} = reduce %{self.src} mod {self.q}"


@dataclass(frozen=True)
class Bytes:
    """uint64[pre, J, post] -> int8[pre, J*k, post]: byte p of x[j] minus 128 at row j*k + p."""

    out: str
    src: str
    pre: int
    j: int
    post: int
    k: int
    dtype: str = "int8"
    unit = "vpu"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.pre, self.j * self.k, self.post)

    def line(self) -> str:
        shape = f"[{self.pre},{self.j}x{self.k},{self.post}]"
        return f"%{self.out} = bytes %{self.src} as {shape} (byte p - 128 at row kj+p)"


@dataclass(frozen=True)
class Gemm:
    """out[pre, m, post] = W[m, kc] . X[pre, kc, post] on the MXU, W weight-stationary in array-sized tiles."""

    out: str
    weights: str
    data: str
    pre: int
    m: int
    kc: int
    post: int
    input_type: str
    accumulator: str
    dtype: str = "int32"
    unit = "mxu"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.pre, self.m, self.post)

    @property
    def macs(self) -> int:
        return self.pre * self.m * self.kc * self.post

    def line(self) -> str:
        return (f"%{self.out} = gemm %{self.weights}[{self.m},{self.kc}] {self.input_type} (stationary) x "
                f"%{self.data}[{self.pre},{self.kc},{self.post}] {self.input_type} -> {self.accumulator}")


@dataclass(frozen=True)
class Combine:
    """BAT epilogue of one row block: add the bias, shift-add the k digit rows, Barrett-reduce modulo q."""

    out: str
    acc: str
    bias: str
    row_start: int
    block: BatBlock
    shape: tuple[int, ...]
    dtype: str = "uint64"
    unit = "vpu"

    def line(self) -> str:
        b = self.block
        rows = f"{self.row_start}:{self.row_start + b.rows * b.k_out}"
        return (f"%{self.out} = combine %{self.acc}[:, {rows}] + %{self.bias}: sum_t acc_t << 8t (t < {b.k_out}) "
                f"+ {b.offset}, barrett q={b.q} s={b.barrett.s} m={b.barrett.m}")


@dataclass(frozen=True)
class ModElementwise:
    """a (op) b modulo q on the vector unit (mul by Barrett; add/sub by a conditional correction)."""

    out: str
    op: str
    srcs: tuple[str, ...]
    shape: tuple[int, ...]
    q: int
    dtype: str = "uint64"
    unit = "vpu"

    def line(self) -> str:
        return f"%{self.out} = {self.op}mod ({', '.join('%' + s for s in self.srcs)}) q={self.q}"


@dataclass(frozen=True)
class FloatGemm:
    """A two-operand float einsum on the MXU: bf16 inputs, each K tile summed exactly and rounded to f32, tiles
    accumulated in f32 in order. Labels: batch (both + out), m (a + out), n (b + out), k (both, summed)."""

    out: str
    srcs: tuple[str, str]
    spec: str
    shape: tuple[int, ...]
    dtype: str
    batch: int
    m: int
    n: int
    k: int
    tile_k: int
    unit = "mxu"
    input_type = "bf16"

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.n * self.k

    def line(self) -> str:
        return (f"%{self.out} = gemm \"{self.spec}\" (%{self.srcs[0]}, %{self.srcs[1]}) bf16 x bf16 -> f32 as "
                f"[{self.batch}] x [{self.m},{self.k}] x [{self.k},{self.n}], K tiles of {self.tile_k}")


@dataclass(frozen=True)
class Vector:
    """Any other float op, element by element on the vector unit (in f32 for bf16 values)."""

    out: str
    op: Op
    srcs: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    ops_per_element: int
    unit = "vpu"

    def line(self) -> str:
        return f"%{self.out} = vector {self.op.opcode} {self.op.attrs or ''} ({', '.join('%' + s for s in self.srcs)})"


Step = View | Reduce | Bytes | Gemm | Combine | ModElementwise | FloatGemm | Vector


def step_inputs(step: Step) -> tuple[str, ...]:
    """The values a step reads, in the order its runner takes them."""
    if isinstance(step, (Reduce, Bytes)):
        return (step.src,)
    if isinstance(step, Gemm):
        return (step.weights, step.data)
    if isinstance(step, Combine):
        return (step.acc, step.bias)
    return step.srcs


@dataclass
class TiledProgram:
    """Steps over named buffers; constants by name; the engine they are planned for."""

    name: str
    engine: Engine
    inputs: list[tuple[str, tuple[int, ...], str]]
    outputs: list[str]
    steps: list[Step] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    bat: dict[str, BatWeights] = field(default_factory=dict)

    def buffer_shape(self, name: str) -> tuple[int, ...]:
        for step in self.steps:
            if step.out == name:
                return step.shape
        for input_name, shape, _ in self.inputs:
            if input_name == name:
                return shape
        return self.consts[name].shape


def _unsigned(op: Op) -> bool:
    return op.type.dtype.is_modular or (op.type.dtype.is_int and op.type.dtype.name.startswith("u"))


def _numpy_name(op: Op) -> str:
    return np.dtype(op.type.dtype.numpy).name


class _Lowering:
    def __init__(self, program: Program, engine: Engine):
        self.program = program
        self.engine = engine
        self.defs = {op.result: op for op in program.ops}
        self.users = program.users()
        self.bound: dict[str, int] = {}
        self.limbs: dict[str, frozenset[int]] = {}
        self.tiled = TiledProgram(program.name, engine, [(op.result, op.type.shape, _numpy_name(op))
                                                         for op in program.inputs], list(program.outputs))
        self.fused: dict[str, list[Op]] = {}
        self.skipped: set[str] = set()
        self._weights: dict[str, np.ndarray] = {}
        self._forms: dict[str, tuple[str, str, int, bool]] = {}

    # ----- helpers -------------------------------------------------------------------------------------------------
    def emit(self, step: Step) -> None:
        self.tiled.steps.append(step)

    def const_value(self, name: str) -> np.ndarray | None:
        op = self.defs[name]
        if op.opcode == "const":
            return self.program.weights[op.attrs["name"]]
        if op.opcode == "literal":
            return literal_array(op)
        return None

    def use_const(self, name: str) -> None:
        value = self.const_value(name)
        if value is not None and name not in self.tiled.consts:
            self.tiled.consts[name] = np.asarray(value)

    # ----- recognisers ---------------------------------------------------------------------------------------------
    def one_hot(self, op: Op) -> tuple[str, str, int, int, int] | None:
        """('select' | 'embed', data, axis, index, count) for an integer einsum with a one-hot vector constant."""
        if op.opcode != "einsum" or len(op.operands) != 2 or not op.type.dtype.is_int:
            return None
        spec = EinsumSpec.parse(op.attrs["spec"])
        for k in (0, 1):
            vector = self.const_value(op.operands[k])
            term, data_term = spec.inputs[k], spec.inputs[1 - k]
            if vector is None or vector.ndim != 1 or np.count_nonzero(vector) != 1 or vector.max() != 1:
                continue
            label, index = term, int(np.argmax(vector))
            if label in data_term and label not in spec.output and spec.output == data_term.replace(label, ""):
                return "select", op.operands[1 - k], data_term.index(label), index, len(vector)
            if label not in data_term and spec.output.replace(label, "") == data_term:
                return "embed", op.operands[1 - k], spec.output.index(label), index, len(vector)
        return None

    def bat_form(self, op: Op) -> tuple[str, str, int, bool] | None:
        """(data, weights, contracted axis of data, has a row label) for a zq einsum data x constant that maps to
        one BAT GEMM without moving data; raises UnsupportedError for other zq einsums."""
        if op.opcode != "einsum" or not op.type.dtype.is_modular:
            return None
        spec = EinsumSpec.parse(op.attrs["spec"])
        where = f"tpu: einsum %{op.result} \"{spec}\""
        if len(op.operands) != 2:
            raise UnsupportedError(f"{where}: modular einsums need exactly two operands, one of them constant")
        for k in (0, 1):
            if self.defs[op.operands[k]].opcode != "const":
                continue
            term, data_term = spec.inputs[k], spec.inputs[1 - k]
            contracted = [lab for lab in term if lab in data_term and lab not in spec.output]
            rows = [lab for lab in term if lab not in data_term]
            if len(contracted) != 1 or len(rows) > 1 or len(term) != len(set(term)) or \
                    len(term) != len(contracted) + len(rows) or len(data_term) != len(set(data_term)):
                continue
            j = contracted[0]
            expected = data_term.replace(j, rows[0] if rows else "")
            if spec.output != expected:
                raise UnsupportedError(f"{where}: the output order would need a transpose of the data (expected "
                                       f"'{expected}'); reorder the einsum")
            weights = self.program.weights[self.defs[op.operands[k]].attrs["name"]]
            if rows and term.index(j) == 0:
                weights = weights.T
            self._weights[op.result] = np.ascontiguousarray(weights.reshape(-1, weights.shape[-1]))
            return op.operands[1 - k], op.operands[k], data_term.index(j), bool(rows)
        raise UnsupportedError(f"{where}: the matrix engine lowers a modular einsum as a GEMM with a constant "
                               "matrix over one contracted index (BAT); this one has no such constant")

    def data_source(self, value: str) -> tuple[str, int]:
        """Look through a cast from an integer value: BAT works on any integer representative of the residue."""
        op = self.defs[value]
        if op.opcode == "cast" and _unsigned(self.defs[op.operands[0]]):
            source = op.operands[0]
            return source, self.bound[source]
        return value, self.bound[value]

    # ----- planning ------------------------------------------------------------------------------------------------
    def plan_bat(self) -> None:
        """Group BAT einsums that read the same source along the same axis into one GEMM (one block per einsum)."""
        groups: dict[tuple, list[Op]] = {}
        for op in self.program.ops:
            form = self.bat_form(op)
            if form is None:
                continue
            self._forms[op.result] = form
            data = self.defs[form[0]]
            source = data.operands[0] if data.opcode == "cast" else form[0]
            key = (source, form[2], self._weights[op.result].shape[1], form[3])
            groups.setdefault(key, []).append(op)
        for members in groups.values():
            self.fused[members[0].result] = members
            for member in members[1:]:
                self.skipped.add(member.result)

    # ----- lowering ------------------------------------------------------------------------------------------------
    def run(self) -> TiledProgram:
        for op in self.program.inputs:
            dtype = op.type.dtype
            self.bound[op.result] = dtype.modulus - 1 if dtype.is_modular else \
                (2 ** (8 * dtype.itemsize) - 1 if dtype.is_int else 0)
        self.plan_bat()
        for op in self.program.ops:
            if op.opcode in ("input", "const", "literal") or op.result in self.skipped:
                continue
            self.lower(op)
        for name in self.tiled.outputs:
            self.use_const(name)
        return self.tiled

    def lower(self, op: Op) -> None:
        dtype = op.type.dtype
        if dtype.is_modular:
            self.bound[op.result] = dtype.modulus - 1
        if op.result in self.fused:
            return self.lower_bat(self.fused[op.result])
        if op.opcode == "reshape":
            self.bound[op.result] = self.bound.get(op.operands[0], 0)
            self.limbs[op.result] = self.limbs.get(op.operands[0], frozenset())
            return self.emit(View(op.result, op.operands, op.type.shape, _numpy_name(op), "reshape"))
        if op.opcode == "cast":
            return self.lower_cast(op)
        if dtype.is_modular:
            return self.lower_modular(op)
        if dtype.is_int:
            return self.lower_integer(op)
        if op.opcode == "einsum" and len(op.operands) == 2:
            return self.lower_float_gemm(op)
        for operand in op.operands:
            self.use_const(operand)
        flops = self.program.op_flops(op)
        self.emit(Vector(op.result, op, op.operands, op.type.shape, _numpy_name(op),
                         max(1, math.ceil(flops / max(op.type.size, 1)))))

    def lower_cast(self, op: Op) -> None:
        source, target = self.defs[op.operands[0]], op.type.dtype
        bound = self.bound.get(source.result, 0)
        if not (source.type.dtype.is_int or source.type.dtype.is_modular) or not (target.is_int or target.is_modular):
            if target.is_modular or source.type.dtype.is_modular:
                raise UnsupportedError(f"tpu: cast %{op.result} between {source.type.dtype} and {target}")
            self.use_const(source.result)
            return self.emit(Vector(op.result, op, op.operands, op.type.shape, _numpy_name(op), 1))
        if target.is_modular and not _unsigned(source):
            raise UnsupportedError(f"tpu: cast %{op.result} of signed {source.type.dtype} to {target}: give residues "
                                   "as unsigned integers")
        readers = self.users.get(op.result, [])
        if target.is_modular and readers and all(u.result in self._forms for u in readers):
            self.bound[op.result] = bound
            return  # absorbed: the BAT GEMM reads the source bytes directly
        if target.is_modular and bound >= target.modulus:
            self.use_const(source.result)
            return self.emit(Reduce(op.result, source.result, op.type.shape, target.modulus))
        if target.is_int and bound >= 2 ** (8 * target.itemsize):
            raise UnsupportedError(f"tpu: cast %{op.result} would truncate values up to {bound} to {target}")
        self.bound[op.result] = bound
        self.limbs[op.result] = self.limbs.get(source.result, frozenset())
        self.emit(View(op.result, (source.result,), op.type.shape, _numpy_name(op), "reinterpret"))

    def lower_integer(self, op: Op) -> None:
        hot = self.one_hot(op)
        if hot is not None:
            how, data, axis, index, count = hot
            self.bound[op.result] = self.bound.get(data, 2**64 - 1)
            if how == "embed":
                self.limbs[op.result] = frozenset([index])
            return self.emit(View(op.result, (data,), op.type.shape, _numpy_name(op), how, axis, index, count))
        if op.opcode == "add":
            a, b = (self.limbs.get(v) for v in op.operands)
            if a and b and not a & b and self.defs[op.operands[0]].type == self.defs[op.operands[1]].type == op.type:
                self.limbs[op.result] = a | b
                self.bound[op.result] = max(self.bound[v] for v in op.operands)
                return self.emit(View(op.result, op.operands, op.type.shape, _numpy_name(op), "assemble"))
        raise UnsupportedError(f"tpu: integer {op.opcode} %{op.result} : {op.type} has no lowering (the engine "
                               "lowers zq arithmetic, float einsums, and limb selects/embeddings)")

    def lower_modular(self, op: Op) -> None:
        q = op.type.dtype.modulus
        if op.opcode in ("mul", "add", "sub", "neg"):
            for operand in op.operands:
                self.use_const(operand)
            return self.emit(ModElementwise(op.result, op.opcode, op.operands, op.type.shape, q))
        if op.opcode == "map" and op.attrs["fn"] == "square":
            return self.emit(ModElementwise(op.result, "mul", (op.operands[0], op.operands[0]), op.type.shape, q))
        raise UnsupportedError(f"tpu: {op.opcode} %{op.result} on {op.type.dtype} has no lowering")

    def lower_bat(self, members: list[Op]) -> None:
        first = members[0]
        data, _, axis, _ = self._forms[first.result]
        source, bound = self.data_source(data)
        shape = self.defs[data].type.shape
        pre, j, post = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
        k_in = byte_count(bound)
        weights = bat_weights([(m.type.dtype.modulus, self._weights[m.result]) for m in members], k_in)
        input_type, accumulator = self.bat_types(first, j * k_in)
        name = first.result
        self.tiled.consts[f"{name}.bat"] = weights.matrix
        self.tiled.consts[f"{name}.bias"] = weights.bias
        self.tiled.bat[name] = weights
        self.emit(Bytes(f"{name}.bytes", source, pre, j, post, k_in))
        self.emit(Gemm(f"{name}.acc", f"{name}.bat", f"{name}.bytes", pre, weights.matrix.shape[0], j * k_in, post,
                       input_type, accumulator))
        row = 0
        for member, block in zip(members, weights.blocks):
            self.bound[member.result] = block.q - 1
            self.emit(Combine(member.result, f"{name}.acc", f"{name}.bias", row, block, member.type.shape))
            row += block.rows * block.k_out

    def bat_types(self, op: Op, contraction: int) -> tuple[str, str]:
        """int8 x int8 -> int32 when the engine has int8; else bf16 x bf16 -> f32, legal only while every partial
        sum (at most contraction x 128 x 128) is an integer that f32 holds exactly (< 2^24)."""
        if "i8" in self.engine.input_types and "i32" in self.engine.accumulators:
            return "i8", "i32"
        self.engine.require("bf16", "f32", f"the BAT GEMM of %{op.result}")
        if contraction * 128 * 128 > BF16_EXACT:
            raise UnsupportedError(f"tpu: the bf16 path of the BAT GEMM of %{op.result} is not exact: contraction "
                                   f"{contraction} bytes x 128 x 128 exceeds 2^24 (f32 integers); at most "
                                   f"{BF16_EXACT // 2**14} bytes")
        return "bf16", "f32"

    def lower_float_gemm(self, op: Op) -> None:
        spec = EinsumSpec.parse(op.attrs["spec"])
        a_term, b_term = spec.inputs
        sizes = spec.sizes([self.defs[v].type.shape for v in op.operands])
        for label in spec.labels:
            if label not in spec.output and (label not in a_term or label not in b_term):
                raise UnsupportedError(f"tpu: einsum %{op.result} \"{spec}\" sums '{label}' inside one operand; "
                                       "run contraction-plan first")
            if a_term.count(label) > 1 or b_term.count(label) > 1:
                raise UnsupportedError(f"tpu: einsum %{op.result} \"{spec}\" takes a diagonal; not on the MXU")
        size = lambda labels: math.prod(sizes[x] for x in labels)  # noqa: E731
        batch = [x for x in spec.output if x in a_term and x in b_term]
        m = [x for x in a_term if x not in b_term]
        n = [x for x in b_term if x not in a_term]
        k = [x for x in a_term if x in b_term and x not in spec.output]
        self.engine.require("bf16", "f32", f"the float einsum %{op.result}")
        for operand in op.operands:
            self.use_const(operand)
        self.emit(FloatGemm(op.result, (op.operands[0], op.operands[1]), str(spec), op.type.shape, _numpy_name(op),
                            size(batch), size(m), size(n), size(k), self.engine.array_rows))


def lower_program(program: Program, engine: Engine) -> TiledProgram:
    """The tiled program of an einfold Program (after the target's passes)."""
    return _Lowering(program, engine).run()


def listing(tiled: TiledProgram, costs: list | None = None, slots: list | None = None) -> str:
    """The readable `--emit tpu` text: engine, constants, and one line per step with its unit, tile plan, cost and
    scheduled start and end cycles."""
    engine = tiled.engine
    lines = [f"tpu program @{tiled.name}", f"  engine: {engine}",
             "  inputs: " + ", ".join(f"%{n}: {d}{list(s)}" for n, s, d in tiled.inputs)]
    for name, value in tiled.consts.items():
        lines.append(f"  const %{name}: {value.dtype}{list(value.shape)}")
    lines.append("  steps:")
    for index, step in enumerate(tiled.steps):
        when = f"{slots[index]}: " if slots else ""
        cost = f"  [{when}{costs[index].summary()}]" if costs else ""
        lines.append(f"  {index:3d} {step.unit:4s} {step.line()} : {step.dtype}{list(step.shape)}{cost}")
        if isinstance(step, Gemm):
            tiles_m, tiles_k = -(-step.m // engine.array_rows), -(-step.kc // engine.array_cols)
            lines.append(f"           for tm < {tiles_m}, tk < {tiles_k}: weight tile [{engine.array_rows},"
                         f"{engine.array_cols}] {step.input_type} -> array (tm*{tiles_k}+tk) % {engine.arrays}; "
                         f"stream {step.pre * step.post} columns; accumulate {step.accumulator} over tk")
        if isinstance(step, FloatGemm):
            lines.append(f"           for b < {step.batch}, tk < {-(-step.k // step.tile_k)}, tn < "
                         f"{-(-step.n // engine.array_cols)}: weight tile of operand 2; stream {step.m} rows; "
                         "f32 accumulate over tk")
    lines.append("  return " + ", ".join(f"%{n}" for n in tiled.outputs))
    return "\n".join(lines) + "\n"
