"""Tensor-core GEMM of the `ptx` target for f16/bf16 inputs (f32 accumulation): C[b,m,n] = sum_k A[b,m,k] B[b,k,n] as
mma.sync m16n8k16 fragments, C[16i:16i+16, 8j:8j+8] += A[16i:16i+16, 16l:16l+16] B[16l:16l+16, 8j:8j+8], fed by
ldmatrix from swizzled shared-memory tiles that cp.async fills several k-tiles ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llvmlite import ir

from einfold import dtypes as dt

from ..cupy_runtime import Launch
from .scalars import F16, F32, I16, I32, I64, narrow, scalar

SHARED_PTR = ir.PointerType(addrspace=3)
GLOBAL_PTR = ir.PointerType(addrspace=1)
SHARED_SYMBOL = "einfold_mma_shared"  # the dynamic shared memory every tensor-core kernel stages its tiles in
SMS = 132  # streaming multiprocessors of an H100 SXM
CHUNK = 8  # elements per 16-byte cp.async copy and per ldmatrix row
TENSOR_CORE_DTYPES = ("f16", "bf16")


def uses_tensor_cores(a_sc: Any, b_sc: Any) -> bool:
    """Both operands f16, or both bf16 (f32 GEMMs stay on the FMA kernel: no silent TF32)."""
    return a_sc.dtype.name in TENSOR_CORE_DTYPES and a_sc.dtype == b_sc.dtype


@dataclass(frozen=True)
class MmaConfig:
    """A BM x BN output tile per block of warps_m x warps_n warps (each a (BM/warps_m) x (BN/warps_n) warp tile of
    16x8 fragments), BK deep k-tiles in `stages` shared-memory buffers. Operand strides are per group: A (batch, m, k),
    B (batch, k, n), C (batch, m, n); an operand tile is k-major (k contiguous) or x-major (m or n contiguous)."""

    batch: int
    m: int
    n: int
    k: int
    a_strides: tuple[int, int, int]
    b_strides: tuple[int, int, int]
    c_strides: tuple[int, int, int]
    in_dtype: str
    out_dtype: str
    bm: int = 128
    bn: int = 128
    bk: int = 32
    warps_m: int = 2
    warps_n: int = 4
    stages: int = 3
    group_m: int = 8  # block rasterisation: this many m-tiles are walked together (L2 reuse of the B tiles)
    min_blocks: int = 1  # blocks per SM asked of ptxas (caps registers per thread)
    staged_store: bool = True  # write C through shared memory in 16-byte rows (where the layout allows)

    def __post_init__(self) -> None:
        warp_m, warp_n = self.bm // self.warps_m, self.bn // self.warps_n
        if self.bk not in (32, 64) or min(self.bm, self.bn) < 64 or warp_m % 16 or warp_n % 16:
            raise ValueError(f"unsupported tensor-core tile {self.bm}x{self.bn}x{self.bk}, warp tile {warp_m}x{warp_n}")

    @staticmethod
    def tuning(extents: tuple[int, int, int, int]) -> dict[str, int]:
        """Tile choice (measured on an H100, bf16 4096^3: 256x128 tiles of 64x64 warp tiles 0.365 ms, 128x128 ones
        0.41 ms): the biggest tiles that still give every SM a block of its own."""
        batch, m, n, _ = extents
        if batch * math.ceil(m / 256) * math.ceil(n / 128) >= SMS:
            return {"bm": 256, "bn": 128, "warps_m": 4, "warps_n": 2}
        if batch * math.ceil(m / 128) * math.ceil(n / 128) >= SMS:
            return {"bm": 128, "bn": 128, "warps_m": 2, "warps_n": 2}
        return {"bm": 64, "bn": 64, "warps_m": 2, "warps_n": 2}

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def grid(self) -> tuple[int, int, int]:
        return math.ceil(self.n / self.bn), math.ceil(self.m / self.bm), self.batch

    @property
    def stage_bytes(self) -> int:
        return (self.bm + self.bn) * self.bk * 2

    @property
    def shared_bytes(self) -> int:
        return self.stages * self.stage_bytes

    def describe(self) -> str:
        layout = (f"A {'k' if k_major(self.a_strides, 'a') else 'm'}-major, "
                  f"B {'k' if k_major(self.b_strides, 'b') else 'n'}-major")
        return (f"{self.batch}x{self.m}x{self.n}x{self.k} {self.in_dtype} on tensor cores (mma.sync m16n8k16, f32 "
                f"accumulators), block tile {self.bm}x{self.bn}x{self.bk}, warp tile "
                f"{self.bm // self.warps_m}x{self.bn // self.warps_n}, {self.stages} cp.async stages, {layout}")


def operand_strides(strides: tuple[int, int, int], operand: str) -> tuple[int, int, int]:
    """(batch, x, k) strides of an operand given per group (A: batch, m, k; B: batch, k, n)."""
    return (strides[0], strides[1], strides[2]) if operand == "a" else (strides[0], strides[2], strides[1])


def k_major(strides: tuple[int, int, int], operand: str) -> bool:
    """Whether k is the operand's contiguous group (else m or n is)."""
    return operand_strides(strides, operand)[2] == 1


