"""The `cuda` target's tensor-core GEMMs without a GPU: f16/bf16 GEMM-shaped einsums are tensorized into wmma
16x16x16 tiles (`--emit cuda` shows `wmma::mma_sync`, nvcc turns it into `wmma.mma.sync` PTX), batched and with a
fused epilogue; f32 GEMMs and f16 GEMMs whose k does not split into 16s keep the SIMT schedule. Numerical checks
against numpy run on the H100 (the CPU emulator of test_cuda_codegen has no tensor cores)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cuda_codegen import check_plan, nvcc_ptx

import einfold

pytest.importorskip("tvm")

from einfold.backends.tvm.gpu_tensorcore import MARK, WarpTiling, tensor_core_dtype, warp_tiling  # noqa: E402
from einfold.backends.tvm.lower_te import Stage  # noqa: E402
from einfold.backends.tvm.schedules import GemmTiling  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HALF_GEMM = """program half_gemm
dim m = 2048, k = 256, n = 1536
input a: f16[m, k]
input b: f16[k, n]
c = einsum("mk,kn->mn", a, b)
return c
"""


def compile_cuda(source: object, **options: object) -> einfold.Executable:
    return einfold.compile(source, target="cuda", ship="cuda", **options)


def test_emit_cuda_of_an_f16_gemm_uses_tensor_cores(tmp_path):
    path = tmp_path / "half_gemm.ein"
    path.write_text(HALF_GEMM)
    result = subprocess.run([sys.executable, "-m", "einfold", "compile", str(path), "--target", "cuda",
                             "--option", "ship=cuda", "--emit", "cuda"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    source = result.stdout
    assert "nvcuda::wmma::mma_sync" in source and "nvcuda::wmma::load_matrix_sync" in source
    assert "nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, half" in source
    assert "nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>" in source
    assert "extern __shared__" in source  # operand slices and accumulators staged in dynamic shared memory
    ptx = nvcc_ptx(source, tmp_path)
    assert re.search(r"wmma\.mma\.sync\.aligned\.row\.row\.m16n16k16\.f32\.f32", ptx)
    assert "wmma.load.a.sync.aligned.row.m16n16k16.shared.f16" in ptx  # fragments come from shared memory
    assert "st.shared.v4" in ptx  # operand slices staged 16 bytes per thread


def test_large_f16_gemm_plan_uses_4_warps_and_dynamic_shared_memory():
    exe = compile_cuda(HALF_GEMM)
    pack_a, pack_b, gemm = exe.gpu_program().launches
    assert "tensor-core GEMM 128x128x64 (float16 wmma 16x16x16, f32 accumulators), 2x2 warps of 64x64" in gemm.note
    assert "writes c through shared memory" in gemm.note
    assert gemm.grid == (16 * 12, 1, 1) and gemm.block == (32, 4, 1)
    assert gemm.shared_bytes == 128 * 128 * 4  # the f32 accumulator tile; the operand slices reuse its memory
    buffers = {b.name: b for b in exe.gpu_program().buffers}
    assert buffers[pack_a.args[1]].dtype == "float16" and buffers[pack_b.args[1]].dtype == "float16"
    assert MARK not in exe.ir("tvm-tir")  # every marked block got its intrinsic


def test_batched_bf16_gemm_with_transposed_operand_compiles(tmp_path):
    exe = compile_cuda("bqd,bkd->bqk", shapes=[(4, 128, 64), (4, 192, 64)], dtype="bf16")
    gpu = check_plan(exe)
    gemm = gpu.launches[-1]
    assert "tensor-core GEMM 64x64x32 (bfloat16 wmma 16x16x16" in gemm.note
    assert gemm.grid == (4 * 2 * 3, 1, 1) and gemm.block == (32, 4, 1)
    assert {b.dtype for b in gpu.buffers if b.role != "temp"} == {"uint16"}  # bf16 bits in and out
    source = exe.source("cuda")
    assert "nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, nv_bfloat16" in source
    ptx = nvcc_ptx(source, tmp_path)
    assert re.search(r"wmma\.mma\.sync\.aligned\.row\.row\.m16n16k16\.f32\.bf16\.bf16\.f32", ptx)


def test_fused_epilogue_and_two_gemms_in_one_program(tmp_path):
    rng = np.random.default_rng(0)
    p = einfold.Program("mlp_f16")
    x = p.input("x", (96, 64), "f16")
    w1 = p.const("w1", rng.uniform(-1, 1, (64, 128)).astype(np.float16))
    bias = p.const("bias", rng.uniform(-1, 1, 128).astype(np.float16))
    w2 = p.const("w2", rng.uniform(-1, 1, (128, 48)).astype(np.float16))
    h = p.map("tanh", p.add(p.einsum("bi,ih->bh", x, w1), bias))
    p.set_outputs(p.einsum("bh,ho->bo", h, w2), h)
    exe = compile_cuda(p)
    gpu = check_plan(exe)
    notes = [launch.note for launch in gpu.launches]
    tensor_core = [note for note in notes if "tensor-core GEMM" in note]
    assert len(tensor_core) == 2
    assert any("through shared memory" in note and "v2" in note for note in tensor_core)  # tanh(. + bias) fused
    assert [b.dtype for b in gpu.buffers if b.role == "output"] == ["float16", "float16"]
    source = exe.source("cuda")
    assert source.count("nvcuda::wmma::mma_sync") == 2 and "tanh" in source
    nvcc_ptx(source, tmp_path)


def test_f32_gemms_and_ragged_k_keep_the_simt_schedule(tmp_path):
    single = compile_cuda("ij,jk->ik", shapes=[(256, 128), (128, 192)])
    assert "tiled GEMM 64x64x16" in single.gpu_program().launches[-1].note
    assert "wmma" not in single.source("cuda")
    ragged = compile_cuda("ij,jk->ik", shapes=[(128, 72), (72, 128)], dtype="f16")  # k = 72: no 16 x 16 x 16 tiles
    assert "tiled GEMM" in ragged.gpu_program().launches[-1].note and "wmma" not in ragged.source("cuda")
    nvcc_ptx(ragged.source("cuda"), tmp_path)


def test_warp_tiling_and_dtype_rules():
    assert warp_tiling(128, 128, 4096) == WarpTiling(128, 128, 64, 2, 2)
    assert warp_tiling(128, 128, 96) == WarpTiling(128, 128, 32, 2, 2)
    assert warp_tiling(64, 64, 64) == WarpTiling(64, 64, 32, 2, 2) and warp_tiling(64, 64, 48).bk == 16
    assert warp_tiling(128, 128, 4096).warp_tile == (64, 64) and warp_tiling(128, 128, 4096).warps == 4
    assert warp_tiling(64, 64, 72) is None and warp_tiling(48, 64, 64) is None
    p = einfold.Program("mixed")
    a16, b16 = p.input("a", (32, 32), "f16"), p.input("b", (32, 32), "f16")
    a32 = p.input("c", (32, 32), "f32")
    half = p.einsum("ij,jk->ik", a16, b16)
    single = p.einsum("ij,jk->ik", a32, a32)
    p.set_outputs(half, single)
    tiling = GemmTiling(64, 64, 16, 1, False)
    assert tensor_core_dtype(p, Stage("g", "gemm", 1, tiling, op=half)) == "float16"
    assert tensor_core_dtype(p, Stage("g", "gemm", 1, tiling, op=single)) is None
    assert tensor_core_dtype(p, Stage("g", "gemm", 1, GemmTiling(64, 64, 16, 1, True), op=half)) is None
