"""Blocked GEMM for GEMM-shaped einsums: C[b, m, n] = sum_k A[b, m, k] * B[b, k, n] (label groups from
`GemmView`; permuted or non-contiguous label orders are read through a stride or an offset table per group).

Goto/BLIS loop order per batch: n-blocks (NC) > k-blocks (KC, pack B into NR-wide panels) > m-blocks (MC, pack A
into MR-high panels) > an MR x NR register-blocked micro-kernel of vector FMAs (6x16 f32 / 6x8 f64 on AVX2).
Threads split the batch, or else the longer of rows (whole MR panels) and columns (whole NR panels); each thread
packs into its own workspace. With few columns (n <= DIRECT_A_MAX_N) and A contiguous along k, the micro-kernel
reads A in place: packing would cost about as much as the product. Packing B copies a vector per row where a panel's
columns are consecutive (through a stride or an offset table), else transposes lanes x lanes blocks in registers where
B's k runs are consecutive; column-major A is packed k-outside. The micro-kernel prefetches its C tile for writing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from einfold.ir import Op
from einfold.loopnest import GemmView, label_strides
from einfold.spec import EinsumSpec

from .loops import const, for_range, loop_carry, thread_range
from .scalars import I64, PTR, Scalar, intrinsic

if TYPE_CHECKING:
    from .codegen import ModuleBuilder

VECTOR_BITS = 256  # AVX2
MIN_FLOPS = 2 * 16 * 16 * 16  # smaller products run as plain loop nests
DIRECT_A_MAX_N = 32  # up to this many output columns (measured: pays at 32, not at 64), A is read in place


@dataclass(frozen=True)
class GemmPlan:
    """Register and cache blocking for one dtype: MR x NR micro-tile (NR a multiple of the vector width)."""

    lanes: int
    mr: int
    nr: int
    kc: int
    mc: int
    nc: int

    def describe(self) -> str:
        return f"{self.mr}x{self.nr} micro-kernel, blocks kc={self.kc} mc={self.mc} nc={self.nc}"


def gemm_plan(view: GemmView, sc: Scalar) -> GemmPlan | None:
    """A blocking plan when the einsum is a true (batched) matrix product of a dtype with a vector kernel."""
    if not view.is_gemm or sc.kind not in ("float", "int", "uint") or sc.dtype.name in ("f16", "bf16"):
        return None
    if sc.compute.__class__ is ir.IntType and sc.compute.width < 32:
        return None
    m, n, k = view.extent(view.m), view.extent(view.n), view.extent(view.k)
    if min(m, n, k, view.extent(view.batch)) == 0 or 2 * m * n * k < MIN_FLOPS:
        return None
    bits = 32 if str(sc.compute) in ("float", "i32") else 64
    lanes = VECTOR_BITS // bits
    nr = 2 * lanes
    kc = min(256, k)
    mc = 120 if bits == 32 else 96
    nc = 2048 if bits == 32 else 1024
    return GemmPlan(lanes, 6, nr, kc, min(mc, _round_up(m, 6)), min(nc, _round_up(n, nr)))


def _round_up(x: int, step: int) -> int:
    return (x + step - 1) // step * step


@dataclass(frozen=True)
class IndexMap:
    """Element offset of a flattened label group inside one tensor: `flat * stride`, or a table lookup. A table
    map steps by `run_stride` inside each aligned run of `run` flat indices (its innermost label)."""

    stride: int | None
    table: ir.GlobalVariable | None
    run: int = 0
    run_stride: int = 0

    def offset(self, b: ir.IRBuilder, flat: ir.Value) -> ir.Value:
        if self.table is None:
            return b.mul(flat, const(self.stride)) if self.stride != 1 else flat
        address = b.gep(self.table, [const(0), flat], inbounds=True, source_etype=self.table.value_type)
        return b.load(address, typ=I64)

    def may_be_consecutive(self, count: int) -> bool:
        """Whether `count` flat indices can ever sit at consecutive elements (see `consecutive`)."""
        return self.stride == 1 or (self.table is not None and self.run_stride == 1 and self.run >= count)

    def consecutive(self, b: ir.IRBuilder, first: ir.Value, count: int) -> ir.Value:
        """i1: whether flat indices first .. first + count - 1 lie at consecutive elements."""
        if self.table is None or not self.may_be_consecutive(count):
            return ir.Constant(ir.IntType(1), int(self.may_be_consecutive(count)))
        end = b.add(b.srem(first, const(self.run)), const(count))
        return b.icmp_signed("<=", end, const(self.run))


def index_map(module: ir.Module, name: str, group: str, strides: dict[str, int], sizes: dict[str, int]) -> IndexMap:
    labels = [label for label in group if sizes[label] != 1]
    if not labels:
        return IndexMap(0, None)
    if all(strides[a] == strides[c] * sizes[c] for a, c in zip(labels, labels[1:])):
        return IndexMap(strides[labels[-1]], None)
    offsets = [0]
    for label in group:
        offsets = [o * 1 + i * strides[label] for o in offsets for i in range(sizes[label])]
    array_type = ir.ArrayType(I64, len(offsets))
    table = ir.GlobalVariable(module, array_type, name)
    table.global_constant = True
    table.linkage = "internal"
    table.initializer = ir.Constant(array_type, offsets)
    return IndexMap(None, table, sizes[labels[-1]], strides[labels[-1]])


def oriented(spec: EinsumSpec, shapes: list[tuple[int, ...]]) -> tuple[bool, GemmView]:
    """Whether to swap the operands (C^T = B^T A^T) so that the output's innermost label is an `n` label."""
    view = GemmView.of(spec, shapes)
    last = spec.output[-1] if spec.output else ""
    if last in view.m:
        swapped = EinsumSpec((spec.inputs[1], spec.inputs[0]), spec.output)
        return True, GemmView.of(swapped, [shapes[1], shapes[0]])
    return False, view