def aligned(strides: tuple[int, int, int], operand: str) -> bool:
    """cp.async copies 16-byte chunks: one group must be contiguous and every other stride a multiple of 8."""
    batch, x_stride, k_stride = operand_strides(strides, operand)
    if k_stride == 1:
        rest = (batch, x_stride)
    elif x_stride == 1:
        rest = (batch, k_stride)
    else:
        return False
    return all(s % CHUNK == 0 for s in rest)


def tensor_core_gemm(owner: Any, note: str, extents: tuple[int, int, int, int], operands: list[tuple[str, tuple]],
                     out: tuple[str, tuple[int, int, int]], in_sc: Any, out_sc: Any, **tuning: int) -> MmaConfig:
    """Emit (and launch) C = A B for `owner` (a PtxBuilder); operands whose strides cp.async cannot copy are first
    packed into a zero-padded buffer. `tuning` overrides MmaConfig's tile fields."""
    batch, m, n, k = extents
    (a_name, a_strides), (b_name, b_strides) = operands
    if not aligned(a_strides, "a"):
        a_name, a_strides = _pad(owner, a_name, in_sc, "a", extents, a_strides)
    if not aligned(b_strides, "b"):
        b_name, b_strides = _pad(owner, b_name, in_sc, "b", extents, b_strides)
    from . import ptx_wgmma
    hopper = ptx_wgmma.wgmma_tuning(extents) if owner.arch in ptx_wgmma.WGMMA_ARCHES and not tuning else None
    tuning = {**(hopper or MmaConfig.tuning(extents)), **tuning}
    cfg = MmaConfig(batch, m, n, k, a_strides, b_strides, out[1], in_sc.dtype.name, out_sc.dtype.name, **tuning)
    kernel = owner.kernel("wgmma_gemm" if hopper else "mma_gemm", list(dict.fromkeys([a_name, b_name, out[0]])))
    if hopper:
        owner.arch = ptx_wgmma.WGMMA_TARGET  # wgmma is an sm_90a instruction: the whole module targets sm_90a
    (ptx_wgmma.emit_wgmma if hopper else _emit)(kernel, cfg, a_name, b_name, out[0])
    kernel.finish()
    description = f"{note} as GEMM {ptx_wgmma.describe(cfg) if hopper else cfg.describe()}"
    owner.launches.append(Launch(kernel.name, cfg.grid, (cfg.threads, 1, 1), tuple(kernel.arg_names),
                                 cfg.shared_bytes, description))
    owner.notes.append(f"{kernel.name}: {description}")
    return cfg


