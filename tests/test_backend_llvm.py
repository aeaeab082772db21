"""The `llvm` target: conformance with the numpy reference for every dtype it claims, the GEMM path (permuted,
batched, table-indexed, threaded), fused epilogues, every elementwise op and cast, errors, and emitted code."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import check_target, einsum_cases

import einfold
from einfold import dtypes as dt
from einfold.reference import run_program

CLAIMED = ("f32", "f64", "i32", "i64", "c64", "c128", "i8", "i16", "u8", "u16", "u32", "u64", "bool", "f16", "bf16")
RTOL = {"f16": 4e-3, "bf16": 2e-2, "f32": 2e-5, "c64": 2e-5, "f64": 1e-12, "c128": 1e-12}
EXAMPLES = sorted(Path(__file__).resolve().parent.parent.glob("examples/*.ein"))


def values(shape: tuple[int, ...], element: dt.DType, rng: np.random.Generator, low: float = -1.0) -> np.ndarray:
    if element.name == "bool":
        return rng.random(shape) < 0.5
    if element.is_int:
        lo = 0 if element.name.startswith("u") else -8
        return rng.integers(lo, 9, size=shape).astype(element.numpy)
    data = rng.uniform(low, 1.0, size=shape)
    if element.is_complex:
        data = data + 1j * rng.uniform(low, 1.0, size=shape)
    return data.astype(element.numpy)


def assert_matches(program: einfold.Program, seed: int = 0, low: float = -1.0, rtol: float | None = None,
                   **options) -> einfold.Executable:
    """Compile for llvm (default passes included), run on random inputs, compare every output with the oracle
    (`rtol` overrides the output dtype's tolerance, for outputs computed in a narrower type)."""
    exe = einfold.compile(program, target="llvm", **options)
    rng = np.random.default_rng(seed)
    inputs = [values(op.type.shape, op.type.dtype, rng, low) for op in program.inputs]
    got = exe(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    want = run_program(program, inputs)
    for name, g, w in zip(program.outputs, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, f"%{name}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        element = program.type_of(name).dtype
        if element.name in RTOL:
            wide = np.complex128 if element.is_complex else np.float64
            scale = max(1.0, float(np.abs(w.astype(wide)).max()) if w.size else 1.0)
            tolerance = rtol or RTOL[element.name]
            np.testing.assert_allclose(g.astype(wide), w.astype(wide), rtol=tolerance, atol=tolerance * scale,
                                       err_msg=f"%{name}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"%{name}")
    return exe


def einsum_program(spec: str, *shapes: tuple[int, ...], dtype: str = "f32") -> einfold.Program:
    p = einfold.Program("case")
    names = [p.input(f"x{k}", shape, dtype) for k, shape in enumerate(shapes)]
    p.set_outputs(p.einsum(spec, *names))
    return p


# ----- random einsums, every claimed dtype --------------------------------------------------------------------

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(einsum_cases(dtypes=("f32", "f64", "i32", "i64", "c64", "c128")))
def test_random_einsums_required_dtypes(case):
    check_target(case, "llvm")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(einsum_cases(dtypes=("i8", "i16", "u8", "u16", "u32", "u64", "bool", "f16", "bf16")))
def test_random_einsums_other_dtypes(case):
    check_target(case, "llvm")


# ----- the GEMM path ------------------------------------------------------------------------------------------

GEMMS = {
    "plain": ("ij,jk->ik", (45, 37), (37, 50)),
    "transposed_output": ("ij,jk->ki", (45, 37), (37, 50)),
    "transposed_b": ("ij,kj->ik", (40, 33), (29, 33)),
    "transposed_a": ("ji,jk->ik", (33, 40), (33, 29)),
    "batched": ("bij,bjk->bik", (3, 20, 17), (3, 17, 21)),
    "attention": ("bhqd,bhkd->bhqk", (2, 3, 23, 16), (2, 3, 29, 16)),
    "grouped": ("abcd,cdef->abef", (3, 4, 5, 6), (5, 6, 7, 2)),
    "table_indexed": ("abc,cd->bad", (5, 7, 19), (19, 21)),
    "batch_inner": ("ibj,jbk->bik", (20, 3, 22), (22, 3, 24)),
}


@pytest.mark.parametrize("name", GEMMS)
def test_gemm_shapes_f32(name):
    spec, *shapes = GEMMS[name]
    exe = assert_matches(einsum_program(spec, *shapes))
    assert any("gemm" in note for note in exe.stats()["llvm_lowering"]), exe.stats()["llvm_lowering"]


@pytest.mark.parametrize("dtype", ["f64", "i32", "i64"])
def test_gemm_other_dtypes(dtype):
    exe = assert_matches(einsum_program("bij,bkj->bki", (2, 30, 20), (2, 25, 20), dtype=dtype))
    assert any("gemm" in note for note in exe.stats()["llvm_lowering"])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_threads_and_blocks(threads):
    """Several k-blocks (k > kc), m split between threads in whole panels, ragged edges everywhere."""
    exe = assert_matches(einsum_program("ij,jk->ik", (131, 300), (300, 77)), threads=threads)
    assert exe.stats()["llvm_threads"] == threads


def test_batched_gemm_split_over_batch_threads():
    exe = assert_matches(einsum_program("bij,bjk->bik", (8, 96, 64), (8, 64, 80)), threads=2)
    assert exe.stats()["llvm_threads"] == 2


DIRECT_A = {
    "ragged_rows_k_blocks": ("ij,jk->ik", (131, 300), (300, 29), "f32"),
    "batched": ("bij,bjk->bik", (3, 25, 40), (3, 40, 16), "f64"),
    "grouped_k": ("ijk,jkr->ir", (23, 9, 40), (9, 40, 12), "f32"),
    "integers": ("ij,kj->ik", (37, 70), (30, 70), "i32"),
}


@pytest.mark.parametrize("name", DIRECT_A)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_with_few_columns_reads_a_in_place(name, threads):
    """n <= 32 and A contiguous along k: no A packing; ragged row panels repeat the last row, unused."""
    spec, a_shape, b_shape, dtype = DIRECT_A[name]
    exe = assert_matches(einsum_program(spec, a_shape, b_shape, dtype=dtype), threads=threads)
    assert "A read in place" in exe.stats()["llvm_lowering"][0], exe.stats()["llvm_lowering"]


def test_gemm_packs_a_when_not_contiguous_along_k_or_many_columns():
    transposed = assert_matches(einsum_program("ji,jk->ik", (40, 33), (40, 20)))
    wide = assert_matches(einsum_program("ij,jk->ik", (33, 40), (40, 100)))
    for exe in (transposed, wide):
        assert "A read in place" not in exe.stats()["llvm_lowering"][0]


COLUMN_SPLIT = {
    "plain_ragged": ("ij,jk->ik", (20, 300), (300, 203)),
    "table_indexed_b": ("ab,cbd->acd", (7, 9), (5, 9, 40)),
}


@pytest.mark.parametrize("name", COLUMN_SPLIT)
@pytest.mark.parametrize("threads", [2, 3])
def test_gemm_with_more_columns_than_rows_splits_columns(name, threads):
    spec, a_shape, b_shape = COLUMN_SPLIT[name]
    exe = assert_matches(einsum_program(spec, a_shape, b_shape), threads=threads)
    assert "threads split n" in exe.stats()["llvm_lowering"][0], exe.stats()["llvm_lowering"]


def test_gemm_asm_has_vector_fma():
    exe = einfold.compile(einsum_program("ij,jk->ik", (64, 64), (64, 64)), target="llvm")
    assert "@llvm.fma.v8f32" in exe.source("llvm")
    asm = exe.source("asm")
    assert "vfmadd231ps" in asm and "%ymm" in asm
    exe64 = einfold.compile(einsum_program("ij,jk->ik", (64, 64), (64, 64), dtype="f64"), target="llvm")
    assert "vfmadd231pd" in exe64.source("asm")


def test_loop_nest_reduction_is_vectorised():
    exe = assert_matches(einsum_program("ijk->j", (4, 5, 64)))
    asm = exe.source("asm")
    assert "vaddps" in asm and "%ymm" in asm


MEMORY_ORDER_REDUCTIONS = {
    "middle_label": ("ijk->j", (6, 37, 19), "abc"),
    "outer_and_inner_summed": ("ijkl->jk", (5, 7, 9, 11), "abcd"),
    "summed_outermost_only": ("ijk->jk", (4, 9, 13), "abc"),
    "int_middle_label": ("ijk->j", (3, 40, 8), "abc"),
}


@pytest.mark.parametrize("name", MEMORY_ORDER_REDUCTIONS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_reduction_in_memory_order(name, threads):
    """A one-operand reduction whose summed label is outermost in memory runs in memory order, the threads
    splitting the first output label, each partial sum added into the zero-filled output."""
    spec, shape, order = MEMORY_ORDER_REDUCTIONS[name]
    dtype = "i32" if name.startswith("int") else "f64"
    exe = assert_matches(einsum_program(spec, shape, dtype=dtype), threads=threads)
    assert f"loop nest {order} (summed into the output)" in exe.stats()["llvm_lowering"][0]


def test_memory_order_reduction_keeps_epilogue_and_f16_accumulator():
    """The epilogue of an output-accumulated reduction runs as its own kernel; f16 keeps the f32 register sum."""
    p = einfold.Program("reduce")
    x = p.input("x", (5, 16, 24), "f32")
    p.set_outputs(p.map("tanh", p.einsum("ijk->j", x)))
    exe = assert_matches(p, threads=2)
    assert "summed into the output" in exe.stats()["llvm_lowering"][0]
    half = assert_matches(einsum_program("ijk->j", (5, 16, 24), dtype="f16"), threads=2)
    assert "summed into the output" not in half.stats()["llvm_lowering"][0]


# ----- fused epilogues ----------------------------------------------------------------------------------------

def mlp(dtype: str, batch: int, width: int) -> einfold.Program:
    rng = np.random.default_rng(1)
    p = einfold.Program("mlp")
    x = p.input("x", (batch, width), dtype)
    w = p.const("w", rng.uniform(-1, 1, (width, 24)).astype(dt.dtype(dtype).numpy))
    b = p.const("b", rng.uniform(-1, 1, 24).astype(dt.dtype(dtype).numpy))
    h = p.map("relu", p.add(p.einsum("bi,io->bo", x, w), b))
    p.set_outputs(p.map("tanh", p.mul(h, p.literal(0.5, dtype))))
    return p


def reduction_with_epilogue(dtype: str) -> einfold.Program:
    """A matrix-vector product (reduction innermost) whose epilogue is applied at the store."""
    p = einfold.Program("gemv")
    x = p.input("x", (9, 33), dtype)
    v = p.input("v", (33,), dtype)
    shift = p.input("shift", (9,), dtype)
    value = p.add(p.einsum("ij,j->i", x, v), shift)
    if dt.dtype(dtype).is_complex:
        p.set_outputs(p.mul(value, p.literal(1 + 2j, dtype)))
    else:
        p.set_outputs(p.map("sigmoid", p.mul(value, p.literal(0.5, dtype))))
    return p


EPILOGUES = {
    "mlp_small_f32": (lambda: mlp("f32", 3, 5), "loop nest"),
    "mlp_gemm_f32": (lambda: mlp("f32", 40, 64), "gemm"),
    "mlp_gemm_f64": (lambda: mlp("f64", 40, 64), "gemm"),
    "gemv_f32": (lambda: reduction_with_epilogue("f32"), "fused epilogue"),
    "gemv_c64": (lambda: reduction_with_epilogue("c64"), "fused epilogue"),
    "gemv_f16": (lambda: reduction_with_epilogue("f16"), "fused epilogue"),
}


@pytest.mark.parametrize("name", EPILOGUES)
def test_fused_epilogue(name):
    make, path = EPILOGUES[name]
    exe = assert_matches(make())
    chain = [op for op in exe.program.ops if "epilogue_of" in op.attrs]
    assert len(chain) >= 2, exe.ir()
    notes = exe.stats()["llvm_lowering"]
    assert any(path in note for note in notes), notes
    inline = any("fused epilogue" in note for note in notes)
    others = [op for op in exe.program.ops
              if op.opcode not in ("input", "const", "literal", "einsum") and "epilogue_of" not in op.attrs]
    # One kernel for the einsum and, unless applied at its store, one for the whole chain.
    assert exe.stats()["llvm_kernels"] == 1 + (0 if inline else 1) + len(others)


def test_hand_written_epilogue_with_cast_and_side_operand():
    """An epilogue chain that changes dtype (the anchor then needs its own buffer) and reads an input."""
    p = einfold.Program("chain")
    x = p.input("x", (30, 40), "f32")
    w = p.input("w", (40, 20), "f32")
    bias = p.input("bias", (20,), "f32")
    e = p.einsum("ij,jk->ik", x, w)
    s = p.append("add", (e, bias), {"epilogue_of": e})
    c = p.append("cast", (s,), {"epilogue_of": e}, type=einfold.TensorType((30, 20), dt.float64))
    p.set_outputs(c)
    exe = assert_matches(p, passes=[], rtol=RTOL["f32"])
    assert exe.stats()["llvm_kernels"] == 2  # the GEMM and its epilogue


# ----- elementwise ops, maps and casts ------------------------------------------------------------------------

FLOAT_MAPS = ("relu", "exp", "log", "tanh", "sigmoid", "gelu", "sqrt", "reciprocal", "abs", "square")


def every_op(dtype: str) -> einfold.Program:
    p = einfold.Program("ops")
    x = p.input("x", (3, 8), dtype)
    y = p.input("y", (8,), dtype)
    element = dt.dtype(dtype)
    outs = [p.add(x, y), p.sub(x, y), p.mul(x, y), p.neg(x), p.reshape(x, (4, 6)), p.cast(x, "f64"),
            p.map("poly", x, coeffs=[0.5, -1.0, 0.25])]
    if element.is_float:
        positive = p.add(p.map("abs", x), p.literal(0.5, dtype))
        outs += [p.map(fn, positive if fn in ("log", "sqrt", "reciprocal") else x) for fn in FLOAT_MAPS]
        outs += [p.div(x, positive), p.pow(positive, p.literal(1.5, dtype)), p.cast(x, "i32"),
                 p.cast(x, "bool"), p.cast(x, "f16"), p.cast(x, "bf16")]
    if element.is_complex:
        outs += [p.div(x, p.add(y, p.literal(3.0, dtype))), p.map("exp", x), p.map("abs", x),
                 p.map("square", x), p.map("sqrt", x), p.map("log", p.add(x, p.literal(2.0, dtype))),
                 p.map("reciprocal", p.add(x, p.literal(2.0, dtype))), p.cast(x, "f32"), p.cast(x, "c128")]
    p.set_outputs(*outs)
    return p


@pytest.mark.parametrize("dtype", ["f32", "f64", "f16", "bf16", "c64", "c128"])
def test_every_elementwise_op(dtype):
    assert_matches(every_op(dtype))


def integer_ops(dtype: str) -> einfold.Program:
    p = einfold.Program("ints")
    x = p.input("x", (4, 6), dtype)
    y = p.input("y", (6,), dtype)
    safe = p.add(p.map("abs", y), p.literal(1, dtype))
    outs = [p.add(x, y), p.sub(x, y), p.mul(x, y), p.div(x, safe), p.pow(x, p.literal(3, dtype)),
            p.map("relu", x), p.map("abs", x), p.map("square", x), p.map("poly", x, coeffs=[2, -1, 3]),
            p.cast(x, "f32"), p.cast(x, "i8"), p.cast(x, "u16"), p.cast(x, "bool"), p.cast(x, "c64")]
    if not dtype.startswith("u"):
        outs.append(p.neg(x))
    p.set_outputs(*outs)
    return p


@pytest.mark.parametrize("dtype", ["i8", "i16", "i32", "i64", "u8", "u32", "u64"])
def test_integer_ops(dtype):
    assert_matches(integer_ops(dtype))


def test_bool_ops():
    p = einfold.Program("bools")
    x = p.input("x", (5, 4), "bool")
    y = p.input("y", (4,), "bool")
    p.set_outputs(p.add(x, y), p.mul(x, y), p.cast(x, "i32"), p.cast(x, "f32"), p.einsum("ij,j->i", x, y))
    assert_matches(p)


def test_double_to_half_rounds_once():
    """f64 -> f16 goes through a round-to-odd f32, so values just off a half-way point round correctly (like
    numpy); f64 -> bf16 rounds through f32 twice, like ml_dtypes (the reference)."""
    half_ulp = 2.0 ** -11
    data = np.array([1 + half_ulp + 2.0 ** -40, 1 + half_ulp - 2.0 ** -40, 1 + 2.0 ** -8 + 2.0 ** -30,
                     -(1 + 3 * half_ulp + 2.0 ** -45), 65519.9, 70000.0, np.inf, np.nan])
    p = einfold.Program("round")
    x = p.input("x", data.shape, "f64")
    p.set_outputs(p.cast(x, "f16"), p.cast(x, "bf16"))
    half, brain = einfold.compile(p, target="llvm")(data)
    with np.errstate(over="ignore"):  # 70000 overflows to inf on purpose
        np.testing.assert_array_equal(half, data.astype(np.float16))
    np.testing.assert_array_equal(brain.view(np.uint16), data.astype(ml_dtypes.bfloat16).view(np.uint16))


# ----- outputs, overhead-related behaviour --------------------------------------------------------------------

def test_outputs_that_are_inputs_weights_or_repeated_get_their_own_buffers():
    p = einfold.Program("outs")
    x = p.input("x", (3, 4), "f32")
    w = p.const("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    s = p.add(x, w)
    r = p.reshape(s, (4, 3))
    p.set_outputs(x, w, s, s, r)
    exe = einfold.compile(p, target="llvm")
    data = np.ones((3, 4), np.float32)
    first = exe(data)
    second = exe(data * 2)
    assert all(not np.shares_memory(a, b) for a in first for b in second)
    assert not np.shares_memory(first[2], first[3])
    np.testing.assert_array_equal(first[0], data)
    np.testing.assert_array_equal(first[1], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(first[4], (data + np.arange(12).reshape(3, 4)).reshape(4, 3))
    np.testing.assert_array_equal(second[3], 2 * data + np.arange(12).reshape(3, 4))


def test_arena_reuses_dead_intermediates():
    p = einfold.Program("arena")
    x = p.input("x", (64, 64), "f32")
    h = x
    for _ in range(6):
        h = p.map("tanh", p.einsum("ij,jk->ik", h, x))
    p.set_outputs(h)
    exe = assert_matches(p, passes=["canonicalize"])
    stats = exe.stats()
    assert stats["llvm_workspace_bytes"] > 0
    assert stats["llvm_arena_bytes"] - stats["llvm_workspace_bytes"] <= 3 * 64 * 64 * 4 + 3 * 64


def test_non_contiguous_input():
    p = einsum_program("ij,jk->ik", (20, 30), (30, 10))
    exe = einfold.compile(p, target="llvm")
    a = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32).T
    b = np.random.default_rng(1).standard_normal((30, 10)).astype(np.float32)
    np.testing.assert_allclose(exe(a, b), a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_examples(example):
    program = einfold.load_ein(example)
    assert_matches(program, low=0.0)


# ----- errors ------------------------------------------------------------------------------------------------

def test_modular_dtype_is_refused_at_compile_time():
    p = einfold.Program("zq")
    x = p.input("x", (3, 3), einfold.zq(97))
    p.set_outputs(p.einsum("ij,jk->ik", x, x))
    with pytest.raises(einfold.UnsupportedError, match=r"zq\(97\)"):
        einfold.compile(p, target="llvm")


@pytest.mark.parametrize("fn", ["tanh", "relu", "sigmoid", "gelu"])
def test_complex_maps_without_a_rule_are_refused(fn):
    p = einfold.Program("cmap")
    x = p.input("x", (3,), "c64")
    p.set_outputs(p.map(fn, x))
    with pytest.raises(einfold.UnsupportedError, match=fn):
        einfold.compile(p, target="llvm")


def test_integer_division_by_zero_is_a_runtime_failure():
    p = einfold.Program("div")
    x = p.input("x", (4,), "i32")
    y = p.input("y", (4,), "i32")
    p.set_outputs(p.div(x, y))
    exe = einfold.compile(p, target="llvm")
    np.testing.assert_array_equal(exe(np.array([7, -7, -2**31, 9], np.int32), np.array([2, 2, -1, -3], np.int32)),
                                  np.array([3, -3, -2**31, -3], np.int32))
    with pytest.raises(einfold.RuntimeFailure, match="division by zero"):
        exe(np.ones(4, np.int32), np.array([1, 0, 1, 1], np.int32))
    np.testing.assert_array_equal(exe(np.full(4, 6, np.int32), np.full(4, 3, np.int32)), np.full(4, 2))


def test_negative_integer_power_is_a_runtime_failure():
    p = einfold.Program("pow")
    x = p.input("x", (3,), "i64")
    y = p.input("y", (3,), "i64")
    p.set_outputs(p.pow(x, y))
    exe = einfold.compile(p, target="llvm")
    np.testing.assert_array_equal(exe(np.array([3, -2, 7]), np.array([4, 3, 0])), np.array([81, -8, 1]))
    with pytest.raises(einfold.RuntimeFailure, match="negative"):
        exe(np.array([3, 2, 1]), np.array([1, -1, 2]))


def test_short_programs_run_on_one_thread_unless_threads_are_given():
    small = einsum_program("ij,jk->ik", (128, 128), (128, 128))
    assert einfold.compile(small, target="llvm").stats()["llvm_threads"] == 1
    assert assert_matches(small, threads=2).stats()["llvm_threads"] == 2
    from einfold.backends.llvm.runtime import default_threads
    large = einsum_program("ijk->j", (256, 256, 128))  # 32 MiB to read: memory-bound for about 3 ms
    assert einfold.compile(large, target="llvm").stats()["llvm_threads"] == default_threads()


def test_calls_from_several_python_threads_keep_their_own_inputs():
    from concurrent.futures import ThreadPoolExecutor

    exe = einfold.compile("ij,jk->ik", shapes=[(96, 64), (64, 80)], dtype="f32", target="llvm", threads=2)
    rng = np.random.default_rng(7)
    pairs = [(rng.standard_normal((96, 64), dtype=np.float32), rng.standard_normal((64, 80), dtype=np.float32))
             for _ in range(8)]

    def call(pair: tuple[np.ndarray, np.ndarray]) -> bool:
        a, b = pair
        return all(np.allclose(exe(a, b), a @ b, rtol=1e-5, atol=1e-4) for _ in range(50))

    with ThreadPoolExecutor(4) as threads:
        assert all(threads.map(call, pairs))