def emit_gemm(mb: ModuleBuilder, op: Op, spec: EinsumSpec, shapes: list[tuple[int, ...]], plan: GemmPlan) -> str:
    """Emit the GEMM kernel; returns how it was blocked."""
    swap, view = oriented(spec, shapes)
    a_name, b_name = op.operands[::-1] if swap else op.operands
    a_term, b_term = spec.inputs[::-1] if swap else spec.inputs
    a_shape, b_shape = (shapes[1], shapes[0]) if swap else (shapes[0], shapes[1])
    sizes = view.sizes
    out_order = spec.output
    in_output = lambda group: "".join(label for label in out_order if label in group)  # noqa: E731
    batch, m_group, n_group = in_output(view.batch), in_output(view.m), in_output(view.n)
    k_group = "".join(label for label in a_term if label in view.k)
    k_group = "".join(dict.fromkeys(k_group))
    a_strides = label_strides(a_term, a_shape)
    b_strides = label_strides(b_term, b_shape)
    c_strides = label_strides(out_order, op.type.shape)
    module = mb.module
    prefix = f"gemm.{len(mb.steps)}"
    maps = {
        (tensor, role): index_map(module, f"{prefix}.{tensor}{role}", group, strides, sizes)
        for tensor, strides in (("a", a_strides), ("b", b_strides), ("c", c_strides))
        for role, group in (("batch", batch), ("m", m_group), ("n", n_group), ("k", k_group))
        if not (tensor == "a" and role == "n") and not (tensor == "b" and role == "m")
        and not (tensor == "c" and role == "k")
    }
    sc = mb.scalar_of(op.result)
    gemm = _Gemm(mb, sc, plan, maps, view.extent(batch), view.extent(m_group), view.extent(n_group),
                 view.extent(k_group))
    gemm.emit([mb.plan.value_slot[a_name], mb.plan.value_slot[b_name], mb.plan.value_slot[op.result]])
    return plan.describe() + f", threads split {gemm.split}, " + gemm.packing()


