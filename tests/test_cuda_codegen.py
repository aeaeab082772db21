"""The `cuda` target without a GPU: TVM's CUDA source from our GPU schedules compiles with `nvcc --ptx` for GEMM,
batched, attention, reduction, MLP-with-epilogue, f16/bf16 and c64 programs; the launch plan agrees with the
kernels' signatures; `--emit cuda` prints the source; running without a GPU fails with a clear einfold error."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_gpu_codegen import mlp_program as gpu_mlp_program

import einfold
from einfold.backends.cupy_runtime import GpuProgram

pytest.importorskip("tvm")

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")
KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\((\d+)\) )?(\w+)\(([^)]*)\)\s*\{')
SHARED = re.compile(r"__shared__ (?:alignas\(\d+\) )?([a-z]+)(\d?) \w+\[(\d+)\];")  # type, vector lanes, length
ITEMSIZE = {"float": 4, "half": 2, "double": 8, "int": 4, "uint": 4, "ushort": 2, "uchar": 1, "char": 1}


# ----- a CPU emulator of the generated CUDA (slow test): every CUDA thread of a block is a host thread,
# __syncthreads a barrier, __shared__ arrays statics (blocks run one after another), warp shuffles an exchange.
EMULATOR = r'''
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <thread>
#include <barrier>
#include <vector>
#include <functional>
#include <memory>
#include <algorithm>
using std::min; using std::max;
struct Dim { int x = 0, y = 0, z = 0; };
thread_local Dim threadIdx, blockIdx;
static std::barrier<>* g_block_barrier;
struct Warp { std::unique_ptr<std::barrier<>> bar; unsigned long long slot[32]; int size; };
static std::vector<Warp> g_warps;
#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(n)
#define __restrict__
#define __forceinline__ inline
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline unsigned __activemask() { return 0xffffffffu; }
template <class T> T __shfl_down_sync(unsigned, T v, int delta, int width) {
  Warp& w = g_warps[threadIdx.x / 32]; int lane = threadIdx.x % 32;
  std::memcpy(&w.slot[lane], &v, sizeof(T)); w.bar->arrive_and_wait();
  T r = v;
  if ((lane % width) + delta < width && lane + delta < w.size)
    std::memcpy(&r, &w.slot[lane + delta], sizeof(T));
  w.bar->arrive_and_wait(); return r; }
template <class T> T __shfl_sync(unsigned, T v, int src, int width) {
  Warp& w = g_warps[threadIdx.x / 32]; int lane = threadIdx.x % 32;
  std::memcpy(&w.slot[lane], &v, sizeof(T)); w.bar->arrive_and_wait();
  T r; std::memcpy(&r, &w.slot[(lane / width) * width + src % width], sizeof(T));
  w.bar->arrive_and_wait(); return r; }
struct alignas(8) float2 { float x, y; }; struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; }; struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) int2 { int x, y; }; struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; }; struct alignas(16) longlong2 { long long x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float v) { int f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float v) { unsigned f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
struct AnyPtr { void* p; template <class T> operator T*() const { return (T*)p; } };
static void launch(int grid, int block, const std::function<void()>& body) {
  for (int b = 0; b < grid; ++b) {
    std::barrier<> bar(block); g_block_barrier = &bar;
    g_warps.clear(); g_warps.resize((block + 31) / 32);
    for (size_t w = 0; w < g_warps.size(); ++w) {
      g_warps[w].size = std::min(32, block - int(w) * 32);
      g_warps[w].bar = std::make_unique<std::barrier<>>(g_warps[w].size);
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < block; ++t) threads.emplace_back([&, t, b] { threadIdx.x = t; blockIdx.x = b; body(); });
    for (auto& th : threads) th.join();
  }
}
'''


def emulate(gpu: GpuProgram, cuda_source: str, inputs: list[np.ndarray], folder: Path) -> tuple[list[np.ndarray], str]:
    """Run the GPU program's CUDA C on the CPU (g++ -std=c++20); returns the outputs and what main printed."""
    source = cuda_source[cuda_source.find("#ifdef _WIN32"):]  # TVM's preamble includes CUDA headers
    source = re.sub(r"__shared__ alignas\((\d+)\)", r"alignas(\1) static", source)
    source = source.replace('extern "C" { __device__ int einfold_error; }', "int einfold_error;")
    given = {**dict(zip(gpu.inputs, inputs)), **gpu.constants}
    lines = ["int main() {"]
    c = {b.name: re.sub(r"\W", "_", b.name) for b in gpu.buffers}  # C names (TVM's split-K partials: "v0_gemm.rf")
    for b in gpu.buffers:
        nbytes = math.prod(b.shape) * np.dtype(b.dtype).itemsize
        lines.append(f"  std::vector<unsigned char> {c[b.name]}({nbytes} + 80);")
        lines.append(f"  void* p_{c[b.name]} = (void*)(((uintptr_t){c[b.name]}.data() + 63) & ~uintptr_t(63));")
        if b.name in given:
            (folder / f"{c[b.name]}.bin").write_bytes(np.ascontiguousarray(given[b.name]).tobytes())
            lines.append(f'  {{ FILE* f = fopen("{folder}/{c[b.name]}.bin", "rb"); '
                         f"fread(p_{c[b.name]}, 1, {nbytes}, f); fclose(f); }}")
    for launch in gpu.launches:
        assert launch.grid[1:] == (1, 1) and launch.block[1:] == (1, 1)
        args = ", ".join(f"AnyPtr{{p_{c[name]}}}" for name in launch.args)
        lines.append(f"  launch({launch.grid[0]}, {launch.block[0]}, [&] {{ {launch.kernel}({args}); }});")
    for name in gpu.outputs:
        nbytes = math.prod(gpu.buffer(name).shape) * np.dtype(gpu.buffer(name).dtype).itemsize
        lines.append(f'  {{ FILE* f = fopen("{folder}/{c[name]}.out", "wb"); fwrite(p_{c[name]}, 1, {nbytes}, f); '
                     "fclose(f); }")
    if gpu.error_flag:
        lines.append('  printf("error %d\\n", einfold_error);')
    lines.append("  return 0;\n}")
    (folder / "emulated.cpp").write_text(EMULATOR + source + "\n" + "\n".join(lines))
    build = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-w", str(folder / "emulated.cpp"), "-o",
                            str(folder / "emulated")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[:3000]
    result = subprocess.run([str(folder / "emulated")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    outputs = [np.fromfile(folder / f"{c[name]}.out", dtype=gpu.buffer(name).dtype).reshape(gpu.buffer(name).shape)
               for name in gpu.outputs]
    return outputs, result.stdout


def nvcc_ptx(source: str, tmp_path: Path, arch: str = "sm_90") -> str:
    """Compile CUDA C to PTX with nvcc; fail the test with nvcc's message when it does not compile."""
    assert NVCC is not None, "nvcc (CUDA toolkit) is needed by these tests; put it on PATH"
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    result = subprocess.run([NVCC, f"-arch={arch}", "--ptx", "-std=c++17", str(path), "-o", str(tmp_path / "k.ptx")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return (tmp_path / "k.ptx").read_text()


def kernels(source: str) -> dict[str, tuple[int | None, int, str]]:
    """Each kernel definition: its launch bound, its number of parameters and its body."""
    found = {}
    for match in KERNEL.finditer(source):
        body_end = source.find("\n}\n", match.end())
        params = [p for p in match.group(3).split(",") if p.strip()]
        found[match.group(2)] = (int(match.group(1)) if match.group(1) else None, len(params),
                                 source[match.end():body_end])
    return found


def check_plan(exe: einfold.Executable) -> GpuProgram:
    """Every launch names a kernel of the source with as many pointer parameters as it passes buffers, blocks
    within the kernel's launch bound, static shared memory within 48 KiB, and buffers the plan declares."""
    gpu = exe.gpu_program()
    defined = kernels(exe.source("cuda"))
    names = {b.name for b in gpu.buffers}
    for launch in gpu.launches:
        bound, params, body = defined[launch.kernel]
        assert params == len(launch.args), launch
        assert set(launch.args) <= names
        threads = math.prod(launch.block)
        assert 1 <= threads <= (bound or 1024) and min(launch.grid) >= 1
        shared = sum(ITEMSIZE[t] * int(lanes or 1) * int(n) for t, lanes, n in SHARED.findall(body))
        assert shared + launch.shared_bytes <= 48 * 1024
    assert set(gpu.inputs) == {b.name for b in gpu.buffers if b.role == "input"}
    assert set(gpu.outputs) == {b.name for b in gpu.buffers if b.role == "output"}
    return gpu


def compile_cuda(source: object, **options: object) -> einfold.Executable:
    return einfold.compile(source, target="cuda", ship="cuda", **options)


def mlp_program() -> einfold.Program:
    return gpu_mlp_program(200, 96, 160)


def test_gemm_is_shared_memory_tiled_and_ships_ptx(tmp_path):
    exe = einfold.compile("ij,jk->ik", shapes=[(300, 200), (200, 260)], target="cuda")
    gpu = check_plan(exe)
    assert gpu.source_kind == "ptx" and ".target sm_90" in gpu.source and ".shared" in gpu.source
    pack_a, pack_b, gemm = gpu.launches
    assert "tiled GEMM 64x64x16" in gemm.note and gemm.grid == (25, 1, 1) and gemm.block == (256, 1, 1)
    assert pack_a.note.endswith("one thread per element") and pack_b.note.endswith("one thread per element")
    body = kernels(exe.source("cuda"))[gemm.kernel][2]
    assert "__syncthreads()" in body and "*(float4*)" in body  # staged with 16-byte loads
    assert "local_ptr[" in body and "writes v0 from registers" in gemm.note
    nvcc_ptx(exe.source("cuda"), tmp_path)


def test_large_gemm_takes_128_tiles(tmp_path):
    exe = compile_cuda("ij,jk->ik", shapes=[(2048, 256), (256, 1536)])
    gemm = check_plan(exe).launches[-1]
    assert "tiled GEMM 128x128x8" in gemm.note and "8x8 register tile" in gemm.note
    assert gemm.grid == (16 * 12, 1, 1)


def test_batched_and_attention_gemms_compile(tmp_path):
    batched = compile_cuda("bij,bjk->bik", shapes=[(4, 64, 96), (4, 96, 80)])
    assert check_plan(batched).launches[-1].grid == (4 * 1 * 2, 1, 1)
    attention = compile_cuda("bhqd,bhkd->bhqk", shapes=[(2, 2, 64, 32), (2, 2, 96, 32)])
    gemm = check_plan(attention).launches[-1]
    assert "from registers" in gemm.note and gemm.grid == (4 * 1 * 2, 1, 1)
    nvcc_ptx(batched.source("cuda"), tmp_path)
    nvcc_ptx(attention.source("cuda"), tmp_path)


def test_few_output_tiles_and_a_long_k_split_k(tmp_path):
    exe = compile_cuda("ijk,jr,kr->ir", shapes=[(512, 512, 512), (512, 64), (512, 64)])
    notes = exe.stats()["cuda_kernels"]
    assert any("k split 32 ways into partials" in note for note in notes)
    assert any("sum of the 32 split-K partials in order" in note for note in notes)
    nvcc_ptx(exe.source("cuda"), tmp_path)
    square = compile_cuda("ij,jk->ik", shapes=[(1024, 1024), (1024, 1024)])  # enough tiles: no split
    assert not any("split" in note for note in square.stats()["cuda_kernels"])


def test_long_reduction_spreads_each_sum_over_a_block(tmp_path):
    exe = compile_cuda("ijk->j", shapes=[(20, 30, 600)])
    reduce, copy = check_plan(exe).launches
    assert "reduction" in reduce.note and reduce.grid == (30, 1, 1) and reduce.block == (256, 1, 1)
    assert "__shfl_down_sync" in exe.source("cuda")
    short = compile_cuda("ijk->j", shapes=[(6, 7, 8)])
    assert check_plan(short).launches[0].block == (7, 1, 1)  # one thread per output
    nvcc_ptx(exe.source("cuda"), tmp_path)


def test_scalar_sum_keeps_partial_sums_inside_the_kernel():
    exe = compile_cuda("ij,ji->", shapes=[(30, 41), (41, 30)])
    gpu = check_plan(exe)
    assert {b.name for b in gpu.buffers if b.role == "temp"} == {"v0_sum"}  # no global per-thread partials


def test_mlp_epilogue_is_written_from_registers(tmp_path):
    exe = einfold.compile(mlp_program(), target="cuda", ship="cuda", arch="sm_80")
    gpu = check_plan(exe)
    notes = [launch.note for launch in gpu.launches]
    assert any("tiled GEMM" in note and "writes v4 from registers" in note for note in notes)
    assert any(note.startswith("x_out") for note in notes)  # the output that is an input is copied
    assert len(gpu.launches) == 4  # pack A, pack B, GEMM + bias + tanh + neg + exp, copy
    source = exe.source("cuda")
    assert "tanhf(" in source and "expf(" in source
    nvcc_ptx(source, tmp_path, "sm_80")


@pytest.mark.parametrize(("dtype", "storage"), [("f16", "float16"), ("bf16", "uint16"), ("c64", "complex64")])
def test_f16_bf16_and_c64_gemms_compile(tmp_path, dtype, storage):
    exe = compile_cuda("ij,jk->ik", shapes=[(70, 50), (50, 90)], dtype=dtype)
    gpu = check_plan(exe)
    assert {b.dtype for b in gpu.buffers if b.role != "temp"} == {storage}
    assert any("tiled GEMM" in launch.note for launch in gpu.launches)
    nvcc_ptx(exe.source("cuda"), tmp_path)


def test_every_op_kind_runs_in_generated_kernels(tmp_path):
    p = einfold.Program("layout_ops")
    x, y = p.input("x", (6, 8)), p.input("y", (8,))
    r = p.reshape(p.div(p.sub(x, y), p.add(p.map("abs", y), p.literal(1.0, "f32"))), (4, 12))
    s = p.map("sigmoid", p.pow(r, p.literal(2.0, "f32")))
    p.set_outputs(p.cast(s, "f16"), x, r, r)
    exe = compile_cuda(p)
    gpu = check_plan(exe)
    assert [b.dtype for b in gpu.buffers if b.role == "output"] == ["float16", "float32", "float32", "float32"]
    assert len(set(gpu.outputs)) == 4  # repeated outputs get buffers of their own
    nvcc_ptx(exe.source("cuda"), tmp_path)


def test_integer_division_by_zero_is_reported_through_the_error_flag(tmp_path):
    p = einfold.Program("divide")
    a, b = p.input("a", (5,), "i32"), p.input("b", (5,), "i32")
    p.set_outputs(p.div(a, b))
    exe = compile_cuda(p)
    gpu = check_plan(exe)
    assert gpu.error_flag == "einfold_error" and "division by zero" in gpu.error_messages[1]
    assert gpu.launches[-1].kernel == "einfold_check0"
    nvcc_ptx(exe.source("cuda"), tmp_path)


def test_running_without_a_gpu_says_so():
    exe = compile_cuda("ij,jk->ik", shapes=[(8, 8), (8, 8)])
    ones = np.ones((8, 8), np.float32)
    with pytest.raises(einfold.RuntimeFailure, match="no CUDA GPU present"):
        exe(ones, ones)


def test_gpu_program_round_trips(tmp_path):
    gpu = compile_cuda(mlp_program()).gpu_program()
    loaded = GpuProgram.load(gpu.save(tmp_path))
    assert loaded == gpu and loaded.source_kind == "cuda"
    for name, data in gpu.constants.items():
        np.testing.assert_array_equal(loaded.constants[name], data)


def test_bad_options_and_dtypes_are_clear_errors():
    p = einfold.Program("modular")
    a = p.input("a", (4, 4), "zq(97)")
    p.set_outputs(p.einsum("ij,jk->ik", a, a))
    with pytest.raises(einfold.UnsupportedError, match="zq"):
        compile_cuda(p)
    with pytest.raises(einfold.UnsupportedError, match="sm_70"):
        compile_cuda("ij->j", shapes=[(4, 4)], arch="sm_70")
    with pytest.raises(einfold.UnsupportedError, match="ship"):
        einfold.compile("ij->j", shapes=[(4, 4)], target="cuda", ship="sass")


def test_cli_emit_cuda_prints_the_kernels():
    result = subprocess.run([sys.executable, "-m", "einfold", "compile", str(ROOT / "examples" / "mlp.ein"),
                             "--target", "cuda", "--option", "ship=cuda", "--emit", "cuda"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'extern "C" __global__' in result.stdout and "__shared__" in result.stdout


def uniform(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(np.float32)


EMULATED = [
    ("ij,jk->ik", [(300, 200), (200, 260)], "f32", 1e-5),
    ("ij,jk->ik", [(1024, 64), (64, 1536)], "f32", 1e-5),  # 128 x 128 tiles
    ("bhqd,bhkd->bhqk", [(2, 2, 64, 32), (2, 2, 96, 32)], "f32", 1e-5),
    ("ki,jk->ji", [(130, 70), (90, 130)], "f32", 1e-5),
    ("ijk->j", [(20, 30, 600)], "f32", 1e-5),
    ("ij,ji->", [(30, 41), (41, 30)], "f32", 1e-5),
    ("aib,bjc,ca->jic", [(4, 9, 5), (5, 7, 3), (3, 4)], "f32", 1e-5),
    ("ij,jk->ik", [(70, 50), (50, 90)], "bf16", 1e-2),
    ("ij,jk->ik", [(70, 50), (50, 90)], "f64", 1e-12),
    ("ij,jk->ik", [(70, 50), (50, 90)], "c64", 1e-5),
    ("ijk,jr,kr->ir", [(40, 32, 64), (32, 24), (64, 24)], "f32", 1e-5),  # split k
    ("bij,bjk->bik", [(2, 20, 1024), (2, 1024, 12)], "c64", 1e-5),  # split k, complex
]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "shapes", "dtype", "tolerance"), EMULATED)
def test_emulated_kernels_match_numpy(tmp_path, spec, shapes, dtype, tolerance):
    rng = np.random.default_rng(0)
    element = einfold.dtypes.dtype(dtype)
    inputs = [uniform(rng, *s) + (1j * uniform(rng, *s) if dtype == "c64" else 0) for s in shapes]
    inputs = [x.astype(element.numpy) for x in inputs]
    exe = compile_cuda(spec, shapes=shapes, dtype=dtype)
    [got], _ = emulate(exe.gpu_program(), exe.source("cuda"), inputs, tmp_path)
    wide = [x.astype(np.complex128) for x in inputs]
    want = np.einsum(spec, *wide)
    scale = np.einsum(spec, *(np.abs(x) for x in wide))
    got = got.view(element.numpy).astype(np.complex128)
    assert np.all(np.abs(got - want) <= tolerance * (scale + 1)), np.max(np.abs(got - want))


@pytest.mark.slow
def test_emulated_mlp_and_division_check(tmp_path):
    rng = np.random.default_rng(1)
    program = mlp_program()
    x = uniform(rng, 200, 96)
    [y, x_copy], _ = emulate(compile_cuda(program).gpu_program(), compile_cuda(program).source("cuda"), [x],
                             tmp_path)
    want = einfold.compile(program, target="numpy")(x)
    np.testing.assert_allclose(y, want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x_copy, x)
    p = einfold.Program("divide")
    a, b = p.input("a", (5,), "i32"), p.input("b", (5,), "i32")
    p.set_outputs(p.div(a, b))
    exe = compile_cuda(p)
    numerators = np.array([7, -7, 3, 4, 5], np.int32)
    [q], printed = emulate(exe.gpu_program(), exe.source("cuda"), [numerators, np.array([2, 2, 1, 3, 5], np.int32)],
                           tmp_path)
    np.testing.assert_array_equal(q, [3, -3, 3, 1, 1])
    assert printed.strip() == "error 0"
    _, printed = emulate(exe.gpu_program(), exe.source("cuda"), [numerators, np.array([2, 0, 1, 3, 5], np.int32)],
                         tmp_path)
    assert printed.strip() == "error 1"
