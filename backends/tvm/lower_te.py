"""Lower an einfold program (binary einsums, elementwise ops, maps, reshapes, casts) to one TVM TE graph.

A GEMM-shaped einsum out[b,m,n] = sum_k A[b,m,k] * B[b,k,n] (each group possibly several labels in any order)
becomes pack stages Ap[b,mo,k,mi] = A[b,mo*mr+mi,k], Bp[b,no,k,ni] = B[b,k,no*nr+ni] (zero-padded to whole
tiles), a tiled reduction Cp[b,mo,no,mi,ni] = sum_k Ap[b,mo,k,mi] * Bp[b,no,k,ni] and an output stage that writes
Cp back in the einsum's own label order. Labels summed in one operand only (and diagonals, 'ii') are reduced
first ('ijk->ij'); other einsums (reductions, outer products, matrix-vector) are one direct reduction stage.
Elementwise stages read once by a single consumer are inlined into it, which fuses epilogue chains into the
einsum's output stage. Every stage is target-independent TE; `schedules.py` decides loops for the CPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tvm import te, tirx

from einfold import dtypes as dt
from einfold.errors import IRError, UnsupportedError
from einfold.ir import Op, Program
from einfold.loopnest import GemmView
from einfold.reference import literal_array
from einfold.spec import EinsumSpec

from . import scalar as sc
from .schedules import GemmTiling, Machine, choose_tiling

Index = Sequence[tirx.Expr]

# Below this many multiply-adds a contraction is one plain loop nest: packing and tiling would not pay off.
GEMM_MIN_WORK = 1 << 14

# Picks a GEMM stage's tiling from the machine, compute dtype, complexness and the group extents {b, m, n, k}.
TilingRule = Callable[[Machine, str, bool, dict[str, int]], GemmTiling]


def cpu_tiling(machine: Machine, compute: str, is_complex: bool, extent: dict[str, int]) -> GemmTiling:
    return choose_tiling(machine, compute, is_complex, extent["k"], extent["n"])


@dataclass
class Value:
    """An einfold value during lowering: how to read one element (in compute type) at an index."""

    shape: tuple[int, ...]
    dtype: dt.DType
    load: Callable[[Index], sc.Scalar]
    stage: str | None = None


@dataclass(frozen=True)
class Stage:
    """One TE compute stage: its block name, the schedule rule it gets, and the work it does (for threading)."""

    name: str
    role: str  # "elementwise", "pack", "gemm", "reduce", "check"
    work: int
    tiling: GemmTiling | None = None
    op: str = ""
    dtype: str = ""
    contiguous_reduce: int = 0  # extent of the innermost reduction when it reads memory contiguously
    sums_outside: bool = False  # the outer summed labels are outer in memory to the kept ones ('ijk->j')


@dataclass
class TEGraph:
    """The lowered program: TE parameters in calling order and the stages to schedule."""

    inputs: list[te.Tensor]
    consts: list[te.Tensor]
    const_data: list[np.ndarray]
    outputs: list[te.Tensor]
    checks: list[tuple[te.Tensor, str]]
    stages: list[Stage]
    inlined: set[str]
    fused_epilogues: int = 0

    def reachable(self) -> set[str]:
        """Names of the stages the parameters depend on (the blocks the built function will have)."""
        seen: set[str] = set()
        pending = [t.op for t in self.params]
        while pending:
            operation = pending.pop()
            if operation.name not in seen:
                seen.add(operation.name)
                pending.extend(t.op for t in operation.input_tensors)
        return seen

    @property
    def params(self) -> list[te.Tensor]:
        return [*self.inputs, *self.consts, *self.outputs, *(t for t, _ in self.checks)]


def storage_shape(shape: tuple[int, ...], element: dt.DType) -> tuple[int, ...]:
    return (*shape, 2) if sc.storage(element).complex else shape


def unravel(flat: tirx.Expr, sizes: Sequence[int]) -> list[tirx.Expr]:
    """Row-major indices of a flat index over `sizes`."""
    out: list[tirx.Expr] = []
    stride = math.prod(sizes)
    for position, size in enumerate(sizes):
        stride //= size
        index = tirx.floordiv(flat, stride) if stride > 1 else flat
        out.append(tirx.floormod(index, size) if position > 0 else index)
    return out


def ravel(indices: Sequence[tirx.Expr], sizes: Sequence[int]) -> tirx.Expr:
    flat: tirx.Expr = tirx.const(0, "int32")
    for index, size in zip(indices, sizes):
        flat = flat * size + index
    return flat


def broadcast(idx: Index, source: tuple[int, ...], shape: tuple[int, ...]) -> list[tirx.Expr]:
    """Indices into a value of shape `source` broadcast (numpy rules) to `shape`."""
    offset = len(shape) - len(source)
    return [tirx.const(0, "int32") if size == 1 and shape[offset + d] != 1 else idx[offset + d]
            for d, size in enumerate(source)]


def _pair_body(pair: Callable[[Index], tuple]) -> Callable[..., tirx.Expr]:
    """A TE body storing a pair of expressions along a trailing axis of 2."""
    return lambda *idx: tirx.Select(idx[-1] == 0, *pair(idx[:-1]))


def _block_name(hint: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", hint)
    base = base if base[:1].isalpha() else f"v{base}"
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


class Lowerer:
    """Builds the TE graph op by op, remembering which stage reads which, to decide inlining at the end."""

    def __init__(self, program: Program, machine: Machine, tiling_rule: TilingRule = cpu_tiling):
        self.program = program
        self.machine = machine
        self.tiling_rule = tiling_rule
        self.values: dict[str, Value] = {}
        self.stages: list[Stage] = []
        self.tensors: dict[str, te.Tensor] = {}
        self.reads: dict[str, list[tuple[str, bool]]] = {}  # producer stage -> [(consumer stage, reads once)]
        self.names: set[str] = set()
        self.inputs: list[te.Tensor] = []
        self.consts: list[te.Tensor] = []
        self.const_data: list[np.ndarray] = []
        self.checks: list[tuple[te.Tensor, str]] = []
        self.epilogue_ops: set[str] = {op.result for op in program.ops if "epilogue_of" in op.attrs}

    # ----- stages ------------------------------------------------------------------------------------------------
    def _record(self, stage: Stage, tensor: te.Tensor, reads: Sequence[tuple[Value, bool]]) -> None:
        self.stages.append(replace(stage, dtype=str(tensor.dtype)))
        self.tensors[stage.name] = tensor
        for value, once in reads:
            if value.stage is not None:
                self.reads.setdefault(value.stage, []).append((stage.name, once))

    def _tensor_value(self, tensor: te.Tensor, shape: tuple[int, ...], element: dt.DType, stage: str | None,
                      raw: bool = False) -> Value:
        """A value read from a tensor holding `element` (raw: the tensor holds compute-type values)."""
        convert = (lambda x: x) if raw else (lambda x: sc.from_storage(x, element))
        if sc.storage(element).complex:
            def load(idx: Index) -> sc.Scalar:
                return sc.Complex(tensor(*idx, 0), tensor(*idx, 1))
        else:
            def load(idx: Index) -> sc.Scalar:
                return convert(tensor(*idx))
        return Value(shape, element, load, stage)

    def materialise(self, hint: str, shape: tuple[int, ...], element: dt.DType,
                    scalar: Callable[[Index], sc.Scalar], reads: Sequence[tuple[Value, bool]],
                    role: str = "elementwise", op: str = "") -> Value:
        """An elementwise stage computing `scalar(index)` for every index of `shape`, stored as `element`."""
        name = _block_name(hint, self.names)
        store = sc.storage(element)

        if store.complex:
            def body(*idx: tirx.Expr) -> tirx.Expr:
                value = scalar(idx[:-1])
                return tirx.Select(idx[-1] == 0, value.re, value.im)
        else:
            def body(*idx: tirx.Expr) -> tirx.Expr:
                return sc.to_storage(scalar(idx), element)
        tensor = te.compute(storage_shape(shape, element), body, name=name)
        self._record(Stage(name, role, math.prod(shape), op=op), tensor, reads)
        return self._tensor_value(tensor, shape, element, name)

    def reduce_stage(self, hint: str, terms: Sequence[str], operands: Sequence[Value], out: str,
                     sizes: dict[str, int], element: dt.DType, op: str) -> Value:
        """out[out] = sum over the other labels of prod(operands), in compute type (raw), one stage."""
        store = sc.storage(element)
        summed = [label for label in dict.fromkeys("".join(terms)) if label not in out]
        # The label innermost in memory goes innermost, so the hot loop reads contiguously and can be vectorised.
        summed.sort(key=lambda label: any(term.endswith(label) for term in terms))
        contiguous = bool(summed) and all(term.endswith(summed[-1]) or summed[-1] not in term for term in terms) \
            and not store.complex and element.name != "bool"
        axes = {label: te.reduce_axis((0, sizes[label]), name=f"r_{label}") for label in summed}
        shape = tuple(sizes[label] for label in out)
        name = _block_name(hint, self.names)

        def product(env: dict[str, tirx.Expr]) -> sc.Scalar:
            result = None
            for term, operand in zip(terms, operands):
                loaded = operand.load([env[label] for label in term])
                result = loaded if result is None else (
                    tirx.min(result, loaded) if element.name == "bool" else result * loaded)
            return result

        empty_sum = any(sizes[label] == 0 for label in summed)

        def body(*idx: tirx.Expr) -> tirx.Expr:
            if empty_sum:  # a sum of nothing: TVM would never run the reduction's initialisation
                return tirx.const(0, store.compute)
            env = {**dict(zip(out, idx)), **{label: axis.var for label, axis in axes.items()}}
            value = product(env)
            if store.complex:
                value = tirx.Select(idx[-1] == 0, value.re, value.im)
            if not axes:
                return value
            reducer = te.max if element.name == "bool" else te.sum
            return reducer(value, axis=list(axes.values()))

        tensor = te.compute(storage_shape(shape, element), body, name=name)
        work = math.prod(sizes[label] for label in set("".join(terms)) | set(out))
        inner = sizes[summed[-1]] if contiguous else 0
        term = terms[0]
        outer_sums = [term.index(label) for label in summed[:-1] if label in term]
        kept = [term.index(label) for label in out if label in term]
        sums_outside = bool(outer_sums and kept) and max(outer_sums) < min(kept)
        self._record(Stage(name, "reduce" if axes else "elementwise", work, op=op, contiguous_reduce=inner,
                           sums_outside=sums_outside), tensor, [(v, False) for v in operands])
        return self._tensor_value(tensor, shape, element, name, raw=True)

    # ----- ops ---------------------------------------------------------------------------------------------------
    def lower(self) -> TEGraph:
        for op in self.program.ops:
            where = f" (op %{op.result} = {op.opcode})"
            sc.storage(op.type.dtype, where)
            handler = getattr(self, "_" + op.opcode, None)
            if handler is None:
                raise UnsupportedError(f"the tvm target has no lowering for opcode {op.opcode!r}{where}")
            self.values[op.result] = handler(op)
        outputs = self._outputs()
        inlined, fused = self._inline_decisions({t.op.name for t in outputs})
        return TEGraph(self.inputs, self.consts, self.const_data, outputs, self.checks, self.stages, inlined, fused)

    def _placeholder(self, op: Op) -> tuple[te.Tensor, Value]:
        element = op.type.dtype
        name = _block_name(op.result, self.names)
        tensor = te.placeholder(storage_shape(op.type.shape, element), sc.storage(element).buffer, name=name)
        return tensor, self._tensor_value(tensor, op.type.shape, element, None)

    def _input(self, op: Op) -> Value:
        tensor, value = self._placeholder(op)
        self.inputs.append(tensor)
        return value

    def _const(self, op: Op) -> Value:
        tensor, value = self._placeholder(op)
        data = self.program.weights.get(op.attrs["name"])
        if data is None:
            raise IRError(f"weight {op.attrs['name']!r} of %{op.result} has no data")
        self.consts.append(tensor)
        self.const_data.append(np.ascontiguousarray(data, dtype=op.type.dtype.numpy).reshape(op.type.shape))
        return value

    def _literal(self, op: Op) -> Value:
        number = literal_array(op).item()
        value = sc.const(number, op.type.dtype)
        return Value((), op.type.dtype, lambda idx: value)

    def _operand(self, name: str) -> Value:
        return self.values[name]

    def _elementwise(self, op: Op, fn: Callable[[list[sc.Scalar]], sc.Scalar]) -> Value:
        operands = [self._operand(v) for v in op.operands]
        shape = op.type.shape

        def scalar(idx: Index) -> sc.Scalar:
            return fn([v.load(broadcast(idx, v.shape, shape)) for v in operands])

        return self.materialise(op.result, shape, op.type.dtype, scalar,
                                [(v, v.shape == shape) for v in operands], op=op.result)

    def _binary(self, op: Op) -> Value:
        element = op.type.dtype
        if element.is_int and op.opcode in ("div", "pow"):
            self._check(op)
        if element.is_int and op.opcode == "pow":
            return self._int_pow(op)
        return self._elementwise(op, lambda xs: sc.binary(op.opcode, xs[0], xs[1], element))

    def _int_pow(self, op: Op) -> Value:
        """Integer pow as a few stages of square-and-multiply, each carrying (result, power) to the next."""
        base, exponent = (self._operand(v) for v in op.operands)
        shape, element = op.type.shape, op.type.dtype
        dtype = sc.storage(element).compute
        bits = 8 * element.itemsize
        state: te.Tensor | None = None
        reads = [(base, False), (exponent, False)]
        for start in range(0, bits, sc.POW_BITS_PER_STAGE):
            chunk = range(start, min(bits, start + sc.POW_BITS_PER_STAGE))

            def step(idx: Index, state: te.Tensor | None = state, chunk: range = chunk) -> tuple:
                e = exponent.load(broadcast(idx, exponent.shape, shape))
                if state is None:
                    first = base.load(broadcast(idx, base.shape, shape))
                    return sc.int_pow_steps(tirx.const(1, dtype), first, e, chunk)
                return sc.int_pow_steps(state(*idx, 0), state(*idx, 1), e, chunk)

            if chunk.stop == bits:
                return self.materialise(op.result, shape, element, lambda idx: step(idx)[0], reads, op=op.result)
            name = _block_name(f"{op.result}_pow{start}", self.names)
            state = te.compute((*shape, 2), _pair_body(step), name=name)
            self._record(Stage(name, "elementwise", math.prod(shape), op=op.result), state, reads)
            reads = [(base, False), (exponent, False), (Value(shape, element, lambda idx: None, name), False)]
        raise IRError(f"integer pow of %{op.result}: no bits to process")

    _add = _sub = _mul = _div = _pow = _binary

    def _neg(self, op: Op) -> Value:
        return self._elementwise(op, lambda xs: -xs[0] if not op.type.dtype.is_int
                                 else tirx.const(0, sc.dtype_of(xs[0])) - xs[0])

    def _map(self, op: Op) -> Value:
        element = op.type.dtype
        return self._elementwise(op, lambda xs: sc.apply_map(op.attrs["fn"], xs[0], element, op.attrs.get("coeffs")))

    def _cast(self, op: Op) -> Value:
        return self._elementwise(op, lambda xs: sc.cast(xs[0], op.type.dtype))

    def _reshape(self, op: Op) -> Value:
        source = self._operand(op.operands[0])
        shape = op.type.shape

        def scalar(idx: Index) -> sc.Scalar:
            return source.load(unravel(ravel(idx, shape), source.shape) if source.shape else [])

        return self.materialise(op.result, shape, op.type.dtype, scalar, [(source, True)], op=op.result)

    def _check(self, op: Op) -> None:
        """A flag stage that is 1 when an integer div has a zero divisor or an integer pow a negative exponent."""
        divisor = self._operand(op.operands[1])
        if op.opcode == "div":
            bad, message = (lambda x: x == 0), f"integer division by zero in %{op.result}"
        elif op.type.dtype.name.startswith("u"):
            return
        else:
            bad, message = (lambda x: x < 0), f"integers to negative integer powers are not allowed (%{op.result})"
        if 0 in divisor.shape:
            return
        axes = [te.reduce_axis((0, size), name=f"r{d}") for d, size in enumerate(divisor.shape)]
        flag = lambda idx: tirx.Select(bad(divisor.load(idx)), tirx.const(1, "int32"), tirx.const(0, "int32"))
        name = _block_name(f"check_{op.result}", self.names)
        if axes:
            tensor = te.compute((1,), lambda _: te.max(flag([a.var for a in axes]), axis=axes), name=name)
        else:
            tensor = te.compute((1,), lambda _: flag([]), name=name)
        self._record(Stage(name, "check", max(1, math.prod(divisor.shape))), tensor, [(divisor, False)])
        self.checks.append((tensor, message))

    # ----- einsum ------------------------------------------------------------------------------------------------
    def _einsum(self, op: Op) -> Value:
        spec = EinsumSpec.parse(op.attrs["spec"])
        operands = [self._operand(v) for v in op.operands]
        element = op.type.dtype
        if len(operands) > 2:
            raise UnsupportedError(f"the tvm target lowers unary and binary einsums only; %{op.result} = "
                                   f"einsum '{spec}' has {len(operands)} operands: run the contraction-plan pass")
        sizes = spec.sizes([v.shape for v in operands])
        terms = list(spec.inputs)
        if len(operands) == 2:
            for position in range(2):
                terms[position], operands[position] = self._pre_reduce(op, spec, position, operands[position], sizes)
            clean = EinsumSpec(tuple(terms), spec.output)
            view = GemmView.of(clean, [v.shape for v in operands])
            if view.is_gemm and math.prod(sizes.values()) >= GEMM_MIN_WORK:
                return self._gemm(op, clean, view, operands)
        if len(operands) == 1 and not spec.summed:
            term = terms[0]
            return self.materialise(op.result, op.type.shape, element,
                                    lambda idx: operands[0].load([dict(zip(spec.output, idx))[label]
                                                                  for label in term]),
                                    [(operands[0], len(set(term)) == len(term))], op=op.result)
        reduced = self.reduce_stage(f"{op.result}_sum", terms, operands, spec.output, sizes, element, op.result)
        return self.materialise(op.result, op.type.shape, element, lambda idx: reduced.load(idx),
                                [(reduced, True)], op=op.result)

    def _pre_reduce(self, op: Op, spec: EinsumSpec, position: int, operand: Value,
                    sizes: dict[str, int]) -> tuple[str, Value]:
        """Sum the labels only this operand has (and take its diagonals) before the contraction."""
        term = spec.inputs[position]
        other = spec.inputs[1 - position]
        kept = "".join(label for label in dict.fromkeys(term) if label in other or label in spec.output)
        if kept == term:
            return term, operand
        reduced = self.reduce_stage(f"{op.result}_pre{position}", [term], [operand], kept, sizes,
                                    op.type.dtype, op.result)
        return kept, reduced

    def _gemm(self, op: Op, spec: EinsumSpec, view: GemmView, operands: list[Value]) -> Value:
        element = op.type.dtype
        store = sc.storage(element)
        groups = {"b": view.batch, "m": view.m, "n": view.n, "k": view.k}
        extent = {key: view.extent(labels) for key, labels in groups.items()}
        tiling = self.tiling_rule(self.machine, store.compute, store.complex, extent)
        mr, nr = tiling.mr, tiling.nr
        m_tiles, n_tiles = -(-extent["m"] // mr), -(-extent["n"] // nr)
        zero = tirx.const(0, store.compute)
        parts = (2,) if store.complex else ()

        def pack(position: int, rows: str, tile: int, tiles: int, hint: str) -> te.Tensor:
            """Pack operand `position` as [b, tile, k, (re/im,) row-in-tile], zero past the last row."""
            term, operand = spec.inputs[position], operands[position]
            total = extent[rows]

            def body(b: tirx.Expr, outer: tirx.Expr, k: tirx.Expr, *rest: tirx.Expr):
                inner = rest[-1]
                row = outer * tile + inner
                inside = row < total if tiles * tile != total else None
                env = {}
                for key, flat in (("b", b), (rows, row), ("k", k)):
                    env.update(zip(groups[key], unravel(flat, [view.sizes[label] for label in groups[key]])))
                value = operand.load([env[label] for label in term])
                if store.complex:
                    value = tirx.Select(rest[0] == 0, value.re, value.im)
                # if_then_else, not Select: the load past the last row must not happen at all.
                return tirx.if_then_else(inside, value, zero) if inside is not None else value

            name = _block_name(f"{op.result}_{hint}", self.names)
            tensor = te.compute((extent["b"], tiles, extent["k"], *parts, tile), body, name=name)
            self._record(Stage(name, "pack", extent["b"] * tiles * tile * extent["k"], op=op.result), tensor,
                         [(operand, True)])
            return tensor

        a_packed = pack(0, "m", mr, m_tiles, "packA")
        b_packed = pack(1, "n", nr, n_tiles, "packB")
        k = te.reduce_axis((0, extent["k"]), name="k")

        def product(b, mo, no, mi, *rest):
            if store.complex:
                c, ni = rest
                ar, ai = a_packed[b, mo, k, 0, mi], a_packed[b, mo, k, 1, mi]
                br, bi = b_packed[b, no, k, 0, ni], b_packed[b, no, k, 1, ni]
                return te.sum(tirx.Select(c == 0, ar * br - ai * bi, ar * bi + ai * br), axis=k)
            (ni,) = rest
            if element.name == "bool":
                return te.max(tirx.min(a_packed[b, mo, k, mi], b_packed[b, no, k, ni]), axis=k)
            return te.sum(a_packed[b, mo, k, mi] * b_packed[b, no, k, ni], axis=k)

        name = _block_name(f"{op.result}_gemm", self.names)
        tiles = te.compute((extent["b"], m_tiles, n_tiles, mr, *parts, nr), product, name=name)
        work = extent["b"] * m_tiles * n_tiles * mr * nr * extent["k"]
        self.stages.append(Stage(name, "gemm", work, tiling, op=op.result, dtype=str(tiles.dtype)))
        self.tensors[name] = tiles
        self.reads.setdefault(a_packed.op.name, []).append((name, False))
        self.reads.setdefault(b_packed.op.name, []).append((name, False))
        tile_stage = Value((), element, lambda idx: zero, name)  # stands for the tiles in the read graph

        def unpack(idx: Index) -> sc.Scalar:
            env = dict(zip(spec.output, idx))
            flat = {key: ravel([env[label] for label in groups[key]], [view.sizes[label] for label in groups[key]])
                    for key in ("b", "m", "n")}
            at = (flat["b"], tirx.floordiv(flat["m"], mr), tirx.floordiv(flat["n"], nr), tirx.floormod(flat["m"], mr))
            col = tirx.floormod(flat["n"], nr)
            if store.complex:
                return sc.Complex(tiles[(*at, 0, col)], tiles[(*at, 1, col)])
            return tiles[(*at, col)]

        return self.materialise(op.result, op.type.shape, element, unpack, [(tile_stage, True)], op=op.result)

    # ----- outputs and inlining ----------------------------------------------------------------------------------
    def _outputs(self) -> list[te.Tensor]:
        """One distinct computed tensor per program output (a copy stage for inputs, literals and repeats)."""
        tensors: list[te.Tensor] = []
        taken: set[str] = set()
        for name in self.program.outputs:
            value = self.values[name]
            if value.stage is None or value.stage in taken or self.stages_by_name()[value.stage].role != "elementwise":
                value = self.materialise(f"{name}_out", value.shape, value.dtype, value.load, [(value, True)])
            taken.add(value.stage)
            tensors.append(self.tensors[value.stage])
        return tensors

    def stages_by_name(self) -> dict[str, Stage]:
        return {stage.name: stage for stage in self.stages}

    def _inline_decisions(self, outputs: set[str]) -> tuple[set[str], int]:
        """Elementwise stages that are not outputs and are read once by exactly one stage get inlined there."""
        inlined: set[str] = set()
        fused = 0
        for stage in self.stages:
            readers = self.reads.get(stage.name, [])
            if stage.role != "elementwise" or stage.name in outputs or len(readers) != 1 or not readers[0][1]:
                continue
            inlined.add(stage.name)
            reader = self.stages_by_name()[readers[0][0]]
            fused += reader.op in self.epilogue_ops
        return inlined, fused


def lower_program(program: Program, machine: Machine, tiling_rule: TilingRule = cpu_tiling) -> TEGraph:
    """The TE graph of a whole program (raises UnsupportedError for dtypes/ops the target cannot run); `tiling_rule`
    sizes the GEMM tiles (the CPU register tiles by default; the `cuda` target passes its thread-block tiles)."""
    return Lowerer(program, machine, tiling_rule).lower()