class _Gemm:
    def __init__(self, mb: ModuleBuilder, sc: Scalar, plan: GemmPlan, maps: dict[tuple[str, str], IndexMap],
                 batch: int, m: int, n: int, k: int):
        self.mb, self.sc, self.plan, self.maps = mb, sc, plan, maps
        self.batch, self.m, self.n, self.k = batch, m, n, k
        self.element = sc.compute
        self.vector = ir.VectorType(self.element, plan.lanes)
        self.is_float = sc.kind == "float"
        size = self.element_bytes = 4 if str(self.element) in ("float", "i32") else 8
        self.a_bytes = _round_up(plan.mc * plan.kc * size, 64)
        self.b_bytes = _round_up(plan.kc * plan.nc * size, 64)
        self.workspace_bytes = self.a_bytes + self.b_bytes + _round_up(plan.mr * plan.nr * size, 64)
        a_rows, a_depth = maps["a", "m"], maps["a", "k"]
        self.direct_a = n <= DIRECT_A_MAX_N and a_depth.stride == 1 and a_rows.table is None
        self.split = _thread_split(batch, m, n, plan, mb.options["threads"])

    def packing(self) -> str:
        """How the operands reach the micro-kernel (the fastest copy each may use; chosen per panel at run time)."""
        lanes = self.plan.lanes
        blocks = f"{lanes}x{lanes} transposed blocks"
        a_m, a_k, b_k, b_n = self.maps["a", "m"], self.maps["a", "k"], self.maps["b", "k"], self.maps["b", "n"]
        if self.direct_a:
            a = "A read in place"
        elif a_m.table is None and a_k.table is None and a_m.stride < a_k.stride:
            a = "A packed by columns"
        else:
            a = "A packed by rows"
        if b_n.may_be_consecutive(self.plan.nr):
            b = "B packed by vector rows"
        else:
            b = "B packed in " + (blocks if b_k.may_be_consecutive(lanes) else "elements")
        return f"{a}, {b}"

    # ----- helpers ------------------------------------------------------------------------------------------
    def element_at(self, b: ir.IRBuilder, base: ir.Value, index: ir.Value) -> ir.Value:
        return b.gep(base, [index], inbounds=True, source_etype=self.element)

    def madd(self, b: ir.IRBuilder, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
        if self.is_float:
            return b.call(intrinsic(self.mb.module, "llvm.fma", x.type, 3), [x, y, acc])
        return b.add(acc, b.mul(x, y))

    def zero(self, typ: ir.Type) -> ir.Constant:
        return ir.Constant(typ, None)

    def add(self, b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
        return b.fadd(x, y) if self.is_float else b.add(x, y)

    # ----- the kernel ---------------------------------------------------------------------------------------
    def emit(self, slots: list[int]) -> None:
        mb, plan = self.mb, self.plan
        workspace_slot = mb.workspace(self.workspace_bytes)
        kernel = mb.kernel("gemm")
        b = kernel.b
        a, bm, c = (kernel.pointer(slot) for slot in slots)
        workspace = b.gep(kernel.pointer(workspace_slot), [b.mul(kernel.thread, const(self.workspace_bytes))],
                          inbounds=True, source_etype=ir.IntType(8))
        packed_a = workspace
        packed_b = b.gep(workspace, [const(self.a_bytes)], inbounds=True, source_etype=ir.IntType(8))
        tile = b.gep(workspace, [const(self.a_bytes + self.b_bytes)], inbounds=True, source_etype=ir.IntType(8))
        pack_a, pack_b, micro, store_edge = self.pack_a_function(), self.pack_b_function(), self.micro_function(), \
            self.edge_function()
        a_row_stride = self.maps["a", "m"].stride
        batch_lo, batch_hi = const(0), const(self.batch)
        m_lo, m_hi, n_lo, n_hi = const(0), const(self.m), const(0), const(self.n)
        if self.split == "n":
            n_lo, n_hi = thread_range(b, self.n, kernel.thread, kernel.threads, grain=plan.nr)
        elif self.split == "m":
            m_lo, m_hi = thread_range(b, self.m, kernel.thread, kernel.threads, grain=plan.mr)
        else:
            batch_lo, batch_hi = thread_range(b, self.batch, kernel.thread, kernel.threads)
        c_row_stride = self.maps["c", "m"].stride
        fast_store = self.maps["c", "n"].stride == 1 and c_row_stride is not None
        with for_range(b, batch_lo, batch_hi, name="batch") as t:
            a_base = self.element_at(b, a, self.maps["a", "batch"].offset(b, t))
            b_base = self.element_at(b, bm, self.maps["b", "batch"].offset(b, t))
            c_base = self.element_at(b, c, self.maps["c", "batch"].offset(b, t))
            with for_range(b, n_lo, n_hi, step=plan.nc, name="jc") as jc:
                nc = _min(b, const(plan.nc), b.sub(n_hi, jc))
                with for_range(b, 0, self.k, step=plan.kc, name="pc") as pc:
                    kc = _min(b, const(plan.kc), b.sub(const(self.k), pc))
                    accumulate = b.icmp_signed(">", pc, const(0))
                    b.call(pack_b, [packed_b, b_base, pc, kc, jc, nc])
                    with for_range(b, m_lo, m_hi, step=plan.mc, name="ic") as ic:
                        mc = _min(b, const(plan.mc), b.sub(m_hi, ic))
                        if not self.direct_a:
                            b.call(pack_a, [packed_a, a_base, ic, mc, pc, kc])

                        def micro_tile(jr: ir.Value, ir_: ir.Value) -> None:
                            nr = _min(b, const(plan.nr), b.sub(nc, jr))
                            panel_b = self.element_at(b, packed_b, b.mul(jr, kc))
                            mr = _min(b, const(plan.mr), b.sub(mc, ir_))
                            row, col = b.add(ic, ir_), b.add(jc, jr)
                            if self.direct_a:
                                panel_a = self.element_at(b, a_base, b.add(b.mul(row, const(a_row_stride)), pc))
                                a_args = [const(a_row_stride), mr]
                            else:
                                panel_a = self.element_at(b, packed_a, b.mul(ir_, kc))
                                a_args = []
                            full = b.and_(b.icmp_signed("==", mr, const(plan.mr)),
                                          b.icmp_signed("==", nr, const(plan.nr)))
                            if fast_store:
                                with b.if_else(full) as (direct, edge):
                                    with direct:
                                        target = self.element_at(
                                            b, c_base, b.add(b.mul(row, const(c_row_stride)), col))
                                        b.call(micro, [panel_a, panel_b, kc, target, const(c_row_stride),
                                                       accumulate, *a_args])
                                    with edge:
                                        b.call(micro, [panel_a, panel_b, kc, tile, const(plan.nr),
                                                       ir.Constant(ir.IntType(1), 0), *a_args])
                                        b.call(store_edge, [tile, c_base, row, col, mr, nr, accumulate])
                            else:
                                b.call(micro, [panel_a, panel_b, kc, tile, const(plan.nr),
                                               ir.Constant(ir.IntType(1), 0), *a_args])
                                b.call(store_edge, [tile, c_base, row, col, mr, nr, accumulate])

                        if self.direct_a:  # A's rows stay in L1 across the column panels: rows outside
                            with for_range(b, 0, mc, step=plan.mr, name="ir") as ir_:
                                with for_range(b, 0, nc, step=plan.nr, name="jr") as jr:
                                    micro_tile(jr, ir_)
                        else:  # the packed B panel stays in L1 across the row panels: columns outside
                            with for_range(b, 0, nc, step=plan.nr, name="jr") as jr:
                                with for_range(b, 0, mc, step=plan.mr, name="ir") as ir_:
                                    micro_tile(jr, ir_)
        mb.steps.append(kernel.finish())

    def prefetch(self) -> ir.Function:
        """`llvm.prefetch(address, write, locality, data)`."""
        module = self.mb.module
        return module.globals.get("llvm.prefetch.p0") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [PTR, *[ir.IntType(32)] * 3]), "llvm.prefetch.p0")

    def _function(self, name: str, arg_types: list[ir.Type]) -> tuple[ir.Function, ir.IRBuilder]:
        function = ir.Function(self.mb.module, ir.FunctionType(ir.VoidType(), arg_types),
                               f"{self.mb.kernel_prefix()}.{name}")
        function.linkage = "internal"
        function.attributes.add("noinline")  # optimised once, not once per call site
        return function, ir.IRBuilder(function.append_basic_block("entry"))

    def pack_a_function(self) -> ir.Function:
        """Ap[panel][p][i] = A[row = ic + panel*MR + i, pc + p], zero past the block's rows. Full panels are read
        along A's shorter stride: column-major A a column of the block per p (all panels), row-major A row by
        row; the edge panel repeats its last valid row."""
        plan = self.plan
        function, b = self._function("pack_a", [PTR, PTR, I64, I64, I64, I64])
        packed, base, ic, mc, pc, kc = function.args
        m_map, k_map = self.maps["a", "m"], self.maps["a", "k"]
        rows_inner = m_map.table is None and k_map.table is None and m_map.stride < k_map.stride
        full_rows = b.mul(b.sdiv(mc, const(plan.mr)), const(plan.mr))
        if rows_inner:  # k outside: each column of the block is read once, in order (A's columns may alias in L1)
            with for_range(b, 0, kc, name="p") as p:
                column = k_map.offset(b, b.add(pc, p))
                with for_range(b, 0, full_rows, step=plan.mr, name="panel") as panel:
                    first = b.add(m_map.offset(b, b.add(ic, panel)), column)
                    destination = b.add(b.mul(panel, kc), b.mul(p, const(plan.mr)))
                    ahead = self.element_at(b, base, b.add(first, m_map.offset(b, mc)))  # the next block's rows
                    b.call(self.prefetch(), [ahead, *[ir.Constant(ir.IntType(32), v) for v in (0, 3, 1)]])
                    for i in range(plan.mr):
                        value = b.load(self.element_at(b, base, b.add(first, const(i * m_map.stride))),
                                       typ=self.element)
                        b.store(value, self.element_at(b, packed, b.add(destination, const(i))))
        with for_range(b, full_rows if rows_inner else const(0), mc, step=plan.mr, name="panel") as panel:
            rows = _min(b, const(plan.mr), b.sub(mc, panel))
            panel_base = b.mul(panel, kc)
            with b.if_else(b.icmp_signed("==", rows, const(plan.mr))) as (full, edge):
                with full:
                    row_offsets = [m_map.offset(b, b.add(ic, b.add(panel, const(i)))) for i in range(plan.mr)]
                    self._pack_a_rows(b, packed, base, pc, kc, panel_base, row_offsets)
                with edge:
                    last = b.sub(rows, const(1))
                    row_offsets = [m_map.offset(b, b.add(ic, b.add(panel, _min(b, const(i), last))))
                                   for i in range(plan.mr)]
                    with for_range(b, 0, kc, name="p") as p:
                        column = k_map.offset(b, b.add(pc, p))
                        for i, row_offset in enumerate(row_offsets):
                            value = b.load(self.element_at(b, base, b.add(row_offset, column)), typ=self.element)
                            value = b.select(b.icmp_signed("<", const(i), rows), value, self.zero(self.element))
                            destination = b.add(panel_base, b.add(b.mul(p, const(plan.mr)), const(i)))
                            b.store(value, self.element_at(b, packed, destination))
        b.ret_void()
        return function

    def _pack_a_rows(self, b: ir.IRBuilder, packed: ir.Value, base: ir.Value, pc: ir.Value, kc: ir.Value,
                     panel_base: ir.Value, row_offsets: list[ir.Value]) -> None:
        """A full panel of row-major A, row by row along k, each row in memory order (measured faster than
        lanes x lanes register transposes on TTM's 16384 x 128 A)."""
        k_map = self.maps["a", "k"]
        for i, row_offset in enumerate(row_offsets):
            with for_range(b, 0, kc, name="p") as p:
                value = b.load(self.element_at(b, base, b.add(row_offset, k_map.offset(b, b.add(pc, p)))),
                               typ=self.element)
                destination = b.add(panel_base, b.add(b.mul(p, const(self.plan.mr)), const(i)))
                b.store(value, self.element_at(b, packed, destination))

    def pack_b_function(self) -> ir.Function:
        """Bp[panel][p][j] = B[pc + p, col = jc + panel*NR + j], zero past the block's columns. A full panel whose
        columns are consecutive in memory is copied a vector per row; one whose k runs are consecutive is copied
        as lanes x lanes blocks transposed in registers; anything else element by element."""
        plan = self.plan
        function, b = self._function("pack_b", [PTR, PTR, I64, I64, I64, I64])
        packed, base, pc, kc, jc, nc = function.args
        k_map, n_map = self.maps["b", "k"], self.maps["b", "n"]
        with for_range(b, 0, nc, step=plan.nr, name="panel") as panel:
            cols = _min(b, const(plan.nr), b.sub(nc, panel))
            panel_base = b.mul(panel, kc)
            first_col = b.add(jc, panel)
            full = b.icmp_signed("==", cols, const(plan.nr))
            with b.if_else(b.and_(full, n_map.consecutive(b, first_col, plan.nr))) as (rows, other):
                with rows:
                    column = n_map.offset(b, first_col)
                    with for_range(b, 0, kc, name="p") as p:
                        source = self.element_at(b, base, b.add(k_map.offset(b, b.add(pc, p)), column))
                        self.copy_vectors(b, source, self.element_at(
                            b, packed, b.add(panel_base, b.mul(p, const(plan.nr)))), plan.nr // plan.lanes)
                with other:
                    with b.if_else(full) as (whole, partial):
                        with whole:
                            columns = [n_map.offset(b, b.add(first_col, const(j))) for j in range(plan.nr)]
                            self._pack_b_columns(b, packed, base, pc, kc, panel_base, columns)
                        with partial:
                            with for_range(b, 0, kc, name="p") as p:
                                with for_range(b, 0, plan.nr, name="j") as j:
                                    destination = self.element_at(
                                        b, packed, b.add(panel_base, b.add(b.mul(p, const(plan.nr)), j)))
                                    with b.if_else(b.icmp_signed("<", j, cols)) as (inside, outside):
                                        with inside:
                                            source = b.add(k_map.offset(b, b.add(pc, p)),
                                                           n_map.offset(b, b.add(first_col, j)))
                                            b.store(b.load(self.element_at(b, base, source), typ=self.element),
                                                    destination)
                                        with outside:
                                            b.store(self.zero(self.element), destination)
        b.ret_void()
        return function

    def _pack_b_columns(self, b: ir.IRBuilder, packed: ir.Value, base: ir.Value, pc: ir.Value, kc: ir.Value,
                        panel_base: ir.Value, columns: list[ir.Value]) -> None:
        """A full panel of NR columns at element offsets `columns`: blocks of `lanes` consecutive k transposed in
        registers where k runs are consecutive, element by element elsewhere (k loop inside: B's rows are apart)."""
        plan, lanes = self.plan, self.plan.lanes
        k_map = self.maps["b", "k"]

        def copy_elements(p_lo: ir.Value, p_hi: ir.Value) -> None:
            for j, column in enumerate(columns):
                with for_range(b, p_lo, p_hi, name="p") as p:
                    value = b.load(self.element_at(b, base, b.add(k_map.offset(b, b.add(pc, p)), column)),
                                   typ=self.element)
                    b.store(value, self.element_at(b, packed, b.add(panel_base, b.add(b.mul(p, const(plan.nr)),
                                                                                      const(j)))))

        if not k_map.may_be_consecutive(lanes):
            copy_elements(const(0), kc)
            return
        blocks_end = b.mul(b.sdiv(kc, const(lanes)), const(lanes))
        with for_range(b, 0, blocks_end, step=lanes, name="p0") as p0:
            with b.if_else(k_map.consecutive(b, b.add(pc, p0), lanes)) as (block, elements):
                with block:
                    row = k_map.offset(b, b.add(pc, p0))
                    destination = b.add(panel_base, b.mul(p0, const(plan.nr)))
                    for group in range(plan.nr // lanes):
                        vectors = [b.load(self.element_at(b, base, b.add(row, column)), typ=self.vector,
                                          align=self.element_bytes)
                                   for column in columns[group * lanes:(group + 1) * lanes]]
                        for q, vector in enumerate(_transpose(b, vectors)):
                            target = b.add(destination, const(q * plan.nr + group * lanes))
                            b.store(vector, self.element_at(b, packed, target), align=self.element_bytes * lanes)
                with elements:
                    copy_elements(p0, b.add(p0, const(lanes)))
        copy_elements(blocks_end, kc)

    def copy_vectors(self, b: ir.IRBuilder, source: ir.Value, destination: ir.Value, count: int) -> None:
        """Copy `count` vectors from any address to a vector-aligned one."""
        for v in range(count):
            value = b.load(self.element_at(b, source, const(v * self.plan.lanes)), typ=self.vector,
                           align=self.element_bytes)
            b.store(value, self.element_at(b, destination, const(v * self.plan.lanes)),
                    align=self.element_bytes * self.plan.lanes)

    def micro_function(self) -> ir.Function:
        """C[i, j] (+)= sum_p Ap[p][i] * Bp[p][j] for an MR x NR tile held in MR * NR/lanes vector registers.
        Reading A in place, Ap[p][i] is A[min(i, rows - 1) * a_row_stride + p] (rows past the edge repeat the last)."""
        plan = self.plan
        direct_args = [I64, I64] if self.direct_a else []
        function, b = self._function("micro", [PTR, PTR, I64, PTR, I64, ir.IntType(1), *direct_args])
        packed_a, packed_b, kc, target, row_stride, accumulate = function.args[:6]
        if self.direct_a:
            a_row_stride, rows = function.args[6:]
            a_offsets = [b.mul(_min(b, const(i), b.sub(rows, const(1))), a_row_stride) for i in range(plan.mr)]
        else:
            a_offsets = [const(i) for i in range(plan.mr)]
        for argument in (packed_a, packed_b, target):
            argument.add_attribute("noalias")
        vectors_per_row = plan.nr // plan.lanes
        initial = [self.zero(self.vector) for _ in range(plan.mr * vectors_per_row)]
        mask = ir.Constant(ir.VectorType(ir.IntType(32), plan.lanes), None)
        undefined = ir.Constant(self.vector, ir.Undefined)
        element_bytes = self.element.width // 8 if isinstance(self.element, ir.IntType) else (
            4 if str(self.element) == "float" else 8)
        vector_align = plan.lanes * element_bytes

        def step(p: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
            b_row = b.mul(p, const(plan.nr))
            columns = [b.load(self.element_at(b, packed_b, b.add(b_row, const(v * plan.lanes))), typ=self.vector,
                              align=vector_align) for v in range(vectors_per_row)]
            a_row = p if self.direct_a else b.mul(p, const(plan.mr))
            result = []
            for i in range(plan.mr):
                a_value = b.load(self.element_at(b, packed_a, b.add(a_row, a_offsets[i])), typ=self.element)
                splat = b.shuffle_vector(b.insert_element(undefined, a_value, ir.Constant(ir.IntType(32), 0)),
                                         undefined, mask)
                for v in range(vectors_per_row):
                    result.append(self.madd(b, splat, columns[v], acc[i * vectors_per_row + v]))
            return result

        write_hint = [ir.Constant(ir.IntType(32), v) for v in (1, 3, 1)]
        for i in range(plan.mr):  # the tile's rows (first and last element) arrive while the k loop runs
            for column in (0, plan.nr - 1):
                address = self.element_at(b, target, b.add(b.mul(const(i), row_stride), const(column)))
                b.call(self.prefetch(), [address, *write_hint])
        unroll = 4
        main = b.mul(b.sdiv(kc, const(unroll)), const(unroll))
        state = list(initial)
        with loop_carry(b, 0, b.sdiv(kc, const(unroll)), state, name="p4") as (q, acc, following):
            for u in range(unroll):
                acc = step(b.add(b.mul(q, const(unroll)), const(u)), acc)
            following += acc
        with loop_carry(b, main, kc, state, name="p") as (p, acc, following):
            following += step(p, acc)
        with b.if_else(accumulate) as (add, overwrite):
            for block, adding in ((add, True), (overwrite, False)):
                with block:
                    for i in range(plan.mr):
                        row = b.mul(const(i), row_stride)
                        for v in range(vectors_per_row):
                            address = self.element_at(b, target, b.add(row, const(v * plan.lanes)))
                            value = state[i * vectors_per_row + v]
                            if adding:
                                value = self.add(b, b.load(address, typ=self.vector, align=element_bytes), value)
                            b.store(value, address, align=element_bytes)
        b.ret_void()
        return function

    def edge_function(self) -> ir.Function:
        """Write the valid mr x nr part of a tile buffer into C at (row, col) through C's index maps."""
        plan = self.plan
        function, b = self._function("store_edge", [PTR, PTR, I64, I64, I64, I64, ir.IntType(1)])
        tile, c_base, row, col, mr, nr, accumulate = function.args
        m_map, n_map = self.maps["c", "m"], self.maps["c", "n"]
        with for_range(b, 0, mr, name="i") as i:
            row_offset = m_map.offset(b, b.add(row, i))
            with for_range(b, 0, nr, name="j") as j:
                value = b.load(self.element_at(b, tile, b.add(b.mul(i, const(plan.nr)), j)), typ=self.element)
                address = self.element_at(b, c_base, b.add(row_offset, n_map.offset(b, b.add(col, j))))
                old = b.load(address, typ=self.element)
                b.store(b.select(accumulate, self.add(b, old, value), value), address)
        b.ret_void()
        return function


def _thread_split(batch: int, m: int, n: int, plan: GemmPlan, threads: int) -> str:
    """What the threads divide: the batch when it has enough items, else the longer of rows and columns (each
    thread packs the whole other operand, so splitting the long side packs the least twice)."""
    if batch >= threads:
        return "batch"
    if n > m and n > plan.nr:
        return "n"
    return "m" if m > plan.mr else "batch"


def _transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """Transpose lanes x lanes values held as `lanes` vectors: at each block size h (lanes/2 .. 1), rows i and
    i + h swap their off-diagonal h-blocks (log2(lanes) rounds of two-input shuffles)."""
    lanes = len(rows)
    rows = list(rows)
    mask_type = ir.VectorType(ir.IntType(32), lanes)
    h = lanes // 2
    while h >= 1:
        low = [j + lanes - h if j & h else j for j in range(lanes)]
        high = [j + lanes if j & h else j + h for j in range(lanes)]
        for i in range(lanes):
            if not i & h:
                x, y = rows[i], rows[i + h]
                rows[i] = b.shuffle_vector(x, y, ir.Constant(mask_type, low))
                rows[i + h] = b.shuffle_vector(x, y, ir.Constant(mask_type, high))
        h //= 2
    return rows


def _min(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)

