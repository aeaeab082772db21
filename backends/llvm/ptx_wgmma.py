"""Hopper (sm_90a) tensor-core GEMM of the `ptx` target for f16/bf16 inputs, f32 accumulation: C[b,m,n] =
sum_k A[b,m,k] B[b,k,n] as 64xNx16 warpgroup MMAs, C[64g:64g+64, 0:N] += A[64g:64g+64, 16l:16l+16] B[16l:16l+16, 0:N]
(wgmma.mma_async, both operands read from 128-byte-swizzled shared-memory tiles through matrix descriptors), the tiles
filled by cp.async several k-tiles ahead; the output goes through ptx_mma's converting epilogue.
"""

from __future__ import annotations

import math
from typing import Any

from llvmlite import ir

from .ptx_mma import (
    SHARED_SYMBOL,
    SMS,
    MmaConfig,
    _can_stage,
    _declare,
    _Emitter,
    _staged_store,
    _store,
    _Tile,
    block_origin,
    k_major,
    stage_loader,
)
from .scalars import F32, I32, I64

WGMMA_ARCHES = ("sm_90", "sm_90a")  # the kernel needs sm_90a; an sm_90 program that uses it is emitted for sm_90a
WGMMA_TARGET = "sm_90a"
ROW_BYTES = 128  # one swizzled shared-memory row: 64 16-bit values, 8 chunks of 16 bytes
ATOM_BYTES = 8 * ROW_BYTES  # the 128-byte swizzle repeats every 8 rows (chunk c of row r sits at c ^ (r % 8))
WARPGROUP = 128  # threads of one warpgroup (4 warps): each owns 64 rows of the block tile


def wgmma_tuning(extents: tuple[int, int, int, int]) -> dict[str, int] | None:
    """Tile choice: 128x256 block tiles (two warpgroups of 64x256, m64n256k16) when they give every SM a block,
    else 128x128 ones (m64n128k16), else None (the mma.sync kernel, whose smaller tiles fill the GPU better).
    k-tiles are 64 deep (one 128-byte row per m or n), as many stages as fit in about 192 KB of shared memory."""
    batch, m, n, _ = extents
    for bn, stages in ((256, 4), (128, 6)):
        if batch * math.ceil(m / 128) * math.ceil(n / bn) >= SMS:
            return {"bm": 128, "bn": bn, "bk": 64, "warps_m": 8, "warps_n": 1, "stages": stages}
    return None


def describe(cfg: MmaConfig) -> str:
    """The launch note of a wgmma GEMM: shape, instruction, tiles, pipeline depth, operand layouts."""
    major = {True: "k", False: "m"}, {True: "k", False: "n"}
    layout = f"A {major[0][k_major(cfg.a_strides, 'a')]}-major, B {major[1][k_major(cfg.b_strides, 'b')]}-major"
    return (f"{cfg.batch}x{cfg.m}x{cfg.n}x{cfg.k} {cfg.in_dtype} on tensor cores (wgmma m64n{cfg.bn}k16, f32 "
            f"accumulators), block tile {cfg.bm}x{cfg.bn}x{cfg.bk} of {cfg.threads // WARPGROUP} warpgroups, "
            f"{cfg.stages} cp.async stages ({cfg.stages - 2} k-tiles ahead), 128-byte swizzle, {layout}")


