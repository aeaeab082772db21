"""The `tvm` target: every dtype and op against the numpy reference, fused epilogues, what the emitted TIR/asm
promises (parallel outer loop, vectorised inner loop, FMA), runtime checks and clear refusals."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import check_target, einsum_cases

import einfold
from einfold import dtypes as dt
from einfold.passes import DEFAULT_PIPELINE
from einfold.reference import run_program

pytest.importorskip("tvm")

ALL_DTYPES = list(dt.ALL_NAMES)
TOLERANCE = {"f16": 1e-2, "bf16": 2e-2, "f32": 1e-5, "c64": 1e-5, "f64": 1e-12, "c128": 1e-12}
EXAMPLES = sorted(Path(__file__).resolve().parent.parent.glob("examples/*.ein"))


def random_array(shape: tuple[int, ...], element: dt.DType, rng: np.random.Generator) -> np.ndarray:
    if element.name == "bool":
        return rng.random(shape) < 0.5
    if element.is_int:
        return rng.integers(0 if element.name.startswith("u") else -5, 6, shape).astype(element.numpy)
    values = rng.uniform(-1, 1, shape)
    if element.is_complex:
        values = values + 1j * rng.uniform(-1, 1, shape)
    return values.astype(element.numpy)


def assert_matches(program: einfold.Program, exe: einfold.Executable, inputs: list[np.ndarray]) -> None:
    got = exe(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    want = run_program(program, [np.asarray(a) for a in exe.check_inputs(inputs)])
    for name, g, w in zip(program.outputs, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, f"%{name}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        element = dt.dtype(w.dtype)
        op = program.defining_op(name)
        if op.opcode == "cast" and element.name in TOLERANCE:  # a cast to a wider type keeps its source's rounding
            element = max(element, program.type_of(op.operands[0]).dtype, key=lambda t: TOLERANCE.get(t.name, 0))
        if element.name in TOLERANCE:
            wide = np.complex128 if element.is_complex else np.float64
            finite = np.abs(w.astype(wide))[np.isfinite(w)]
            scale = max(1.0, float(np.max(finite)) if finite.size else 1.0)
            np.testing.assert_allclose(g.astype(wide), w.astype(wide), rtol=TOLERANCE[element.name],
                                       atol=TOLERANCE[element.name] * scale, err_msg=f"%{name}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"%{name}")


def every_op(dtype: str) -> einfold.Program:
    """One program per dtype with each kind of contraction and every op that dtype allows."""
    rng = np.random.default_rng(1)
    element = dt.dtype(dtype)
    p = einfold.Program(f"every_{dtype}")
    a, b = p.input("a", (40, 24), dtype), p.input("b", (24, 30), dtype)  # 28800 MACs: the packed GEMM path
    c, d = p.input("c", (3, 5, 4), dtype), p.input("d", (3, 4, 6), dtype)
    v = p.input("v", (30,), dtype)
    w = p.const("w", random_array((30,), element, rng))
    gemm = p.einsum("ij,jk->ik", a, b)
    outs = [gemm,
            p.einsum("ij,jk->ki", a, b),                       # transposed output, packed
            p.einsum("bij,bjk->bik", c, d),                    # batched
            p.einsum("bij,bjk->kib", c, d),                    # batched, permuted output
            p.einsum("bij->j", c),                             # reduction only
            p.einsum("ij,k->ikj", a, v),                       # outer product
            p.einsum("ik,k->i", gemm, v),                      # matrix-vector
            p.einsum("ii->i", p.einsum("ij,kj->ik", a, a)),    # diagonal
            p.einsum("bij,bkl->jk", c, d),                     # labels summed on one side only
            p.einsum("i,i->", v, w),                           # full contraction to a scalar
            p.mul(p.add(gemm, v), w),                          # epilogue with broadcast operands
            p.reshape(gemm, (30, 40)),
            p.mul(gemm, p.literal(2, dtype)),
            a]                                                 # an input as an output
    if dtype != "bool":
        outs += [p.sub(gemm, w), p.map("square", gemm), p.map("poly", gemm, coeffs=[1, 2, 3]),
                 p.map("abs", gemm), p.map("relu", gemm)]
    if element.is_int and dtype != "bool":
        outs += [p.div(gemm, p.add(p.map("abs", v), p.literal(1, dtype))),
                 p.pow(p.map("abs", a), p.literal(3, dtype))]
    if element.is_float or element.is_complex:
        h = p.mul(gemm, p.literal(0.25, dtype))
        outs += [p.map(fn, h) for fn in (("exp", "tanh") if element.is_complex else ("exp", "tanh", "sigmoid", "gelu"))]
        outs += [p.map("sqrt", p.map("abs", h)), p.map("log", p.add(p.map("abs", h), p.literal(1.0, dtype))),
                 p.map("reciprocal", p.add(p.map("square", h), p.literal(1.0, dtype))),
                 p.div(h, p.add(p.map("abs", w), p.literal(2.0, dtype))),
                 p.pow(p.map("abs", h), p.literal(1.5, dtype))]
    if not (dtype == "bool" or dtype.startswith("u")):
        outs.append(p.neg(gemm))
    target = {"f32": "f64", "f64": "f32", "c64": "c128", "c128": "f64", "i32": "f32", "bool": "i32"}.get(dtype, "i64")
    outs.append(p.cast(gemm, target))
    p.set_outputs(*outs)
    return p


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_op_and_contraction_kind_per_dtype(dtype):
    program = every_op(dtype)
    exe = einfold.compile(program, target="tvm")
    rng = np.random.default_rng(0)
    assert_matches(program, exe, [random_array(op.type.shape, op.type.dtype, rng) for op in program.inputs])
    assert any("6x" in tile or "3x" in tile or "4x" in tile for tile in exe.stats()["tvm_gemm_tiles"])


@pytest.mark.parametrize("dtype", ["c64", "c128"])
def test_complex_arithmetic_beyond_the_unit_circle(dtype):
    p = einfold.Program("cplx")
    x, y = p.input("x", (8, 9), dtype), p.input("y", (9,), dtype)
    outs = [p.div(x, y), p.mul(x, y), p.map("exp", x), p.map("log", x), p.map("sqrt", x), p.map("tanh", x),
            p.map("relu", x), p.map("reciprocal", x), p.pow(x, y), p.cast(x, "f64"), p.cast(x, "bool"),
            p.einsum("ij,j->i", x, y), p.einsum("ij,kj->ik", x, x)]
    p.set_outputs(*outs)
    rng = np.random.default_rng(4)
    inputs = [3 * random_array((8, 9), dt.dtype(dtype), rng), 2 * random_array((9,), dt.dtype(dtype), rng)]
    inputs[0][0, :3] = [-2.0, 0.0, 1j]  # negative real axis and zero for sqrt/log/relu branches
    assert_matches(p, einfold.compile(p, target="tvm"), inputs)


@given(einsum_cases(dtypes=("f32", "f64", "i32", "i64", "c64", "bool", "f16"), max_operands=4))
@settings(max_examples=12, deadline=None)
def test_random_einsums_match_numpy(case):
    check_target(case, "tvm")


def test_gemm_tir_has_parallel_outer_and_vectorised_inner_loops():
    exe = einfold.compile("ij,jk->ik", shapes=[(256, 192), (192, 160)], target="tvm")
    tir = exe.source("tir")
    assert exe.emit_kinds == ["ir", "dot", "tir", "llvm", "asm"]
    update = tir.index('T.sblock("v0_gemm_update")')
    loops_before = tir[:update]
    assert re.search(r"for \w+ in T\.parallel\(\d+\):", loops_before), "outer tile loop is not parallel"
    innermost = [line for line in loops_before.splitlines() if line.strip().startswith("for ")][-1]
    assert "T.vectorized(16)" in innermost, f"innermost loop of the GEMM update is not vectorised: {innermost}"
    assert "T.unroll(6)" in loops_before, "register tile rows are not unrolled"
    assert 'scope="local"' in tir, "accumulator tile is not a local (register) buffer"
    assert re.search(r"<(8|16) x float>", exe.source("llvm")), "no vector arithmetic in the LLVM IR"
    assert re.search(r"vfmadd\d+ps\s+%ymm", exe.source("asm")), "no AVX2 FMA in the GEMM kernel"
    a = np.random.default_rng(0).standard_normal((256, 192)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((192, 160)).astype(np.float32)
    np.testing.assert_allclose(exe(a, b), a @ b, rtol=1e-5, atol=1e-4)


def test_epilogue_chain_is_fused_into_the_contraction():
    rng = np.random.default_rng(2)
    p = einfold.Program("dense")
    x = p.input("x", (64, 48))
    w = p.const("w", rng.standard_normal((48, 40)).astype(np.float32))
    bias = p.const("bias", rng.standard_normal(40).astype(np.float32))
    y = p.map("gelu", p.add(p.einsum("bi,io->bo", x, w), bias))
    p.set_outputs(y)
    exe = einfold.compile(p, target="tvm")
    fused_ops = [op for op in exe.program.ops if "epilogue_of" in op.attrs]
    assert len(fused_ops) == 2
    assert exe.stats()["tvm_fused_epilogue_ops"] == 2
    tir = exe.source("tir")
    blocks = set(re.findall(r'T\.sblock\("([^"]+)"\)', tir)) - {"root"}
    # Only the packed GEMM stages and one output stage remain: the add and the gelu are inside the output stage.
    assert len([b for b in blocks if not re.search(r"_(packA|packB|gemm.*)$", b)]) == 1, sorted(blocks)
    assert "tanh" in tir and "bias" in tir
    xs = rng.standard_normal((64, 48)).astype(np.float32)
    assert_matches(p, exe, [xs])


def test_unaligned_and_strided_inputs():
    exe = einfold.compile("ij,jk->ik", shapes=[(33, 40), (40, 29)], target="tvm")
    rng = np.random.default_rng(5)
    raw = rng.standard_normal(33 * 40 + 1).astype(np.float32)
    a = raw[1:].reshape(33, 40)                         # 4-byte aligned only
    b = rng.standard_normal((29, 40)).astype(np.float32).T  # not C-contiguous
    assert a.ctypes.data % 64 != 0
    np.testing.assert_allclose(exe(a, b), a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, shapes", [("ij,jk->ik", [(3, 0), (0, 4)]), ("ij,jk->ik", [(0, 5), (5, 4)]),
                                          ("ijk->j", [(0, 3, 2)]), (",->", [(), ()])])
def test_empty_and_scalar_operands(spec, shapes):
    exe = einfold.compile(spec, shapes=shapes, target="tvm", dtype="f64")
    arrays = [np.full(shape, 1.5) for shape in shapes]
    got = exe(*arrays)
    np.testing.assert_array_equal(got, np.einsum(spec, *arrays))
    assert got.shape == np.einsum(spec, *arrays).shape


def test_outputs_are_fresh_arrays_each_call():
    exe = einfold.compile("ij->ji", shapes=[(4, 5)], target="tvm")
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    first = exe(x)
    second = exe(x + 1)
    np.testing.assert_array_equal(first, x.T)
    np.testing.assert_array_equal(second, x.T + 1)


@pytest.mark.parametrize("opcode, message", [("div", "division by zero"), ("pow", "negative integer powers")])
def test_integer_errors_raise_instead_of_trapping(opcode, message):
    p = einfold.Program("ints")
    a, b = p.input("a", (6,), "i32"), p.input("b", (6,), "i32")
    p.set_outputs(p.elementwise(opcode, a, b))
    exe = einfold.compile(p, target="tvm")
    a_values = np.array([7, -7, 2, 3, np.iinfo(np.int32).min, 5], np.int32)
    good = np.array([2, 2, 3, 1, -1, 2] if opcode == "div" else [2, 2, 3, 1, 5, 0], np.int32)
    assert_matches(p, exe, [a_values, good])
    bad = good.copy()
    bad[3] = 0 if opcode == "div" else -1
    with pytest.raises(einfold.RuntimeFailure, match=message):
        exe(a_values, bad)


def test_modular_dtype_is_refused_at_compile_time():
    p = einfold.Program("zq")
    x = p.input("x", (4, 4), "zq(97)")
    p.set_outputs(p.einsum("ij,jk->ik", x, x))
    with pytest.raises(einfold.UnsupportedError, match=r"zq\(97\)"):
        einfold.compile(p, target="tvm")


def test_nary_einsum_without_planning_is_refused():
    with pytest.raises(einfold.UnsupportedError, match="contraction-plan"):
        einfold.compile("ij,jk,kl->il", shapes=[(3, 4), (4, 5), (5, 6)], target="tvm", passes=DEFAULT_PIPELINE)


def test_planned_chain_runs_as_binary_contractions():
    exe = einfold.compile("ij,jk,kl,lm->im", shapes=[(40, 50), (50, 60), (60, 70), (70, 30)], target="tvm")
    assert len(exe.stats()["contractions"]) == 1
    assert all(len(op.operands) <= 2 for op in exe.program.ops if op.opcode == "einsum")
    arrays = [np.random.default_rng(k).standard_normal(s).astype(np.float32)
              for k, s in enumerate([(40, 50), (50, 60), (60, 70), (70, 30)])]
    want = np.linalg.multi_dot([a.astype(np.float64) for a in arrays])
    np.testing.assert_allclose(exe(*arrays), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_examples(example):
    program = einfold.load_ein(example)
    exe = einfold.compile(program, target="tvm")
    rng = np.random.default_rng(7)
    assert_matches(program, exe, [random_array(op.type.shape, op.type.dtype, rng) for op in program.inputs])
