"""The `ptx` target's tensor-core GEMM without a GPU: f16/bf16 GEMMs become mma.sync kernels fed by ldmatrix and
cp.async that assemble with ptxas, layouts and edges pick the right loads, and f32/f64 GEMMs never use tensor cores.
(Their results on a GPU are checked by benchmarks/gpu_einsum.py's check programs through tests/test_gpu_run.py.)"""

from __future__ import annotations

import re

import pytest
from test_gpu_codegen import ptxas

import einfold
from einfold.backends.llvm.ptx_mma import MmaConfig, aligned


def compiled(spec: str, shapes: list[tuple[int, ...]], dtype: str, arch: str = "sm_90") -> einfold.Executable:
    return einfold.compile(spec, shapes=shapes, dtype=dtype, target="ptx", arch=arch)


def launches(exe: einfold.Executable) -> list:
    return list(exe.gpu_program().launches)


def test_bf16_gemm_uses_mma_ldmatrix_and_cp_async_and_assembles(tmp_path):
    exe = compiled("ij,jk->ik", [(4096, 4096), (4096, 4096)], "bf16", arch="sm_80")  # sm_90 takes wgmma
    ptx = exe.source("ptx")
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx  # A is k-major: plain ldmatrix
    assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx  # B is n-major: transposed
    assert "cp.async.cg.shared.global" in ptx and "cp.async.wait_group" in ptx and "cp.async.commit_group" in ptx
    assert "fma.rn.f32" not in ptx
    ptxas(ptx, tmp_path, "sm_80")
    [launch] = launches(exe)
    assert launch.grid == (32, 16, 1) and launch.block == (256, 1, 1)  # 256x128 block tiles, 8 warps
    assert launch.shared_bytes == 3 * (256 + 128) * 32 * 2  # three k-tiles of A and B in flight
    assert "tensor cores" in launch.note and "A k-major, B n-major" in launch.note


def test_f16_gemm_uses_f16_mma_and_assembles_for_sm80(tmp_path):
    exe = compiled("ij,jk->ik", [(512, 256), (256, 384)], "f16", arch="sm_80")
    ptx = exe.source("ptx")
    assert ".target sm_80" in ptx and "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in ptx
    ptxas(ptx, tmp_path, "sm_80")


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_f32_and_f64_gemms_never_use_tensor_cores(dtype):
    ptx = compiled("ij,jk->ik", [(512, 256), (256, 384)], dtype).source("ptx")
    assert "mma.sync" not in ptx and "ldmatrix" not in ptx and "cp.async" not in ptx  # no silent TF32
    assert ("fma.rn.f32" if dtype == "f32" else "fma.rn.f64") in ptx
    assert all("tensor cores" not in launch.note for launch in launches(compiled("ij,jk->ik", [(64, 64)] * 2, dtype)))


def test_unaligned_operands_are_zero_padded_and_edges_are_masked(tmp_path):
    exe = compiled("ij,jk->ik", [(1000, 770), (770, 1030)], "bf16")
    pad_a, pad_b, gemm = launches(exe)
    assert pad_a.note.endswith("to [1, 1000, 776] for cp.async")  # k padded to a multiple of 8, A stays k-major
    assert pad_b.note.endswith("to [1, 770, 1032] for cp.async")  # n padded, B stays n-major
    assert gemm.args[:2] == (pad_a.args[1], pad_b.args[1])
    ptx = exe.source("ptx")
    # the k tail and the m/n edges read partial chunks: cp.async with a source size (zero fill)
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16, %r\d+;", ptx)
    ptxas(ptx, tmp_path)


def test_aligned_operands_are_read_in_place_with_unmasked_copies():
    exe = compiled("ij,jk->ik", [(2048, 1024), (1024, 2048)], "bf16")
    [gemm] = launches(exe)
    ptx = exe.source("ptx")
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16;", ptx)
    assert not re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16, ", ptx)
    assert gemm.args == tuple(b.name for b in exe.gpu_program().buffers)


def test_transposed_layouts_swap_plain_and_transposing_ldmatrix(tmp_path):
    # A = x0[k, m] is m-major (ldmatrix.trans), B = x1[n, k] is k-major (plain ldmatrix)
    exe = compiled("ki,jk->ij", [(520, 392), (264, 520)], "f16")
    [gemm] = launches(exe)
    assert "A m-major, B k-major" in gemm.note
    ptx = exe.source("ptx")
    assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx and "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx
    ptxas(ptx, tmp_path)


def test_batched_gemm_runs_one_grid_layer_per_batch(tmp_path):
    exe = compiled("bij,bjk->bik", [(64, 512, 512), (64, 512, 512)], "bf16", arch="sm_80")  # sm_90 takes wgmma
    [gemm] = launches(exe)
    assert gemm.grid == (4, 2, 64) and "64x512x512x512 bf16 on tensor cores" in gemm.note
    ptxas(exe.source("ptx"), tmp_path, "sm_80")


def test_strided_output_is_stored_in_place_and_a_split_group_through_a_temporary():
    [gemm] = launches(compiled("bij,bjk->ibk", [(4, 64, 32), (4, 32, 48)], "bf16"))  # C strides (48, 192, 1)
    assert "4x64x48x32 bf16 on tensor cores" in gemm.note
    gemm, unpack = launches(compiled("ij,jkl->kil", [(64, 32), (32, 8, 16)], "bf16"))  # n = (k, l) is split by i
    assert "tensor cores" in gemm.note and unpack.note.endswith("[acd] -> [cad]")


def test_tile_choice_fills_the_gpu():
    assert MmaConfig.tuning((1, 4096, 4096, 4096))["bm"] == 256
    assert MmaConfig.tuning((1, 2048, 2048, 64)) == {"bm": 128, "bn": 128, "warps_m": 2, "warps_n": 2}
    assert MmaConfig.tuning((1, 1000, 1030, 770))["bm"] == 64
    [launch] = launches(compiled("ij,jk->ik", [(70, 48), (48, 96)], "bf16"))
    assert launch.block == (128, 1, 1) and launch.grid == (2, 2, 1)


def test_cp_async_alignment_rule():
    assert aligned((0, 4096, 1), "a") and aligned((0, 1, 4096), "a")  # k-major, m-major
    assert not aligned((0, 770, 1), "a")  # rows do not start on 16 bytes
    assert not aligned((0, 3, 5), "b")  # nothing contiguous
    assert aligned((4096 * 64, 4096, 1), "b") and not aligned((12, 16, 1), "b")  # batch stride counts too


def test_unsupported_tile_is_refused():
    with pytest.raises(ValueError, match="unsupported tensor-core tile"):
        MmaConfig(1, 64, 64, 64, (0, 64, 1), (0, 64, 1), (0, 64, 1), "bf16", "bf16", bk=48)