def _pad(owner: Any, name: str, sc: Any, operand: str, extents: tuple[int, int, int, int],
         strides: tuple[int, int, int]) -> tuple[str, tuple[int, int, int]]:
    """packed[b, slow, fast] = operand (zero past the end of `fast`, padded to a multiple of 8), `fast` being the
    operand's contiguous group if it has one, else k; returns the packed buffer and its (batch, ., .) strides."""
    batch, m, n, k = extents
    x = m if operand == "a" else n
    _, x_stride, k_stride = operand_strides(strides, operand)
    fast_is_x = x_stride == 1 and k_stride != 1
    (slow, slow_stride), (fast, fast_stride) = (((k, k_stride), (x, x_stride)) if fast_is_x
                                                else ((x, x_stride), (k, k_stride)))
    padded = -(-fast // CHUNK) * CHUNK
    target = owner.temp("pad", (batch, slow, padded), sc.dtype)
    kernel = owner.kernel("pad", [name, target])
    b, c64 = kernel.b, kernel.const
    index = kernel.global_index()
    size = batch * slow * padded
    with b.if_then(b.icmp_signed("<", index, c64(size))):
        column = b.urem(index, c64(padded))
        rest = b.udiv(index, c64(padded))
        row, plane = b.urem(rest, c64(slow)), b.udiv(rest, c64(slow))
        inside = b.icmp_signed("<", column, c64(fast))
        source = b.add(b.mul(plane, c64(strides[0])), b.add(b.mul(row, c64(slow_stride)),
                                                             b.mul(column, c64(fast_stride))))
        source = b.select(inside, source, c64(0))
        value = b.load(b.gep(kernel.pointer(name), [source], inbounds=True, source_etype=sc.element), typ=sc.element)
        value = b.select(inside, value, ir.Constant(sc.element, 0))
        b.store(value, b.gep(kernel.pointer(target), [index], inbounds=True, source_etype=sc.element))
    owner.launch(kernel, (math.ceil(size / 256), 1, 1), f"pad {name} to [{batch}, {slow}, {padded}] for cp.async")
    plane_stride = slow * padded
    if fast_is_x:
        return target, ((plane_stride, 1, padded) if operand == "a" else (plane_stride, padded, 1))
    return target, ((plane_stride, padded, 1) if operand == "a" else (plane_stride, 1, padded))


def _declare(module: ir.Module, name: str, result: ir.Type, args: list[ir.Type]) -> ir.Function:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, ir.FunctionType(result, args), name)


