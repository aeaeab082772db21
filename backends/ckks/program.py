"""Walk an einfold program and lower every op onto a `Builder`, choosing each einsum's joint label order
(by trying candidates and keeping the cheapest under the cost model) or replaying a recorded choice."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from einfold.errors import UnsupportedError
from einfold.ir import Op, Program
from einfold.reference import literal_array
from einfold.spec import EinsumSpec

from . import cost
from .fhe_ir import FheProgram, Packing
from .layout import Layout, compact_layout
from .levels import LevelPlan, assign_levels, needs
from .lowering import Builder, Free, Packed, Scalar, Value
from .params import AUTO_CANDIDATES, ParamSet, get_params
from .polyapprox import APPROXIMABLE, PolyEvaluator, fit

SUPPORTED = ("input", "const", "literal", "einsum", "add", "sub", "mul", "div", "pow", "neg", "map", "reshape", "cast")
EXACT_MAPS = ("square", "poly")


def check_supported(program: Program, options: dict) -> None:
    """Raise UnsupportedError (at compile time) for anything CKKS cannot evaluate on ciphertexts."""
    for op in program.ops:
        where = f"%{op.result} = {op.opcode}"
        if op.opcode not in SUPPORTED:
            raise UnsupportedError(f"{where}: the ckks target has no lowering for {op.opcode!r}")
        if not op.type.dtype.is_float:
            raise UnsupportedError(f"{where}: CKKS computes on approximate reals; {op.type.dtype} is not supported "
                                   "(use f32 or f64)")
        if op.opcode == "map":
            fn = op.attrs["fn"]
            if fn in EXACT_MAPS:
                continue
            if fn in APPROXIMABLE and fn in (options.get("approx") or {}):
                continue
            hint = (f"pass approx={{'{fn}': {{'interval': (-4, 4), 'degree': 15}}}} to use a Chebyshev approximation"
                    if fn in APPROXIMABLE else "only polynomials (square, poly) and approximations of "
                    f"{', '.join(APPROXIMABLE)} are available")
            raise UnsupportedError(f"{where}: exact {fn} has no CKKS evaluation on ciphertexts; {hint}")


def candidate_orders(spec: EinsumSpec, operands: list[Value]) -> list[str]:
    """Joint label orders worth trying: all of them for up to 4 labels, else a few structured ones."""
    labels = spec.labels
    if len(labels) <= 4:
        return ["".join(p) for p in itertools.permutations(labels)]
    out, summed = spec.output, spec.summed
    orders = [labels, out + summed, summed + out, labels[::-1], "".join(sorted(labels))]
    for value in operands:
        if isinstance(value, Packed):
            held = "".join(dict.fromkeys(d.label for d in value.layout.dims if d.label in labels))
            rest = "".join(x for x in labels if x not in held)
            orders += [held + rest, rest + held]
    return list(dict.fromkeys(o for o in orders if sorted(o) == sorted(labels)))


class Lowerer:
    """Lowers one program for one slot count; `orders` replays einsum choices, `search` makes them."""

    def __init__(self, program: Program, slots: int, options: dict, orders: dict[str, str] | None = None):
        if options.get("io_layout", "free") not in ("free", "row-major"):
            raise UnsupportedError(f"io_layout={options['io_layout']!r}: use 'free' (the compiler packs inputs "
                                   "and reads outputs in the layouts it picks) or 'row-major' (EinHops' layout)")
        self.program = program
        self.options = options
        self.orders = dict(orders or {})
        self.builder = Builder(slots, bool(options.get("plaintext_weights", True)),
                               options.get("io_layout", "free"), int(options.get("max_ciphertexts", 4096)))
        self.values: dict[str, Value] = {}

    def run(self, params_name: str) -> FheProgram:
        for op in self.program.ops:
            self.values[op.result] = self.lower(op)
        outputs = [self.output(name) for name in self.program.outputs]
        return self.builder.program(outputs, params_name)

    def output(self, name: str) -> Packing:
        value = self.values[name]
        if isinstance(value, Scalar) or (isinstance(value, Free) and value.is_weight) or (
                isinstance(value, Packed) and value.plain):
            raise UnsupportedError(f"output %{name} does not depend on any encrypted input")
        if isinstance(value, Free):
            value = self.builder.materialize(value, compact_layout(value.shape, self.builder.slots))
        if self.builder.io_layout == "row-major":
            value = self.builder.move(value, compact_layout(value.layout.shape, self.builder.slots))
        return Packing(name, value.layout, value.tiles)

    # ----- ops -------------------------------------------------------------------------------------------
    def lower(self, op: Op) -> Value:
        code = op.opcode
        shape = op.type.shape
        if code == "input":
            return Free(op.result, shape)
        if code == "const":
            data = np.asarray(self.program.weights[op.attrs["name"]], dtype=np.float64)
            return Scalar(float(data.reshape(-1)[0])) if data.size == 1 else Free(op.attrs["name"], shape, data)
        if code == "literal":
            return Scalar(float(np.real(literal_array(op))))
        args = [self.values[v] for v in op.operands]
        if code == "cast":
            return args[0]
        if code == "reshape":
            return self.reshape(args[0], shape)
        if code == "einsum":
            return self.einsum(op, args)
        if code in ("add", "sub", "mul", "div", "pow"):
            return self.binary(op, args[0], args[1])
        x = self.packed(args[0], op)
        if code == "neg":
            return self.each(x, lambda c: self.builder.mul_scalar(c, -1))
        return self.map(op, x)

    def packed(self, value: Value, op: Op) -> Packed:
        if isinstance(value, Scalar):
            raise UnsupportedError(f"%{op.result} = {op.opcode}: a scalar operand where a tensor is needed")
        if isinstance(value, Free):
            return self.builder.materialize(value, compact_layout(value.shape, self.builder.slots))
        if value.plain:
            raise UnsupportedError(f"%{op.result} = {op.opcode}: operand does not depend on an encrypted input")
        return value

    def each(self, x: Packed, fn) -> Packed:
        return Packed(x.layout, tuple(fn(c) for c in x.tiles))

    def reshape(self, value: Value, shape: tuple[int, ...]) -> Value:
        if isinstance(value, Free):
            return Free(value.name, shape, None if value.data is None else value.data.reshape(shape))
        if isinstance(value, Scalar):
            return value
        return self.builder.move(value, compact_layout(shape, self.builder.slots))

    def einsum(self, op: Op, args: list[Value]) -> Packed:
        spec = EinsumSpec.parse(op.attrs["spec"])
        if any(isinstance(a, Scalar) for a in args):
            raise UnsupportedError(f"%{op.result}: einsum over a 0-d operand; multiply by the scalar instead")
        shapes = [self.program.type_of(v).shape for v in op.operands]
        order = self.orders.get(op.result)
        if order is None:
            order = self.choose_order(spec, args, shapes)
            self.orders[op.result] = order
        self.builder.notes.append(f"%{op.result} = einsum '{spec}' in joint order '{order}'")
        return self.builder.einsum(spec, args, shapes, order)

    def choose_order(self, spec: EinsumSpec, args: list[Value], shapes: list[tuple[int, ...]]) -> str:
        best: tuple[float, str] | None = None
        for order in candidate_orders(spec, args):
            trial = self.builder.fork()
            start = len(trial.instrs)
            trial.einsum(spec, args, shapes, order)
            seconds = cost.estimate(trial.instrs[start:], trial.slots, level=2)
            if best is None or seconds < best[0]:
                best = (seconds, order)
        assert best is not None
        return best[1]

    def binary(self, op: Op, a: Value, b: Value) -> Value:
        code, b_ = op.opcode, self.builder
        if isinstance(a, Scalar) and isinstance(b, Scalar):
            return Scalar(float(np.asarray({"add": np.add, "sub": np.subtract, "mul": np.multiply,
                                             "div": np.divide, "pow": np.power}[code](a.value, b.value))))
        if isinstance(b, Scalar) or isinstance(a, Scalar):
            return self.with_scalar(op, a, b)
        if code in ("div", "pow"):
            if code == "div" and isinstance(b, Free) and b.is_weight:
                b = Free(b.name + ".reciprocal", b.shape, 1.0 / b.data)
                code = "mul"
            else:
                raise UnsupportedError(f"%{op.result} = {code}: CKKS cannot {code} by a ciphertext")
        shape = op.type.shape
        a, b = self.squeeze(a, shape), self.squeeze(b, shape)
        anchor = next((v for v in (a, b) if isinstance(v, Packed) and not v.plain and v.layout.shape == shape), None)
        base = anchor.layout if anchor is not None else compact_layout(shape, b_.slots)
        pa, pb = (v if v is anchor else b_.materialize(v, self.broadcast_layout(base, v)) for v in (a, b))
        if pa.plain and pb.plain:
            raise UnsupportedError(f"%{op.result}: both operands are plaintexts; constant-fold first")
        if code == "sub" and pa.plain:
            pa, pb, code = pb, pa, "rsub"
        if pa.plain:
            pa, pb = pb, pa
        result = []
        for x, y in zip(pa.tiles, pb.tiles):
            if not pb.plain:
                result.append({"add": b_.add, "mul": b_.mul}[code](x, y) if code in ("add", "mul")
                              else b_.emit("sub", (x, y)))
            elif code == "mul":
                result.append(b_.emit("mul_plain", (x, y)))
            elif code == "add":
                result.append(b_.emit("add_plain", (x, y)))
            elif code == "sub":
                result.append(b_.emit("sub_plain", (x, y)))
            else:  # plaintext - ciphertext
                result.append(b_.emit("add_plain", (b_.mul_scalar(x, -1), y)))
        clean = pa.layout.clean and pb.layout.clean
        return Packed(replace(base, clean=clean and base.clean), tuple(result))

    def squeeze(self, value: Value, shape: tuple[int, ...]) -> Value:
        """Drop the size-1 axes that broadcast (numpy rules), so that each axis maps to a label."""
        vshape = value.shape if isinstance(value, Free) else value.layout.shape
        lead = len(shape) - len(vshape)
        keep = tuple(s for k, s in enumerate(vshape) if not (s == 1 and shape[lead + k] != 1))
        return value if keep == vshape else self.reshape(value, keep)

    def broadcast_layout(self, base: Layout, value: Value) -> Layout:
        vshape = value.shape if isinstance(value, Free) else value.layout.shape
        out_shape = base.shape
        lead = len(out_shape) - len(vshape)
        full = [k for k, s in enumerate(out_shape[lead:]) if s != 1 or vshape[k] == 1]
        labels = "".join(base.axes[lead + k] for k in full) if len(full) == len(vshape) else None
        if labels is None:
            raise UnsupportedError(f"cannot broadcast {vshape} against {out_shape}")
        kinds = {d.label: ("axis" if d.label in labels else ("rep" if d.kind == "axis" else d.kind))
                 for d in base.dims}
        return base.with_kinds(kinds, axes=labels, clean=True)

    def with_scalar(self, op: Op, a: Value, b: Value) -> Value:
        code = op.opcode
        scalar_first = isinstance(a, Scalar)
        s = a.value if scalar_first else b.value  # type: ignore[union-attr]
        x = self.packed(b if scalar_first else a, op)
        b_ = self.builder
        if code == "add":
            return self.each(x, lambda c: b_.add_scalar(c, s))
        if code == "sub":
            return self.each(x, lambda c: b_.add_scalar(b_.mul_scalar(c, -1), s) if scalar_first
                             else b_.add_scalar(c, -s))
        if code == "mul":
            return self.each(x, lambda c: b_.mul_scalar(c, s))
        if code == "div" and not scalar_first and s != 0:
            return self.each(x, lambda c: b_.mul_scalar(c, 1.0 / s))
        if code == "pow" and not scalar_first and float(s).is_integer() and 1 <= s <= 64:
            return self.each(x, lambda c: PolyEvaluator(b_, c).monomial([0.0] * int(s) + [1.0]))
        raise UnsupportedError(f"%{op.result} = {code} with scalar {s}: not evaluable on a ciphertext")

    def map(self, op: Op, x: Packed) -> Packed:
        fn = op.attrs["fn"]
        b_ = self.builder
        if fn == "square":
            return self.each(x, lambda c: b_.mul(c, c))
        if fn == "poly":
            coeffs = [float(c) for c in op.attrs["coeffs"]]
            return self.each(x, lambda c: _as_ct(b_, PolyEvaluator(b_, c).monomial(coeffs), c))
        spec = dict((self.options.get("approx") or {})[fn])
        approx = fit(fn, tuple(spec.get("interval", (-4.0, 4.0))), int(spec.get("degree", 15)),
                     spec.get("method", "interp"))
        b_.notes.append(f"%{op.result}: {approx}")
        scale, shift = 2 / (approx.hi - approx.lo), -(approx.lo + approx.hi) / (approx.hi - approx.lo)
        valid = [(row >= 0).astype(np.float64) for row in x.layout.element_map]

        def one(c: str, tile: int) -> str:
            # The mask zeroes junk slots so that only values in the interval reach the polynomial.
            unit = b_.mul_plain(c, scale * valid[tile]) if not x.layout.clean else b_.mul_scalar(c, scale)
            unit = b_.add_scalar(unit, shift) if shift else unit
            return PolyEvaluator(b_, unit).chebyshev(approx.coeffs)

        return Packed(replace(x.layout, clean=False), tuple(one(c, t) for t, c in enumerate(x.tiles)))


def _as_ct(builder: Builder, value: str | float, like: str) -> str:
    return value if isinstance(value, str) else builder.add_scalar(builder.mul_scalar(like, 0), value)


@dataclass(frozen=True)
class Plan:
    """Everything decided at compile time: parameters, einsum orders, result layouts, levels."""

    params: ParamSet
    orders: dict[str, str]
    layouts: dict[str, str]
    levels: LevelPlan

    @property
    def fhe(self) -> FheProgram:
        return self.levels.program


def plan_program(program: Program, options: dict, orders: dict[str, str] | None = None) -> Plan:
    """Lower for each candidate slot count, keep the parameter set with the lowest estimated latency."""
    check_supported(program, options)
    choice = options.get("params") or "auto"
    if choice == "auto":
        groups: dict[int, list[ParamSet]] = {}
        for name in AUTO_CANDIDATES:
            groups.setdefault(get_params(name).slots, []).append(get_params(name))
    else:
        groups = {get_params(choice).slots: [get_params(choice)]}
    best: tuple[float, Plan] | None = None
    deepest = 0
    for slots, sets in groups.items():
        lowerer = Lowerer(program, slots, options, orders)
        fhe = lowerer.run("")
        depth = max((needs(fhe.instrs, [t for p in fhe.outputs for t in p.tiles]).get(i.result, 0)
                     for i in fhe.instrs if i.opcode == "encrypt"), default=0)
        deepest = max(deepest, depth)
        fitting = [p for p in sets if p.max_level >= depth] or (sets if choice != "auto" else [])
        if not fitting:
            continue
        params = fitting[0]
        levels = assign_levels(replace(fhe, params=str(params)), params)
        layouts = {name: str(v.layout) for name, v in lowerer.values.items() if isinstance(v, Packed)}
        plan = Plan(params, dict(lowerer.orders), layouts, levels)
        seconds = cost.estimate(levels.program.instrs, slots)
        if best is None or seconds < best[0]:
            best = (seconds, plan)
    if best is None:
        if not options.get("bootstrap", True):
            raise UnsupportedError(f"the program needs multiplicative depth {deepest}, beyond every parameter set "
                                   "without bootstrapping, and bootstrap=False")
        return plan_program(program, {**options, "params": "n32768-boot"}, orders)
    return best[1]