class _SwizzledTile(_Tile):
    """An operand tile in wgmma's 128-byte-swizzled layout. k-major: one 128-byte row of 64 k-values per m (or n);
    x-major (m or n contiguous): per 64 x-values a block of BK rows, one per k, of those 64 x-values. The 8 rows of
    an atom hold chunk c at c ^ (row % 8), the pattern the descriptor's swizzle mode undoes."""

    def __init__(self, emitter: _Emitter, operand: str, x_extent: int, block: int, strides: tuple[int, int, int],
                 offset: int):
        super().__init__(emitter, operand, x_extent, block, strides, offset)
        if self.kmajor and self.chunks != ROW_BYTES // 16:
            raise ValueError(f"wgmma tiles need 64-deep k-tiles, got {emitter.cfg.bk}")

    def byte_offset(self, row: Any, chunk: Any) -> Any:
        """Byte offset (i32) of chunk `chunk` of row `row` (k-major: row = x, chunk = k / 8; else row = k,
        chunk = x / 8)."""
        if self.kmajor:
            return super().byte_offset(row, chunk)  # row * 128 + ((chunk ^ (row % 8)) << 4)
        b, c32 = self.e.b, self.e.c32
        line = b.add(b.mul(b.lshr(chunk, c32(3)), c32(self.e.cfg.bk)), row)
        return b.add(b.mul(line, c32(ROW_BYTES)), b.shl(b.xor(b.and_(chunk, c32(7)), b.and_(row, c32(7))), c32(4)))

    def descriptor(self, b: ir.IRBuilder, address: Any) -> Any:
        """The wgmma matrix descriptor (i64) of the tile at shared `address` (i64 bytes): start >> 4 in bits 0-13,
        leading byte offset >> 4 in 16-29 (x-major: from one 64-value x block to the next; k-major: unused, 1),
        stride byte offset >> 4 in 32-45 (from one 8-row atom to the next), 128-byte swizzle (1) in bits 62-63."""
        leading = self.e.cfg.bk * ROW_BYTES if not self.kmajor else 16
        fields = (leading >> 4) << 16 | (ATOM_BYTES >> 4) << 32 | 1 << 62
        start = b.lshr(b.and_(address, ir.Constant(I64, 0x3FFFF)), ir.Constant(I64, 4))
        return b.or_(start, ir.Constant(I64, fields))

    def step_bytes(self, kk: int) -> int:
        """Bytes from the tile's start to k-step kk (16 k-values): along the row (k-major) or 16 rows down."""
        return kk * 32 if self.kmajor else kk * 16 * ROW_BYTES

    def warpgroup_bytes(self) -> int:
        """Bytes from the tile's start to the next 64 x-values (a warpgroup's share of A)."""
        return 64 * ROW_BYTES if self.kmajor else self.e.cfg.bk * ROW_BYTES


class _Wgmma:
    """The warpgroup MMA instructions as inline PTX and the NVVM wgmma fence/commit/wait intrinsics."""

    def __init__(self, e: _Emitter, cfg: MmaConfig, trans_a: bool, trans_b: bool):
        self.e, self.b, self.module = e, e.b, e.module
        self.acc_count = 64 * cfg.bn // WARPGROUP
        n = self.acc_count
        registers = ", ".join(f"${i}" for i in range(n))
        dtype = cfg.in_dtype
        asm = ("{\n.reg .pred p;\n"
               f"setp.ne.b32 p, ${n + 2}, 0;\n"
               f"wgmma.mma_async.sync.aligned.m64n{cfg.bn}k16.f32.{dtype}.{dtype} {{{registers}}}, ${n}, ${n + 1}, "
               f"p, 1, 1, {int(trans_a)}, {int(trans_b)};\n}}")
        constraints = ",".join(["=f"] * n + ["l", "l", "r"] + [str(i) for i in range(n)])
        result = ir.LiteralStructType([F32] * n)
        self.mma_asm = ir.InlineAsm(ir.FunctionType(result, [I64, I64, I32] + [F32] * n), asm, constraints,
                                    side_effect=True)
        # an identity that the compiler cannot move above the wait: the accumulators are read only after it
        self.hold_asm = ir.InlineAsm(ir.FunctionType(result, [F32] * n), "", ",".join(
            ["=f"] * n + [str(i) for i in range(n)]), side_effect=True)

    def mma(self, desc_a: Any, desc_b: Any, acc: list[Any]) -> list[Any]:
        b = self.b
        value = b.call(self.mma_asm, [desc_a, desc_b, ir.Constant(I32, 1), *acc])
        return [b.extract_value(value, i) for i in range(self.acc_count)]

    def fence(self) -> None:
        self.b.call(_declare(self.module, "llvm.nvvm.wgmma.fence.sync.aligned", ir.VoidType(), []), [])

    def commit(self) -> None:
        self.b.call(_declare(self.module, "llvm.nvvm.wgmma.commit_group.sync.aligned", ir.VoidType(), []), [])

    def wait(self, pending: int) -> None:
        self.b.call(_declare(self.module, "llvm.nvvm.wgmma.wait_group.sync.aligned", ir.VoidType(), [I64]),
                    [ir.Constant(I64, pending)])

    def held(self, acc: list[Any]) -> list[Any]:
        value = self.b.call(self.hold_asm, acc)
        return [self.b.extract_value(value, i) for i in range(self.acc_count)]

    def proxy_fence(self) -> None:
        """Make this thread's cp.async writes (generic proxy) visible to the tensor cores (async proxy)."""
        fence = ir.InlineAsm(ir.FunctionType(ir.VoidType(), []), "fence.proxy.async.shared::cta;", "~{memory}",
                             side_effect=True)
        self.b.call(fence, [])


