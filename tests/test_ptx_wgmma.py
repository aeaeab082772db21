"""The `ptx` target's Hopper GEMM without a GPU: at sm_90, large f16/bf16 GEMMs become wgmma.mma_async kernels on
128-byte-swizzled shared-memory tiles that assemble with ptxas for sm_90a; sm_80 and small GEMMs keep mma.sync, f32
never uses tensor cores. (Their results on a GPU: the suite's bf16 GEMM case of benchmarks/gpu_einsum.py.)"""

from __future__ import annotations

import re

import pytest
from test_gpu_codegen import ptxas

import einfold
from einfold.backends.llvm.ptx_wgmma import wgmma_tuning

WGMMA = "wgmma.mma_async.sync.aligned"


def compiled(spec: str, shapes: list[tuple[int, ...]], dtype: str, arch: str = "sm_90") -> einfold.Executable:
    return einfold.compile(spec, shapes=shapes, dtype=dtype, target="ptx", arch=arch)


def launches(exe: einfold.Executable) -> list:
    return list(exe.gpu_program().launches)


def test_bf16_4096_gemm_uses_wgmma_and_assembles_for_sm90a(tmp_path):
    exe = compiled("ij,jk->ik", [(4096, 4096), (4096, 4096)], "bf16")
    ptx = exe.source("ptx")
    assert ".target sm_90a" in ptx and exe.gpu_program().arch == "sm_90a"
    # A k-major (no transpose), B n-major (transposed): the last two immediates
    assert len(re.findall(rf"{WGMMA}\.m64n256k16\.f32\.bf16\.bf16 \{{(%r\d+, ){{127}}%r\d+\}}, %rd\d+, %rd\d+, p, "
                          r"1, 1, 0, 1;", ptx)) == 4  # four k-steps of 16 per 64-deep k-tile
    for needed in ("wgmma.fence.sync.aligned", "wgmma.commit_group.sync.aligned", "wgmma.wait_group.sync.aligned",
                   "fence.proxy.async.shared::cta", "cp.async.cg.shared.global", ".shared .align 1024"):
        assert needed in ptx, needed
    assert "mma.sync" not in ptx and "ldmatrix" not in ptx
    # descriptors: 128-byte swizzle, 1024-byte atoms; k-major A has no leading offset, n-major B one of 64 rows
    assert str(1 << 62 | 64 << 32 | 1 << 16) in ptx and str(1 << 62 | 64 << 32 | 512 << 16) in ptx
    ptxas(ptx, tmp_path, "sm_90a")
    [launch] = launches(exe)
    assert launch.grid == (16, 32, 1) and launch.block == (256, 1, 1)  # 128x256 tiles, two warpgroups
    assert launch.shared_bytes == 4 * (128 + 256) * 64 * 2
    assert "wgmma m64n256k16" in launch.note and "A k-major, B n-major" in launch.note


def test_f16_transposed_operands_set_the_transpose_flags(tmp_path):
    exe = compiled("ki,jk->ij", [(1024, 3072), (3072, 1024)], "f16")  # A = x0[k, m] m-major, B = x1[n, k] k-major
    ptx = exe.source("ptx")
    assert re.search(rf"{WGMMA}\.m64n256k16\.f32\.f16\.f16 .*, p, 1, 1, 1, 0;", ptx)
    assert "A m-major, B k-major" in launches(exe)[0].note
    ptxas(ptx, tmp_path, "sm_90a")


def test_mid_sized_gemm_takes_128x128_tiles(tmp_path):
    exe = compiled("ij,jk->ik", [(2048, 1024), (1024, 2048)], "bf16")  # 128x256 tiles: 128 blocks < 132 SMs
    [launch] = launches(exe)
    assert launch.grid == (16, 16, 1) and launch.shared_bytes == 6 * (128 + 128) * 64 * 2
    ptx = exe.source("ptx")
    assert f"{WGMMA}.m64n128k16.f32.bf16.bf16" in ptx
    ptxas(ptx, tmp_path, "sm_90a")


def test_ragged_gemm_pads_operands_and_masks_copies(tmp_path):
    exe = compiled("ij,jk->ik", [(2000, 1030), (1030, 3000)], "bf16")
    pad_a, gemm = launches(exe)  # k = 1030 rows are not 16-byte aligned: A is packed; B (n-major, n = 3000) is not
    assert pad_a.note.endswith("to [1, 2000, 1032] for cp.async") and gemm.args[0] == pad_a.args[1]
    assert gemm.grid == (12, 16, 1) and "wgmma" in gemm.note
    ptx = exe.source("ptx")
    # the k tail and the m/n edges copy partial chunks: cp.async with a source size (the rest zero-filled)
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16, %r\d+;", ptx)
    ptxas(ptx, tmp_path, "sm_90a")


def test_batched_gemm_runs_one_grid_layer_per_batch(tmp_path):
    exe = compiled("bij,bjk->bik", [(64, 512, 512), (64, 512, 512)], "bf16")
    [gemm] = launches(exe)
    assert gemm.grid == (2, 4, 64) and "64x512x512x512 bf16 on tensor cores (wgmma" in gemm.note
    ptxas(exe.source("ptx"), tmp_path, "sm_90a")


def test_explicit_sm90a_arch_is_accepted():
    ptx = compiled("ij,jk->ik", [(4096, 4096), (4096, 4096)], "f16", arch="sm_90a").source("ptx")
    assert ".target sm_90a" in ptx and f"{WGMMA}.m64n256k16.f32.f16.f16" in ptx


def test_sm80_never_gets_wgmma():
    exe = compiled("ij,jk->ik", [(4096, 4096), (4096, 4096)], "bf16", arch="sm_80")
    ptx = exe.source("ptx")
    assert ".target sm_80" in ptx and "wgmma" not in ptx and "mma.sync.aligned.m16n8k16" in ptx
    assert exe.gpu_program().arch == "sm_80"


def test_small_gemm_keeps_mma_sync_and_plain_sm90():
    exe = compiled("ij,jk->ik", [(1000, 770), (770, 1030)], "bf16")  # 72 blocks of 128x128: too few for wgmma tiles
    ptx = exe.source("ptx")
    assert "wgmma" not in ptx and "mma.sync.aligned.m16n8k16" in ptx
    assert re.search(r"\.target sm_90\s", ptx) and exe.gpu_program().arch == "sm_90"


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_f32_and_f64_gemms_never_use_tensor_cores(dtype):
    exe = compiled("ij,jk->ik", [(4096, 4096), (4096, 4096)], dtype)
    ptx = exe.source("ptx")
    assert "wgmma" not in ptx and "mma.sync" not in ptx and "ldmatrix" not in ptx  # no silent TF32
    assert ("fma.rn.f32" if dtype == "f32" else "fma.rn.f64") in ptx and re.search(r"\.target sm_90\s", ptx)


def test_tile_choice_fills_the_gpu():
    assert wgmma_tuning((1, 4096, 4096, 4096))["bn"] == 256
    assert wgmma_tuning((64, 512, 512, 512))["bn"] == 256
    assert wgmma_tuning((1, 2048, 2048, 64))["bn"] == 128
    assert wgmma_tuning((1, 1000, 1030, 770)) is None
