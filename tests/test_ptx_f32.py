"""The f32/f64 FMA GEMM of the `ptx` target without a GPU: the tile rule picks the measured configurations, the
kernels assemble with ptxas inside their register budget (launch bounds), outputs are stored as 16-byte vectors
where alignment allows, double-buffered tiles use two shared buffers, and bad configurations are refused."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_gpu_codegen import PTXAS, ptxas

import einfold
from einfold.backends.llvm.ptx import BLOCK, GemmConfig
from einfold.backends.llvm.scalars import scalar
from einfold.driver import spec_program


def choose(batch: int, m: int, n: int, k: int, dtype: str = "f32") -> GemmConfig:
    sc = scalar(einfold.dtypes.dtype(dtype))
    return GemmConfig.choose((batch, m, n, k), sc, sc, (m * k, k, 1), (k * n, n, 1), (m * n, n, 1))


def compile_gemm(spec: str, shapes: list[tuple[int, ...]], dtype: str = "f32"):
    return einfold.compile(spec_program(spec, shapes, dtype), target="ptx")


def ptxas_report(ptx: str, tmp_path: Path) -> dict[str, tuple[int, int]]:
    """(registers, spill-store bytes) per kernel, from `ptxas -v`."""
    assert PTXAS is not None, "ptxas (CUDA toolkit) is needed by these tests; put it on PATH"
    source = tmp_path / "kernel.ptx"
    source.write_text(ptx)
    result = subprocess.run([PTXAS, "-arch=sm_90", "-v", str(source), "-o", str(tmp_path / "kernel.cubin")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report, spills, name = {}, {}, None
    for line in result.stderr.splitlines():
        if found := re.search(r"Compiling entry function '(\w+)'", line):
            name = found.group(1)
        if found := re.search(r"(\d+) bytes spill stores", line):
            spills[name] = int(found.group(1))
        if found := re.search(r"Used (\d+) registers", line):
            report[name] = (int(found.group(1)), spills.get(name, 0))
    return report


# ----- the tile rule ---------------------------------------------------------------------------------------------

def test_rule_large_f32_gemm_gets_128_tiles_with_launch_bounds():
    for extents in ((1, 4096, 4096, 4096), (64, 512, 512, 512), (128, 1024, 1024, 64), (1, 262144, 256, 512)):
        cfg = choose(*extents)
        assert (cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn) == (128, 128, 16, 8, 8), extents
        assert (cfg.stages, cfg.min_blocks, cfg.warp_rows, cfg.splits) == (1, 2, 4, 1), extents


def test_rule_narrow_output_gets_128x64_double_buffered_tiles_and_split_k():
    cfg = choose(1, 512, 64, 262144)  # MTTKRP's GEMM
    assert (cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn, cfg.stages, cfg.min_blocks) == (128, 64, 16, 8, 4, 2, 3)
    assert cfg.splits == 66 and cfg.grid == (1, 4, 66)  # 4 output tiles, two waves of 132 SMs
    assert cfg.out_dtype == "f32" and cfg.c_strides == (512 * 64, 64, 1)  # its own [m, n] partial per split
    mirrored = choose(1, 64, 512, 262144)
    assert (mirrored.bm, mirrored.bn, mirrored.tm, mirrored.tn) == (64, 128, 4, 8)


def test_rule_small_and_f64_gemms_keep_64_tiles():
    small = choose(1, 300, 260, 200)
    assert (small.bm, small.bn, small.bk, small.stages, small.min_blocks) == (64, 64, 16, 1, 0)
    wide = choose(1, 4096, 4096, 4096, "f64")
    assert (wide.bm, wide.bn, wide.bk, wide.tm, wide.tn, wide.stages) == (64, 64, 8, 4, 4, 1)


def test_invalid_configs_are_refused():
    base = choose(1, 4096, 4096, 4096)
    with pytest.raises(ValueError, match="threads"):
        GemmConfig(**{**base.__dict__, "tm": 4})  # 128x128 in 4x8 tiles would need 512 threads
    with pytest.raises(ValueError, match="shared memory"):
        GemmConfig(**{**base.__dict__, "bk": 32, "stages": 2})  # 67 KiB of static shared memory
    with pytest.raises(ValueError, match="warps"):
        GemmConfig(**{**base.__dict__, "warp_rows": 3})


# ----- generated code ---------------------------------------------------------------------------------------------

def test_large_gemm_fits_two_blocks_per_sm_and_stores_vectors(tmp_path):
    exe = compile_gemm("ij,jk->ik", [(4096, 4096), (4096, 4096)])
    ptx = exe.source("ptx")
    assert ".maxntid 256" in ptx and ".minnctapersm 2" in ptx
    assert "st.global.v4.b32" in ptx and "st.global.b32" not in ptx  # 4 adjacent columns per store
    assert "ld.global.nc.v4" in ptx
    [(registers, spilled)] = ptxas_report(ptx, tmp_path).values()
    assert registers <= 65536 // (2 * BLOCK)  # two resident blocks of 256 threads
    assert spilled <= 32  # the cap costs at most a few spilled words (measured: 8 bytes)
    [launch] = exe.gpu_program().launches
    assert launch.grid == (32, 32, 1) and "128x128x16" in launch.note


def test_double_buffered_narrow_gemm_uses_two_shared_buffers(tmp_path):
    exe = compile_gemm("ij,jk->ik", [(512, 20000), (20000, 64)])
    ptx = exe.source("ptx")
    sizes = {name: int(size) for name, size in re.findall(r"\.shared \.align 16 \.b8 (\w+)\[(\d+)\]", ptx)}
    assert sizes == {"k0_gemm_a": 2 * 16 * (128 + 4) * 4, "k0_gemm_b": 2 * 16 * (64 + 4) * 4}
    assert ".minnctapersm 3" in ptx
    report = ptxas_report(ptx, tmp_path)
    assert report["k0_gemm"][0] <= 65536 // (3 * BLOCK) and report["k0_gemm"][1] == 0
    notes = [launch.note for launch in exe.gpu_program().launches]
    assert "2 stages" in notes[0] and "k split" in notes[0] and notes[1].startswith("sum")


def test_ragged_columns_store_scalars_and_f64_stores_pairs(tmp_path):
    odd = compile_gemm("ij,jk->ik", [(3000, 257), (257, 259)]).source("ptx")
    assert "st.global.v" not in odd and "st.global.b32" in odd  # n = 259: no aligned vectors
    ptxas(odd, tmp_path)
    wide = compile_gemm("ij,jk->ik", [(1024, 520), (520, 1030)], "f64").source("ptx")
    assert "st.global.v2.b64" in wide or "st.global.v2.f64" in wide
    ptxas(wide, tmp_path)


def test_loads_fall_back_to_pairs_when_quads_are_not_aligned(tmp_path):
    # n = 258: rows of B start 8-byte but not 16-byte aligned, so B is read in pairs; A (k = 200) in quads
    source = compile_gemm("ij,jk->ik", [(300, 200), (200, 258)]).source("ptx")
    assert "ld.global.nc.v2" in source and "ld.global.nc.v4" in source
    odd = compile_gemm("ij,jk->ik", [(300, 200), (200, 257)]).source("ptx")
    assert "ld.global.nc.v2" not in odd  # n = 257: single elements
    ptxas(source, tmp_path)


def test_suite_f32_cases_assemble(tmp_path):
    cases = {"bhqd,bhkd->bhqk": [(8, 16, 1024, 64), (8, 16, 1024, 64)],
             "ijk,jr,kr->ir": [(512, 512, 512), (512, 64), (512, 64)],
             "bij,bjk->bik": [(3, 129, 67), (3, 67, 131)], "ki,jk->ji": [(1030, 700), (900, 1030)]}
    for spec, shapes in cases.items():
        exe = compile_gemm(spec, shapes)
        for registers, spilled in ptxas_report(exe.source("ptx"), tmp_path).values():
            assert registers <= 128 and spilled <= 32, spec
    inputs = [np.ones((2, 2), np.float32)] * 2
    with pytest.raises(einfold.RuntimeFailure):  # no GPU here: a clear einfold error, not a CuPy traceback
        compile_gemm("ij,jk->ik", [(2, 2), (2, 2)])(*inputs)