def emit_wgmma(kernel: Any, cfg: MmaConfig, a_name: str, b_name: str, c_name: str) -> None:
    """The kernel body (block = 2 warpgroups, grid = (n tiles, m tiles, batch)). k-tile t: wait for its copies,
    fence them to the async proxy, barrier, start the copies of tile t + stages - 2 into the buffer of tile t - 2
    (every warpgroup finished that one before the barrier), issue its BK/16 wgmmas, and wait for those of tile
    t - 1: the tensor cores always have the next tile's work queued."""
    from .loops import loop_carry

    module = kernel.owner.module
    module.add_named_metadata("nvvm.annotations", module.add_metadata([kernel.function, "maxntidx",
                                                                       ir.Constant(I32, cfg.threads)]))
    module.add_named_metadata("nvvm.annotations", module.add_metadata([kernel.function, "minctasm",
                                                                       ir.Constant(I32, 1)]))
    e = _Emitter(kernel, cfg)
    module.globals[SHARED_SYMBOL].align = ATOM_BYTES  # the swizzle pattern is anchored at 1024-byte boundaries
    b, c64 = e.b, e.c64
    tile_a = _SwizzledTile(e, "a", cfg.m, cfg.bm, cfg.a_strides, 0)
    tile_b = _SwizzledTile(e, "b", cfg.n, cfg.bn, cfg.b_strides, cfg.bm * cfg.bk * 2)
    wg = _Wgmma(e, cfg, not tile_a.kmajor, not tile_b.kmajor)
    m0, n0 = block_origin(kernel, cfg)
    z = kernel.special("ctaid.z")
    load = stage_loader(kernel, cfg, (tile_a, tile_b), (a_name, b_name), (m0, n0), z)

    tiles = math.ceil(cfg.k / cfg.bk)
    ahead = cfg.stages - 2
    for s in range(ahead):
        if s < tiles:
            load(c64(s))
        e.commit()
    warpgroup = b.zext(b.lshr(e.tid32, e.c32(7)), I64)
    shared_base = b.ptrtoint(e.shared_base, I64)
    a_offset = b.add(shared_base, b.add(b.mul(warpgroup, c64(tile_a.warpgroup_bytes())), c64(tile_a.offset)))
    b_offset = b.add(shared_base, c64(tile_b.offset))
    zero = ir.Constant(F32, 0.0)
    state = [zero] * wg.acc_count
    with loop_carry(b, 0, tiles, state, name="ktile") as (t, acc, following):
        acc = list(acc)
        e.wait(ahead - 1)
        wg.proxy_fence()
        kernel.barrier()
        upcoming = b.add(t, c64(ahead))
        with b.if_then(b.icmp_signed("<", upcoming, c64(tiles))):
            load(upcoming)
        e.commit()
        stage = b.mul(b.urem(t, c64(cfg.stages)), c64(cfg.stage_bytes))
        desc_a = tile_a.descriptor(b, b.add(a_offset, stage))
        desc_b = tile_b.descriptor(b, b.add(b_offset, stage))
        wg.fence()
        for kk in range(cfg.bk // 16):
            acc = wg.mma(b.add(desc_a, c64(tile_a.step_bytes(kk) >> 4)),
                         b.add(desc_b, c64(tile_b.step_bytes(kk) >> 4)), acc)
        wg.commit()
        wg.wait(1)
        following.extend(acc)
    wg.wait(0)
    result = wg.held(state)
    e.wait(0)
    if _can_stage(cfg):
        _staged_store(e, cfg, kernel, kernel.pointer(c_name), result, m0, n0, z)
    else:
        _store(e, cfg, kernel.pointer(c_name), result, m0, n0, z)
