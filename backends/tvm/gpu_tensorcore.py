"""Tensor-core schedule for the `cuda` target's f16/bf16 GEMM stages (f32 accumulation):
Cp[b,mo,no,mi,ni] = sum_k Ap[b,mo,k,mi] * Bp[b,no,k,ni], tensorized into 16x16x16 `wmma` tiles.

The pack stages store the operands in their own 16-bit type (`unsafe_set_dtype`: exact, the values are f16/bf16
already) and A k-blocked as Ap[b,mo,k/BK,mi,k%BK], so each BK slice of a thread-block tile is one contiguous
row-major block. A thread block computes a BM x BN tile with warps_m x warps_n warps, each owning a warp tile of
16 x 16 accumulator fragments: every BK slice of both operands is staged in dynamic shared memory by all threads
with 16-byte loads (rows padded against bank conflicts), each warp loads its fragments with
`wmma::load_matrix_sync` and multiplies with `wmma::mma_sync`; the accumulators go through shared memory to the
stage reading the tiles (the output with its fused epilogue), which is folded into that write-back. The wmma
intrinsics (f16 and bf16) are einfold's own, registered with `TensorIntrin.register` (desc + impl).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin

from einfold.errors import UnsupportedError

from .gpu_schedules import SCHEDULE_ERRORS, _fold_consumer

if TYPE_CHECKING:
    from einfold.ir import Program

    from .lower_te import Stage, TEGraph

FRAGMENT = 16           # wmma tile edge: 16 x 16 x 16
WARP = 32
VECTOR_BYTES = 16       # global -> shared copies move 16 bytes per thread
SHARED_PAD = 8          # elements added to every staged row (shifts rows across shared-memory banks)
ACCUMULATOR_PAD = 4
TENSOR_CORE_TYPES = {"f16": "float16", "bf16": "bfloat16"}

# ----- the wmma intrinsics -----------------------------------------------------------------------------------------
# TVM 0.27 registers wmma intrinsics for f16 (and i8/i4) in `tvm.s_tir.tensor_intrin.cuda`, none for bf16, and
# importing that package parses some 250 TVMScript functions (about 100 s here), so einfold registers the ones it
# needs, for f16 and bf16 alike, from TVMScript text parsed once per type: a description (the loop nest a marked
# block computes) and an implementation (the wmma call; strides and offsets are bound by matching the block's
# regions). `tvm_mma_sync` and friends become `nvcuda::wmma` calls in TVM's CUDA codegen, for `half` and
# `nv_bfloat16` fragments alike (bf16 wmma needs sm_80 or newer, which every arch of the target is).

_FRAGMENT_INDEX = "{0}.elem_offset // {1} // 16 * ({1} // 16) + {0}.elem_offset % {1} // 16"  # of a 16 x 16 tile

_LOAD_SOURCE = """
@I.ir_module
class Intrinsics:
    @T.prim_func(s_tir=True)
    def desc(src: T.handle, dst: T.handle):
        S = T.match_buffer(src, (16, 16), "DTYPE", align=64, offset_factor=16, scope="shared.dyn")
        F = T.match_buffer(dst, (16, 16), "DTYPE", align=64, offset_factor=16, scope="wmma.matrix_OPERAND")
        with T.sblock("root"):
            T.reads(S[0:16, 0:16])
            T.writes(F[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("load"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    F[vi, vj] = S[vi, vj]

    @T.prim_func(s_tir=True)
    def impl(src: T.handle, dst: T.handle):
        s1 = T.int32()
        s0 = T.int32()
        d1 = T.int32()
        d0 = T.int32()
        S = T.match_buffer(src, (16, 16), "DTYPE", align=64, offset_factor=16, scope="shared.dyn", strides=[s1, s0])
        F = T.match_buffer(dst, (16, 16), "DTYPE", align=64, offset_factor=16, scope="wmma.matrix_OPERAND",
                           strides=[d1, d0])
        with T.sblock("root"):
            T.reads(S[0:16, 0:16])
            T.writes(F[0:16, 0:16])
            T.tvm_load_matrix_sync(F.data, 16, 16, 16, INDEX_F, S.access_ptr("r"), s1, "row_major")
"""

_SYNC_SOURCE = """
@I.ir_module
class Intrinsics:
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (16, 16), "DTYPE", align=64, offset_factor=16, scope="wmma.matrix_a")
        B = T.match_buffer(b, (16, 16), "DTYPE", align=64, offset_factor=16, scope="wmma.matrix_b")
        C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            for i, j, k in T.grid(16, 16, 16):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.Cast("float32", A[vi, vk]) * T.Cast("float32", B[vk, vj])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        a1 = T.int32()
        a0 = T.int32()
        b1 = T.int32()
        b0 = T.int32()
        c1 = T.int32()
        c0 = T.int32()
        A = T.match_buffer(a, (16, 16), "DTYPE", align=64, offset_factor=16, scope="wmma.matrix_a", strides=[a1, a0])
        B = T.match_buffer(b, (16, 16), "DTYPE", align=64, offset_factor=16, scope="wmma.matrix_b", strides=[b1, b0])
        C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16, scope="wmma.accumulator",
                           strides=[c1, c0])
        with T.sblock("root"):
            T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            T.tvm_mma_sync(C.data, INDEX_C, A.data, INDEX_A, B.data, INDEX_B, C.data, INDEX_C)
"""

_ACCUMULATOR_SOURCE = """
@I.ir_module
class Intrinsics:
    @T.prim_func(s_tir=True)
    def fill_desc(c: T.handle):
        C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = T.float32(0)

    @T.prim_func(s_tir=True)
    def fill_impl(c: T.handle):
        c1 = T.int32()
        c0 = T.int32()
        C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16, scope="wmma.accumulator",
                           strides=[c1, c0])
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:16, 0:16])
            T.tvm_fill_fragment(C.data, 16, 16, 16, INDEX_C, T.float32(0))

    @T.prim_func(s_tir=True)
    def store_desc(c: T.handle, dst: T.handle):
        C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16, scope="wmma.accumulator")
        S = T.match_buffer(dst, (16, 16), "float32", align=64, offset_factor=16, scope="shared.dyn")
        with T.sblock("root"):
            T.reads(C[0:16, 0:16])
            T.writes(S[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    S[vi, vj] = C[vi, vj]

    @T.prim_func(s_tir=True)
    def store_impl(c: T.handle, dst: T.handle):
        c1 = T.int32()
        c0 = T.int32()
        s1 = T.int32()
        s0 = T.int32()
        C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16, scope="wmma.accumulator",
                           strides=[c1, c0])
        S = T.match_buffer(dst, (16, 16), "float32", align=64, offset_factor=16, scope="shared.dyn", strides=[s1, s0])
        with T.sblock("root"):
            T.reads(C[0:16, 0:16])
            T.writes(S[0:16, 0:16])
            T.tvm_store_matrix_sync(C.data, 16, 16, 16, INDEX_C, S.access_ptr("w"), s1, "row_major")
"""
SHORT_NAMES = {"float16": "f16", "bfloat16": "bf16"}


def _source(source: str, **words: str) -> str:
    words.update({f"INDEX_{name}": _FRAGMENT_INDEX.format(name, stride) for name, stride in
                  (("F", "d1"), ("A", "a1"), ("B", "b1"), ("C", "c1"))})
    for word, text in words.items():
        source = source.replace(word, text)
    return source


# intrinsic name -> (TVMScript module text, description function, implementation function)
_DEFINITIONS: dict[str, tuple[str, str, str]] = {}


@functools.cache
def _intrinsics(dtype: str) -> dict[str, str]:
    """Register (once) the wmma intrinsics for `dtype` operands (float16 or bfloat16) with f32 accumulators;
    returns their names by role: load_a, load_b, compute, init, store."""
    import tvm.script

    short = SHORT_NAMES[dtype]
    accumulator = _source(_ACCUMULATOR_SOURCE)
    names = {"load_a": f"einfold_wmma_load_16x16x16_{short}_a_shared_dyn",
             "load_b": f"einfold_wmma_load_16x16x16_{short}_b_shared_dyn",
             "compute": f"einfold_wmma_sync_16x16x16_{short}{short}f32",
             "init": "einfold_wmma_fill_16x16x16_f32", "store": "einfold_wmma_store_16x16x16_f32_shared_dyn"}
    _DEFINITIONS.update({
        names["load_a"]: (_source(_LOAD_SOURCE, DTYPE=dtype, OPERAND="a"), "desc", "impl"),
        names["load_b"]: (_source(_LOAD_SOURCE, DTYPE=dtype, OPERAND="b"), "desc", "impl"),
        names["compute"]: (_source(_SYNC_SOURCE, DTYPE=dtype), "desc", "impl"),
        names["init"]: (accumulator, "fill_desc", "fill_impl"),
        names["store"]: (accumulator, "store_desc", "store_impl")})
    for name in names.values():
        text, desc, impl = _DEFINITIONS[name]
        module = tvm.script.from_source(text)
        TensorIntrin.register(name, module[desc], module[impl], override=True)
    return names


@functools.cache
def _implementation(name: str, copy: int) -> tirx.PrimFunc:
    """The registered implementation of intrinsic `name` (copy 0), or a fresh copy of it: each block implemented in
    one function needs buffers and variables of its own."""
    import tvm.script

    if copy == 0:
        return TensorIntrin.get(name).impl
    text, _, impl = _DEFINITIONS[name]
    return tvm.script.from_source(text)[impl]


@dataclass(frozen=True)
class WarpTiling:
    """A BM x BN thread-block tile split over warps_m x warps_n warps; k staged BK at a time."""

    bm: int
    bn: int
    bk: int
    warps_m: int
    warps_n: int

    @property
    def warps(self) -> int:
        return self.warps_m * self.warps_n

    @property
    def warp_tile(self) -> tuple[int, int]:
        return self.bm // self.warps_m, self.bn // self.warps_n


def warp_tiling(bm: int, bn: int, k: int) -> WarpTiling | None:
    """2 x 2 warps, each owning a quarter of the tile (64 x 64 of a 128 x 128 tile, 32 x 32 of a 64 x 64 one); BK
    the largest of 64 (128-wide tiles only), 32 and 16 that divides k. None when the tile or k does not split into
    whole 16 x 16 x 16 fragments. (On the H100, 2 x 2 warps of 64 x 64 with BK = 64 ran 1.7x faster than 2 x 4
    warps of 64 x 32 with BK = 32: more fragments reused per load, fewer barriers.)"""
    depths = (64, 32, 16) if min(bm, bn) >= 128 else (32, 16)
    bk = next((depth for depth in depths if k % depth == 0), None)
    if bk is None or bm % (2 * FRAGMENT) or bn % (2 * FRAGMENT):
        return None
    return WarpTiling(bm, bn, bk, 2, 2)


def tensor_core_dtype(program: Program, stage: Stage) -> str | None:
    """The TVM operand type when the GEMM stage's einsum multiplies f16 or bf16 values (else None)."""
    op = program.defining_op(stage.op)
    if op is None or op.opcode != "einsum" or stage.tiling is None or stage.tiling.complex:
        return None
    dtypes = {op.type.dtype.name, *(program.type_of(name).dtype.name for name in op.operands)}
    return TENSOR_CORE_TYPES.get(dtypes.pop()) if len(dtypes) == 1 else None


def tensor_core_stages(program: Program, graph: TEGraph) -> dict[str, str]:
    """GEMM stage name -> operand type, for the stages whose einsum multiplies f16 or bf16 values."""
    found = {}
    for stage in graph.stages:
        dtype = tensor_core_dtype(program, stage) if stage.role == "gemm" else None
        if dtype is not None:
            found[stage.name] = dtype
    return found


def schedule_tensor_core_gemm(sch: s_tir.Schedule, stage: Stage, dtype: str) -> tuple[set[str], str] | None:
    """Tensorize the GEMM stage on a copy of the schedule and, when every step succeeds, on `sch`. Returns the names
    of the stages folded into the write-back (as `schedule_gemm` does) and a description of the kernel, or None
    (nothing changed) when the tile does not split into fragments or TVM cannot tensorize the stage."""
    block = sch.get(sch.get_sblock(stage.name))
    k = int(block.iter_vars[-1].dom.extent)
    tiling = warp_tiling(stage.tiling.mr, stage.tiling.nr, k)
    if tiling is None:
        return None
    try:
        _tensorize(sch.copy(), stage.name, dtype, tiling)
    except SCHEDULE_ERRORS:
        return None
    taken = _tensorize(sch, stage.name, dtype, tiling)
    warp_m, warp_n = tiling.warp_tile
    return taken, (f"tensor-core GEMM {tiling.bm}x{tiling.bn}x{tiling.bk} ({dtype} wmma 16x16x16, f32 accumulators), "
                   f"{tiling.warps_m}x{tiling.warps_n} warps of {warp_m}x{warp_n}, shared-memory operand slices"
                   + (f", writes {', '.join(taken)} through shared memory" if taken else ""))


def _tensorize(sch: s_tir.Schedule, name: str, dtype: str, tiling: WarpTiling) -> set[str]:
    names = _intrinsics(dtype)
    block = sch.get_sblock(name)
    consumers = sch.get_consumers(block)
    (pack_a, index_a), (pack_b, index_b) = (_writer(sch, block, region.source.name)
                                            for region in sch.get(block).reads[:2])
    bk = tiling.bk
    sch.unsafe_set_dtype(pack_a, index_a, dtype)
    sch.unsafe_set_dtype(pack_b, index_b, dtype)
    blocked = lambda b, mo, k, mi: (b, mo, k // bk, mi, k % bk)  # noqa: E731
    sch.transform_layout(pack_a, ("write", index_a), blocked)
    sch.transform_block_layout(pack_a, blocked)  # the pack writes the new layout in order

    warp_m, warp_n = tiling.warp_tile
    b, mo, no, mi, ni, k = sch.get_loops(block)
    wy, fm, i16 = sch.split(mi, [tiling.warps_m, warp_m // FRAGMENT, FRAGMENT])
    wx, fn, j16 = sch.split(ni, [tiling.warps_n, warp_n // FRAGMENT, FRAGMENT])
    ko, kf, k16 = sch.split(k, [None, bk // FRAGMENT, FRAGMENT])
    sch.reorder(b, mo, no, wy, wx, ko, kf, fm, fn, i16, j16, k16)
    tile = sch.blockize(i16)
    sch.bind(sch.fuse(b, mo, no), "blockIdx.x")
    warp = sch.fuse(wy, wx)
    sch.bind(warp, "threadIdx.y")

    lanes = VECTOR_BYTES // 2
    for index in (0, 1):
        shared = sch.cache_read(tile, index, "shared.dyn")
        sch.compute_at(shared, ko)
        copied = sch.get_loops(shared)[3:]  # below blocks, warps, ko
        fused = sch.fuse(*copied) if len(copied) > 1 else copied[0]
        _, thread_y, thread_x, vector = sch.split(fused, [None, tiling.warps, WARP, lanes])
        sch.bind(thread_y, "threadIdx.y")
        sch.bind(thread_x, "threadIdx.x")
        sch.vectorize(vector)
        sch.storage_align(shared, 0, axis=-2, factor=32, offset=SHARED_PAD)
    for index, scope, intrinsic in ((0, "wmma.matrix_a", names["load_a"]), (1, "wmma.matrix_b", names["load_b"])):
        fragments = sch.cache_read(tile, index, scope)
        sch.compute_at(fragments, kf)
        _mark(sch, _fragment_loop(sch, fragments), intrinsic)

    write_back = sch.cache_write(tile, 0, "shared.dyn")
    sch.storage_align(write_back, 0, axis=-2, factor=32, offset=ACCUMULATOR_PAD)
    accumulators = sch.cache_write(tile, 0, "wmma.accumulator")
    sch.reverse_compute_at(accumulators, warp)
    sch.reverse_compute_at(write_back, warp)
    _mark(sch, _fragment_loop(sch, accumulators), names["store"])
    init = sch.decompose_reduction(tile, ko)
    _mark(sch, sch.get_loops(sch.get_child_blocks(init)[0])[-2], names["init"])
    _mark(sch, sch.get_loops(sch.get_child_blocks(tile)[0])[-3], names["compute"])

    taken = _fold_consumer(sch, write_back, consumers)
    written = sch.get_loops(write_back)[2:]  # below blocks, warps
    fused = sch.fuse(*written) if len(written) > 1 else written[0]
    _, thread_x, vector = sch.split(fused, [None, WARP, 4])
    sch.bind(thread_x, "threadIdx.x")
    sch.vectorize(vector)
    return taken


def _writer(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, buffer: str) -> tuple[s_tir.schedule.SBlockRV, int]:
    """The pack stage writing a packed operand, and the buffer's index among its writes. ValueError when the pack
    was folded into an earlier GEMM's write-back (GEMM -> GEMM chains): TVM then emits invalid 16-byte loads of the
    retyped operand, so such a GEMM keeps the SIMT schedule."""
    for producer in sch.get_producers(block):
        for index, region in enumerate(sch.get(producer).writes):
            if region.source.name == buffer and sch.get(producer).name_hint == buffer:
                return producer, index
    raise ValueError(f"the packed operand {buffer} is not written by its own pack stage")


def _fragment_loop(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> s_tir.schedule.LoopRV:
    """Split a fragment copy's two innermost loops into 16 x 16 tiles; returns the loop to tensorize."""
    rows, cols = sch.get_loops(block)[-2:]
    row_tiles, row = sch.split(rows, [None, FRAGMENT])
    col_tiles, col = sch.split(cols, [None, FRAGMENT])
    sch.reorder(row_tiles, col_tiles, row, col)
    return row


# ----- tensorizing -------------------------------------------------------------------------------------------------
# `Schedule.tensorize` cannot run with the installed TVM: it deep-copies the intrinsic through TVM-FFI's JSON writer,
# which crashes (segfault) on any node with a DataType field under apache-tvm-ffi 0.1.15 (`tvm.ir.save_json(
# tvm.ir.PrimType("int32"))` alone crashes). So the schedule `blockize`s each 16 x 16 (x 16) loop nest and marks the
# block with its intrinsic's name; `apply_tensor_intrinsics` then puts the registered implementation in the block,
# its buffers matched to the block's regions (`match_buffer`), which is what `tensorize` does after matching.

MARK = "einfold.tensor_intrinsic"


def _mark(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, intrinsic: str) -> None:
    """The loop nest from `loop` down becomes one block that `apply_tensor_intrinsics` implements by `intrinsic`."""
    site = sch.blockize(loop)
    sch.annotate(site, MARK, intrinsic)


def apply_tensor_intrinsics(mod: tvm.IRModule) -> tvm.IRModule:
    """The module with every block the schedule marked replaced by its tensor intrinsic's implementation."""
    func = mod["main"]
    body = _implement_marked(func.body, {})
    if body.same_as(func.body):
        return mod
    implemented = tvm.IRModule({"main": func.with_body(body)})
    if MARK in implemented.script():
        raise UnsupportedError("the cuda target left a tensor-core block unimplemented (it sits under a statement "
                               "einfold's tensorizing does not walk)")
    return implemented


def _implement_marked(stmt: tirx.Stmt, uses: dict[str, int]) -> tirx.Stmt:
    """Rebuild the statements on the way down to marked blocks (schedules hold only loops, sequences and blocks);
    `uses` counts the blocks implemented so far by each intrinsic."""
    kind = type(stmt).__name__
    if kind == "SeqStmt":
        seq = [_implement_marked(child, uses) for child in stmt.seq]
        return stmt if all(new.same_as(old) for new, old in zip(seq, stmt.seq)) else tirx.SeqStmt(seq)
    if kind == "For":
        body = _implement_marked(stmt.body, uses)
        return stmt if body.same_as(stmt.body) else tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                                                              stmt.thread_binding, stmt.annotations, stmt.step)
    if kind != "SBlockRealize":
        return stmt
    block = stmt.block
    if MARK in block.annotations:
        name = str(block.annotations[MARK])
        uses[name] = uses.get(name, 0) + 1
        new_block = _implemented(block, _implementation(name, uses[name] - 1))
    else:
        body = _implement_marked(block.body, uses)
        if body.same_as(block.body):
            return stmt
        new_block = s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
                                 block.alloc_buffers, block.match_buffers, block.annotations)
    return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, new_block)


def _implemented(block: s_tir.SBlock, impl: tirx.PrimFunc) -> s_tir.SBlock:
    """A marked block with the implementation `impl` as body; each buffer of the implementation is matched to the
    block's region in the same memory scope (the accumulator: the region written)."""
    regions = {str(region.source.scope()): region for region in [*block.reads, *block.writes]}
    matches = [s_tir.MatchBufferRegion(buffer, regions[str(buffer.scope())]) for buffer in impl.params]
    return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, impl.body.block.body, None,
                        [], matches, {})