class _Tile:
    """One operand's shared-memory tile and its cp.async loads: k-major tiles are X rows of BK k-values, x-major tiles
    BK rows of X values. Rows of 8 or more 16-byte chunks store chunk c at c ^ (row % 8), rows of 4 chunks (BK = 32,
    64 bytes) at c ^ ((row / 2) % 4): the 8 rows one ldmatrix reads then fall into distinct banks."""

    def __init__(self, emitter: _Emitter, operand: str, x_extent: int, block: int, strides: tuple[int, int, int],
                 offset: int):
        self.e = emitter
        cfg = emitter.cfg
        self.x_extent, self.block, self.offset = x_extent, block, offset
        _, self.x_stride, self.k_stride = operand_strides(strides, operand)
        self.kmajor = self.k_stride == 1
        self.rows = block if self.kmajor else cfg.bk
        self.chunks = (cfg.bk if self.kmajor else block) // CHUNK
        self.masked = x_extent % block != 0 or cfg.k % cfg.bk != 0

    def byte_offset(self, row: Any, chunk: Any) -> Any:
        """Byte offset (i32) in the tile of 16-byte chunk `chunk` of row `row`."""
        b, c32 = self.e.b, self.e.c32
        swizzle = b.and_(row, c32(7)) if self.chunks >= 8 else b.and_(b.lshr(row, c32(1)), c32(3))
        return b.add(b.mul(row, c32(self.chunks * 16)), b.shl(b.xor(chunk, swizzle), c32(4)))

    def load(self, pointer: Any, base: Any, x0: Any, k_tile: Any, stage: Any) -> None:
        """cp.async the k-tile `k_tile` (i64) of rows x0.. into shared buffer `stage` (i32 byte offset)."""
        e, cfg = self.e, self.e.cfg
        b, c64, c32 = e.b, e.c64, e.c32
        per_thread = self.rows * self.chunks // cfg.threads
        chunk = b.urem(e.tid32, c32(self.chunks))
        first_row = b.udiv(e.tid32, c32(self.chunks))
        k0 = b.mul(k_tile, c64(cfg.bk))
        for r in range(per_thread):
            row = b.add(first_row, c32(r * cfg.threads // self.chunks))
            row64, chunk64 = b.zext(row, I64), b.zext(b.mul(chunk, c32(CHUNK)), I64)
            x, kk = (b.add(x0, row64), b.add(k0, chunk64)) if self.kmajor else (b.add(x0, chunk64), b.add(k0, row64))
            offset = b.add(base, b.add(b.mul(x, c64(self.x_stride)), b.mul(kk, c64(self.k_stride))))
            destination = e.shared(b.add(stage, c32(self.offset)), self.byte_offset(row, chunk))
            if not self.masked:
                e.copy(destination, e.global_address(pointer, offset), None)
                continue
            # bytes inside the operand: the chunk runs along k (k-major) or x; the other coordinate is one row
            along, along_extent, across, across_extent = ((kk, cfg.k, x, self.x_extent) if self.kmajor
                                                          else (x, self.x_extent, kk, cfg.k))
            left = b.sub(c64(along_extent), along)
            left = b.select(b.icmp_signed("<", left, c64(CHUNK)), left, c64(CHUNK))
            left = b.select(b.icmp_signed("<", left, c64(0)), c64(0), left)
            left = b.select(b.icmp_signed("<", across, c64(across_extent)), left, c64(0))
            valid = b.icmp_signed(">", left, c64(0))
            e.copy(destination, e.global_address(pointer, b.select(valid, offset, c64(0))),
                   b.shl(b.trunc(left, I32), c32(1)))

    def fragments(self, stage: Any, kk: int, starts: list[int], first: bool) -> list[tuple[Any, ...]]:
        """ldmatrix.x4 at each warp-relative start (x offset within the block tile) for k-step kk (16 deep). For A
        (`first`) each gives a0..a3 of a 16x16 fragment; for B, (b0, b1) of the n-fragments at start and start + 8."""
        e = self.e
        b, c32 = e.b, e.c32
        lane = e.lane
        low = b.and_(lane, c32(7))
        matrix_bit0 = b.and_(b.lshr(lane, c32(3)), c32(1))  # (lane / 8) % 2
        matrix_bit1 = b.lshr(lane, c32(4))  # lane / 16
        # A: matrix j = (rows + 8 * (j % 2), k + 8 * (j / 2)); B: (n + 8 * (j / 2), k + 8 * (j % 2))
        x_bit, k_bit = (matrix_bit0, matrix_bit1) if first else (matrix_bit1, matrix_bit0)
        results = []
        for start in starts:
            x_start = b.add(e.warp_x[first], c32(start))
            if self.kmajor:
                row = b.add(b.add(x_start, low), b.shl(x_bit, c32(3)))
                chunk = b.add(c32(2 * kk), k_bit)
            else:
                row = b.add(c32(16 * kk), b.add(low, b.shl(k_bit, c32(3))))
                chunk = b.add(b.lshr(x_start, c32(3)), x_bit)
            address = e.shared(b.add(stage, c32(self.offset)), self.byte_offset(row, chunk))
            results.append(e.ldmatrix(address, transposed=not self.kmajor))
        return results


class _Emitter:
    """The kernel body: prologue loads, the pipelined k loop of ldmatrix + mma, the converting epilogue."""

    def __init__(self, kernel: Any, cfg: MmaConfig):
        self.kernel, self.cfg = kernel, cfg
        self.b = kernel.b
        self.module = kernel.owner.module
        self.c64 = kernel.const
        tid = kernel.special("tid.x")
        self.tid32 = self.b.trunc(tid, I32)
        self.lane = self.b.and_(self.tid32, self.c32(31))
        warp = self.b.lshr(self.tid32, self.c32(5))
        warp_m, warp_n = self.b.urem(warp, self.c32(cfg.warps_m)), self.b.udiv(warp, self.c32(cfg.warps_m))
        self.warp_x = {True: self.b.mul(warp_m, self.c32(cfg.bm // cfg.warps_m)),
                       False: self.b.mul(warp_n, self.c32(cfg.bn // cfg.warps_n))}
        shared = self.module.globals.get(SHARED_SYMBOL)
        if shared is None:
            shared = ir.GlobalVariable(self.module, ir.ArrayType(ir.IntType(8), 0), SHARED_SYMBOL, addrspace=3)
            shared.align = 16
        self.shared_base = shared

    @staticmethod
    def c32(value: int) -> ir.Constant:
        return ir.Constant(I32, value)

    def shared(self, base: Any, offset: Any) -> Any:
        return self.b.gep(self.shared_base, [self.b.add(base, offset)], source_etype=ir.IntType(8))

    def global_address(self, pointer: Any, element: Any) -> Any:
        return self.b.addrspacecast(self.b.gep(pointer, [element], inbounds=True, source_etype=I16), GLOBAL_PTR)

    def copy(self, destination: Any, source: Any, size: Any | None) -> None:
        """cp.async.cg of 16 bytes (with `size`: only that many read, the rest zero-filled)."""
        if size is None:
            function = _declare(self.module, "llvm.nvvm.cp.async.cg.shared.global.16", ir.VoidType(),
                                [SHARED_PTR, GLOBAL_PTR])
            self.b.call(function, [destination, source])
        else:
            function = _declare(self.module, "llvm.nvvm.cp.async.cg.shared.global.16.s", ir.VoidType(),
                                [SHARED_PTR, GLOBAL_PTR, I32])
            self.b.call(function, [destination, source, size])

    def commit(self) -> None:
        self.b.call(_declare(self.module, "llvm.nvvm.cp.async.commit.group", ir.VoidType(), []), [])

    def wait(self, pending: int) -> None:
        self.b.call(_declare(self.module, "llvm.nvvm.cp.async.wait.group", ir.VoidType(), [I32]), [self.c32(pending)])

    def ldmatrix(self, address: Any, transposed: bool) -> tuple[Any, ...]:
        result = ir.LiteralStructType([I32] * 4)
        name = f"llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4{'.trans' if transposed else ''}.b16"
        value = self.b.call(_declare(self.module, name, result, [SHARED_PTR]), [address])
        return tuple(self.b.extract_value(value, i) for i in range(4))

    def mma(self, a: tuple[Any, ...], b_frag: tuple[Any, Any], acc: list[Any]) -> list[Any]:
        b = self.b
        result = ir.LiteralStructType([F32] * 4)
        if self.cfg.in_dtype == "bf16":
            function = _declare(self.module, "llvm.nvvm.mma.m16n8k16.row.col.bf16", result, [I32] * 6 + [F32] * 4)
            args = [*a, *b_frag]
        else:
            pair = ir.VectorType(F16, 2)
            function = _declare(self.module, "llvm.nvvm.mma.m16n8k16.row.col.f32.f32", result, [pair] * 6 + [F32] * 4)
            args = [b.bitcast(v, pair) for v in (*a, *b_frag)]
        value = b.call(function, args + list(acc))
        return [b.extract_value(value, i) for i in range(4)]


def _emit(kernel: Any, cfg: MmaConfig, a_name: str, b_name: str, c_name: str) -> None:
    from .loops import loop_carry

    module = kernel.owner.module
    node = module.add_metadata([kernel.function, "maxntidx", ir.Constant(I32, cfg.threads)])
    module.add_named_metadata("nvvm.annotations", node)
    if cfg.min_blocks > 1:
        module.add_named_metadata("nvvm.annotations",
                                  module.add_metadata([kernel.function, "minctasm", ir.Constant(I32, cfg.min_blocks)]))
    e = _Emitter(kernel, cfg)
    b, c64, c32 = e.b, e.c64, e.c32
    tile_a = _Tile(e, "a", cfg.m, cfg.bm, cfg.a_strides, 0)
    tile_b = _Tile(e, "b", cfg.n, cfg.bn, cfg.b_strides, cfg.bm * cfg.bk * 2)

    m0, n0 = block_origin(kernel, cfg)
    z = kernel.special("ctaid.z")
    load = stage_loader(kernel, cfg, (tile_a, tile_b), (a_name, b_name), (m0, n0), z)

    tiles = math.ceil(cfg.k / cfg.bk)
    for s in range(cfg.stages - 1):
        if s < tiles:
            load(c64(s))
        e.commit()
    frags_m, frags_n = cfg.bm // cfg.warps_m // 16, cfg.bn // cfg.warps_n // 8

    def stage_of(k_tile: Any) -> Any:
        return b.mul(b.trunc(b.urem(k_tile, c64(cfg.stages)), I32), c32(cfg.stage_bytes))

    def fragments(stage: Any, kk: int) -> list[Any]:
        """This warp's A and B fragments of k-step kk, flat: frags_m times a0..a3, then frags_n times b0, b1."""
        a_frags = tile_a.fragments(stage, kk, [16 * i for i in range(frags_m)], True)
        b_quads = tile_b.fragments(stage, kk, [16 * j for j in range(frags_n // 2)], False)
        return [v for frag in a_frags for v in frag] + [v for quad in b_quads for v in quad]

    # k-tile t waits for its copy and synchronises before its last k-step, whose fragments are loaded together with
    # the first k-step's of tile t + 1: ldmatrix latency hides behind the mma of the step before
    e.wait(cfg.stages - 2)
    kernel.barrier()
    accumulators = frags_m * frags_n * 4
    state = [ir.Constant(F32, 0.0)] * accumulators + fragments(stage_of(c64(0)), 0)
    with loop_carry(b, 0, tiles, state, name="ktile") as (t, carried, following):
        acc, frags = list(carried[:accumulators]), carried[accumulators:]
        ahead = b.add(t, c64(cfg.stages - 1))  # into the buffer k-tile t - 1 used: every warp is done with it
        with b.if_then(b.icmp_signed("<", ahead, c64(tiles))):
            load(ahead)
        e.commit()
        stage = stage_of(t)
        steps = cfg.bk // 16
        for kk in range(steps):
            if kk == steps - 1:
                e.wait(cfg.stages - 2)
                kernel.barrier()
                upcoming = fragments(stage_of(b.add(t, c64(1))), 0)  # past the last tile: unused values
            else:
                upcoming = fragments(stage, kk + 1)
            a_frags = [frags[4 * i:4 * i + 4] for i in range(frags_m)]
            b_frags = [frags[4 * frags_m + 2 * j:4 * frags_m + 2 * j + 2] for j in range(frags_n)]
            for i, a_frag in enumerate(a_frags):
                for j, b_frag in enumerate(b_frags):
                    cell = (i * frags_n + j) * 4
                    acc[cell:cell + 4] = e.mma(a_frag, b_frag, acc[cell:cell + 4])
            frags = upcoming
        following.extend(acc + frags)
    e.wait(0)
    result = state[:accumulators]
    if cfg.staged_store and _can_stage(cfg):
        _staged_store(e, cfg, kernel, kernel.pointer(c_name), result, m0, n0, z)
    else:
        _store(e, cfg, kernel.pointer(c_name), result, m0, n0, z)


def block_origin(kernel: Any, cfg: Any) -> tuple[Any, Any]:
    """(m0, n0), the first row and column (i64) of this block's output tile: block (ctaid.y, ctaid.x) walks the
    tiles group_m m-tiles at a time (neighbouring blocks share B tiles in L2)."""
    b, c64, c32 = kernel.b, kernel.const, _Emitter.c32
    tiles_n, tiles_m = cfg.grid[0], cfg.grid[1]
    block = b.add(b.mul(b.trunc(kernel.special("ctaid.y"), I32), c32(tiles_n)), b.trunc(kernel.special("ctaid.x"), I32))
    group = max(1, min(cfg.group_m, tiles_m))
    first_m = b.mul(b.udiv(block, c32(group * tiles_n)), c32(group))
    rows_in_group = b.sub(c32(tiles_m), first_m)
    rows_in_group = b.select(b.icmp_signed("<", rows_in_group, c32(group)), rows_in_group, c32(group))
    m_tile = b.add(first_m, b.urem(block, rows_in_group))
    n_tile = b.udiv(b.urem(block, c32(group * tiles_n)), rows_in_group)
    return b.mul(b.zext(m_tile, I64), c64(cfg.bm)), b.mul(b.zext(n_tile, I64), c64(cfg.bn))


def stage_loader(kernel: Any, cfg: Any, tiles: tuple[_Tile, _Tile], names: tuple[str, str], origin: tuple[Any, Any],
                 z: Any) -> Any:
    """load(k_tile): cp.async k-tile `k_tile` (i64) of this block's A and B tiles into shared stage k_tile % stages."""
    b, c64, c32 = kernel.b, kernel.const, _Emitter.c32
    a_base, b_base = b.mul(z, c64(cfg.a_strides[0])), b.mul(z, c64(cfg.b_strides[0]))
    pointers = kernel.pointer(names[0]), kernel.pointer(names[1])

    def load(k_tile: Any) -> None:
        stage = b.mul(b.trunc(b.urem(k_tile, c64(cfg.stages)), I32), c32(cfg.stage_bytes))
        tiles[0].load(pointers[0], a_base, origin[0], k_tile, stage)
        tiles[1].load(pointers[1], b_base, origin[1], k_tile, stage)
    return load


def _store(e: _Emitter, cfg: MmaConfig, pointer: Any, acc: list[Any], m0: Any, n0: Any, z: Any) -> None:
    """C at the accumulators' places (fragment c0, c1: row lane / 4, columns 2 (lane % 4) + {0, 1}; c2, c3: 8 rows
    down), converted to the output dtype; pairs of columns are stored together when the layout allows."""
    from .scalars import convert
    b, c64, c32 = e.b, e.c64, e.c32
    out_sc = scalar(dt.dtype(cfg.out_dtype))
    acc_sc = scalar(dt.float32)
    frags_m, frags_n = cfg.bm // cfg.warps_m // 16, cfg.bn // cfg.warps_n // 8
    rs, cs, bs = cfg.c_strides[1], cfg.c_strides[2], cfg.c_strides[0]
    paired = cs == 1 and cfg.n % 2 == 0 and rs % 2 == 0 and bs % 2 == 0
    lane_row = b.zext(b.lshr(e.lane, c32(2)), I64)
    lane_col = b.zext(b.shl(b.and_(e.lane, c32(3)), c32(1)), I64)
    row_base = b.add(b.add(m0, b.zext(e.warp_x[True], I64)), lane_row)
    col_base = b.add(b.add(n0, b.zext(e.warp_x[False], I64)), lane_col)
    c_base = b.mul(z, c64(bs))
    element = out_sc.element

    def stored(value: Any) -> Any:
        return narrow(b, convert(b, value, acc_sc, out_sc) if acc_sc != out_sc else value, out_sc)

    for i in range(frags_m):
        for half in range(2):
            row = b.add(row_base, c64(16 * i + 8 * half))
            row_offset = b.add(c_base, b.mul(row, c64(rs)))
            row_inside = b.icmp_signed("<", row, c64(cfg.m)) if cfg.m % cfg.bm else None
            for j in range(frags_n):
                col = b.add(col_base, c64(8 * j))
                values = [acc[(i * frags_n + j) * 4 + 2 * half + c] for c in range(2)]
                for c in range(1 if paired else 2):
                    column = b.add(col, c64(c))
                    inside = row_inside
                    if cfg.n % cfg.bn:
                        in_col = b.icmp_signed("<", column, c64(cfg.n))
                        inside = in_col if inside is None else b.and_(inside, in_col)
                    address = b.gep(pointer, [b.add(row_offset, b.mul(column, c64(cs)))], inbounds=True,
                                    source_etype=element)
                    if paired:
                        vector = ir.VectorType(element, 2)
                        value = ir.Constant(vector, None)
                        for lane, part in enumerate(values):
                            value = b.insert_element(value, stored(part), c32(lane))
                        size = 2 * (2 if element in (I16, F16) else 4 if element == F32 else 8)
                    else:
                        value, size = stored(values[c]), None
                    if inside is None:
                        b.store(value, address, align=size)
                    else:
                        with b.if_then(inside):
                            b.store(value, address, align=size)


def _can_stage(cfg: MmaConfig) -> bool:
    """The C tile fits the shared buffers and its rows split into aligned 16-byte chunks."""
    size = scalar(dt.dtype(cfg.out_dtype)).element
    width = 2 if size in (I16, F16) else 4 if size == F32 else 8
    per_chunk = 16 // width
    rs, cs, bs = cfg.c_strides[1], cfg.c_strides[2], cfg.c_strides[0]
    fits = cfg.bm * (cfg.bn * width + 16) <= cfg.shared_bytes
    return fits and cs == 1 and cfg.n % per_chunk == 0 and rs % per_chunk == 0 and bs % per_chunk == 0


def _staged_store(e: _Emitter, cfg: MmaConfig, kernel: Any, pointer: Any, acc: list[Any], m0: Any, n0: Any,
                  z: Any) -> None:
    """C through shared memory: each warp writes its converted fragments into a [BM][BN] tile (rows padded by 16
    bytes: the 8 rows of a fragment store hit distinct banks), then every thread copies 16-byte row chunks out."""
    from .scalars import convert
    b, c64, c32 = e.b, e.c64, e.c32
    out_sc = scalar(dt.dtype(cfg.out_dtype))
    acc_sc = scalar(dt.float32)
    element = out_sc.element
    width = 2 if element in (I16, F16) else 4 if element == F32 else 8
    pitch = cfg.bn * width + 16
    frags_m, frags_n = cfg.bm // cfg.warps_m // 16, cfg.bn // cfg.warps_n // 8
    kernel.barrier()  # every warp is done reading the operand tiles
    lane_row = b.lshr(e.lane, c32(2))
    lane_col = b.shl(b.and_(e.lane, c32(3)), c32(1))
    row_base = b.add(e.warp_x[True], lane_row)
    col_base = b.add(e.warp_x[False], lane_col)
    pair = ir.VectorType(element, 2)
    for i in range(frags_m):
        for half in range(2):
            row = b.add(row_base, c32(16 * i + 8 * half))
            for j in range(frags_n):
                col = b.add(col_base, c32(8 * j))
                value = ir.Constant(pair, None)
                for lane in range(2):
                    part = acc[(i * frags_n + j) * 4 + 2 * half + lane]
                    part = convert(b, part, acc_sc, out_sc) if acc_sc != out_sc else part
                    value = b.insert_element(value, narrow(b, part, out_sc), c32(lane))
                address = e.shared(b.mul(row, c32(pitch)), b.mul(col, c32(width)))
                b.store(value, b.bitcast(address, pair.as_pointer(3)), align=2 * width)
    kernel.barrier()
    per_row = cfg.bn * width // 16
    rows_per_pass = cfg.threads // per_row
    chunk = b.urem(e.tid32, c32(per_row))
    first_row = b.udiv(e.tid32, c32(per_row))
    vector = ir.VectorType(I32, 4)
    column = b.add(n0, b.zext(b.mul(chunk, c32(16 // width)), I64))
    c_base = b.mul(z, c64(cfg.c_strides[0]))
    for r in range(cfg.bm // rows_per_pass):
        row = b.add(first_row, c32(r * rows_per_pass))
        source = e.shared(b.mul(row, c32(pitch)), b.shl(chunk, c32(4)))
        value = b.load(b.bitcast(source, vector.as_pointer(3)), typ=vector, align=16)
        global_row = b.add(m0, b.zext(row, I64))
        offset = b.add(c_base, b.add(b.mul(global_row, c64(cfg.c_strides[1])), column))
        address = b.gep(pointer, [offset], inbounds=True, source_etype=element)
        inside = inside_tile(b, c64, cfg, global_row, column)
        if inside is None:
            b.store(value, address, align=16)
        else:
            with b.if_then(inside):
                b.store(value, address, align=16)


def inside_tile(b: ir.IRBuilder, c64: Any, cfg: Any, row: ir.Value, column: ir.Value) -> ir.Value | None:
    """The predicate `row < m and column < n` of a store from a block tile, leaving out each test that the block
    tiling makes always true (m a multiple of bm, n of bn); None when both are."""
    inside = None
    if cfg.m % cfg.bm:
        inside = b.icmp_signed("<", row, c64(cfg.m))
    if cfg.n % cfg.bn:
        in_column = b.icmp_signed("<", column, c64(cfg.n))
        inside = in_column if inside is None else b.and_(inside, in_column)
    return inside
