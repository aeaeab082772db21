"""GPU code generation without a GPU: PTX from the `ptx` target assembles with ptxas, `--emit ptx` prints it,
the launch plan and its JSON/npz form are right, and running without a GPU fails with a clear einfold error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import einfold
from einfold.backends.cupy_runtime import GpuProgram

ROOT = Path(__file__).resolve().parent.parent
PTXAS = shutil.which("ptxas")


def ptxas(ptx: str, tmp_path: Path, arch: str = "sm_90") -> None:
    """Assemble PTX into a cubin; fail the test with ptxas's message when it does not assemble."""
    assert PTXAS is not None, "ptxas (CUDA toolkit) is needed by these tests; put it on PATH"
    source = tmp_path / "kernel.ptx"
    source.write_text(ptx)
    result = subprocess.run([PTXAS, f"-arch={arch}", str(source), "-o", str(tmp_path / "kernel.cubin")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kernel.cubin").stat().st_size > 0


def mlp_program(batch: int = 20, d_in: int = 24, hidden: int = 36) -> einfold.Program:
    """exp(-tanh(x W + b)) and x itself: a GEMM with a fused epilogue, maps and a repeated output."""
    rng = np.random.default_rng(0)
    p = einfold.Program("mlp")
    x = p.input("x", (batch, d_in))
    w = p.const("w", rng.standard_normal((d_in, hidden)).astype(np.float32))
    b = p.const("b", rng.standard_normal(hidden).astype(np.float32))
    h = p.map("tanh", p.add(p.einsum("bi,ih->bh", x, w), b))
    p.set_outputs(p.map("exp", p.neg(h)), x)
    return p


def test_gemm_ptx_assembles_and_uses_shared_memory_tiles(tmp_path):
    exe = einfold.compile("ij,jk->ik", shapes=[(300, 200), (200, 260)], target="ptx")
    ptx = exe.source("ptx")
    assert ".target sm_90" in ptx and ".entry k0_gemm" in ptx
    assert ".shared" in ptx and "bar.sync" in ptx and "fma.rn.f32" in ptx
    ptxas(ptx, tmp_path)
    [launch] = exe.gpu_program().launches
    assert launch.grid == (5, 5, 1) and launch.block == (256, 1, 1)  # 64x64 block tiles cover 300x260


def test_elementwise_math_links_libdevice_and_assembles_for_sm80(tmp_path):
    exe = einfold.compile(mlp_program(), target="ptx", arch="sm_80")
    ptx = exe.source("ptx")
    assert ".target sm_80" in ptx
    assert ".extern .func" not in ptx  # libdevice's tanh and exp are linked in, nothing left to resolve
    ptxas(ptx, tmp_path, "sm_80")
    kinds = [launch.note for launch in exe.gpu_program().launches]
    assert any("map tanh" in note for note in kinds) and any("map exp" in note for note in kinds)
    assert any(note.startswith("copy") for note in kinds)  # the output that is an input is copied


def test_non_contiguous_operand_is_packed_before_the_gemm():
    exe = einfold.compile("akj,ia->ijk", shapes=[(40, 30, 20), (50, 40)], target="ptx")
    notes = [launch.note for launch in exe.gpu_program().launches]
    assert len(notes) == 2 and notes[0].startswith("pack") and "as GEMM" in notes[1]


def test_reduction_is_a_loop_nest_per_output_element():
    exe = einfold.compile("ijk->j", shapes=[(6, 7, 8)], target="ptx")
    [launch] = exe.gpu_program().launches
    assert "loop nest" in launch.note and launch.grid == (1, 1, 1)


def test_running_without_a_gpu_says_so():
    exe = einfold.compile("ij,jk->ik", shapes=[(8, 8), (8, 8)], target="ptx")
    ones = np.ones((8, 8), np.float32)
    with pytest.raises(einfold.RuntimeFailure, match="no CUDA GPU present"):
        exe(ones, ones)


def test_gpu_program_round_trips_through_json_and_npz(tmp_path):
    gpu = einfold.compile(mlp_program(), target="ptx").gpu_program()
    loaded = GpuProgram.load(gpu.save(tmp_path))
    assert loaded == gpu  # everything but the constants compares
    assert set(loaded.constants) == set(gpu.constants)
    for name, data in gpu.constants.items():
        np.testing.assert_array_equal(loaded.constants[name], data)


def test_bf16_buffers_are_stored_as_uint16_bits():
    gpu = einfold.compile("ij,jk->ik", shapes=[(16, 16), (16, 16)], dtype="bf16", target="ptx").gpu_program()
    assert {b.dtype for b in gpu.buffers} == {"uint16"} and {b.logical for b in gpu.buffers} == {"bf16"}


def test_unsupported_dtype_and_arch_are_clear_errors():
    p = einfold.Program("modular")
    a = p.input("a", (4, 4), "zq(97)")
    p.set_outputs(p.einsum("ij,jk->ik", a, a))
    with pytest.raises(einfold.UnsupportedError, match="zq"):
        einfold.compile(p, target="ptx")
    with pytest.raises(einfold.UnsupportedError, match="sm_70"):
        einfold.compile("ij->j", shapes=[(4, 4)], target="ptx", arch="sm_70")


def test_cli_emit_ptx_prints_the_module():
    result = subprocess.run([sys.executable, "-m", "einfold", "compile", str(ROOT / "examples" / "mlp.ein"),
                             "--target", "ptx", "--emit", "ptx"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.lstrip().startswith("//") and ".version" in result.stdout and ".entry" in result.stdout


def test_only_programs_whose_kernels_can_fail_carry_an_error_flag():
    gemm = einfold.compile("ij,jk->ik", shapes=[(64, 64), (64, 64)], target="ptx").gpu_program()
    assert gemm.error_flag is None and not gemm.error_messages
    p = einfold.Program("divide")
    p.set_outputs(p.div(p.input("a", (5,), "i32"), p.input("b", (5,), "i32")))
    divide = einfold.compile(p, target="ptx").gpu_program()
    assert divide.error_flag == "einfold_error" and "st.global.b32 \t[einfold_error], 1;" in divide.source
    assert "integer division by zero" in divide.error_messages.values()


def test_long_k_with_few_output_tiles_splits_k_and_sums_partials(tmp_path):
    exe = einfold.compile("ij,jk->ik", shapes=[(64, 3000), (3000, 50)], target="ptx")
    gemm, total = exe.gpu_program().launches
    assert "k split" in gemm.note and gemm.grid[2] > 1
    assert total.note == f"sum {gemm.grid[2]} split-K partials"
    ptxas(exe.source("ptx"), tmp_path)
