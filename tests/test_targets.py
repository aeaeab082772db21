"""The same conformance suite on every general-purpose target, against the numpy reference.

A target must either run a program to the reference's result or refuse it at compile time with
UnsupportedError; the dtypes the benchmarks and structured programs need must be supported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import einfold
from einfold import dtypes as dt
from einfold.cli import random_input, tolerance
from einfold.reference import run_program

TARGETS = ["llvm", "tvm"]
REQUIRED_DTYPES = ["f32", "f64", "i32", "i64", "c64", "c128"]
ALL_DTYPES = list(dt.ALL_NAMES)
EXAMPLES = sorted(Path(__file__).resolve().parent.parent.glob("examples/*.ein"))


def one_einsum(spec: str, *shapes: tuple[int, ...], dtype: str = "f32") -> einfold.Program:
    p = einfold.Program("case")
    names = [p.input(f"x{k}", shape, dtype) for k, shape in enumerate(shapes)]
    p.set_outputs(p.einsum(spec, *names))
    return p


def mlp_with_everything(dtype: str = "f32") -> einfold.Program:
    rng = np.random.default_rng(3)
    p = einfold.Program("everything")
    x = p.input("x", (5, 12), dtype)
    w = p.const("w", rng.standard_normal((12, 7)).astype(dt.dtype(dtype).numpy))
    b = p.const("b", rng.standard_normal(7).astype(dt.dtype(dtype).numpy))
    h = p.add(p.einsum("bi,io->bo", x, w), b)
    outs = [p.map(fn, h) for fn in ("relu", "tanh", "sigmoid", "gelu", "square")]
    outs.append(p.map("exp", p.mul(h, p.literal(0.1, dtype))))
    outs.append(p.map("poly", h, coeffs=[0.5, -1.0, 0.25]))
    outs.append(p.map("sqrt", p.map("abs", h)))
    outs.append(p.map("log", p.add(p.map("abs", h), p.literal(1.0, dtype))))
    outs.append(p.map("reciprocal", p.add(p.map("square", h), p.literal(1.0, dtype))))
    outs.append(p.div(p.sub(p.neg(h), b), p.add(p.map("abs", b), p.literal(2.0, dtype))))
    outs.append(p.reshape(p.einsum("bo->ob", h), (7, 5)))
    outs.append(p.cast(p.pow(p.map("abs", h), p.literal(1.5, dtype)), "f64"))
    p.set_outputs(*outs)
    return p


CASES = {
    "gemm": lambda d: one_einsum("ij,jk->ik", (33, 17), (17, 20), dtype=d),
    "gemm_transposed": lambda d: one_einsum("ji,kj->ki", (17, 33), (20, 17), dtype=d),
    "batched": lambda d: one_einsum("bij,bjk->bik", (3, 9, 6), (3, 6, 11), dtype=d),
    "attention": lambda d: one_einsum("bhqd,bhkd->bhqk", (2, 2, 5, 8), (2, 2, 7, 8), dtype=d),
    "contract2": lambda d: one_einsum("abcd,cdef->abef", (3, 2, 4, 5), (4, 5, 2, 3), dtype=d),
    "chain": lambda d: one_einsum("ij,jk,kl,lm->im", (5, 6), (6, 7), (7, 8), (8, 4), dtype=d),
    "mttkrp": lambda d: one_einsum("ijk,jr,kr->ir", (6, 5, 4), (5, 3), (4, 3), dtype=d),
    "tucker": lambda d: one_einsum("abc,ia,jb,kc->ijk", (2, 3, 4), (5, 2), (3, 3), (4, 4), dtype=d),
    "bilinear": lambda d: one_einsum("bn,anm,bm->ba", (4, 5), (3, 5, 6), (4, 6), dtype=d),
    "reduce": lambda d: one_einsum("ijk->j", (4, 5, 6), dtype=d),
    "trace_diag": lambda d: one_einsum("iij,j->i", (5, 5, 3), (3,), dtype=d),
    "outer": lambda d: one_einsum("i,j->ij", (7,), (9,), dtype=d),
    "transpose": lambda d: one_einsum("ijk->kji", (3, 4, 5), dtype=d),
    "broadcast": lambda d: one_einsum("...ij,...jk->...ik", (2, 1, 3, 4), (5, 4, 2), dtype=d),
    "full_sum": lambda d: one_einsum("ij->", (6, 7), dtype=d),
}


def computed_in(program: einfold.Program, name: str) -> dt.DType:
    """The dtype a value was computed in: a cast to a wider float keeps its source's rounding."""
    op = program.defining_op(name)
    source = program.type_of(op.operands[0]).dtype if op.opcode == "cast" else op.type.dtype
    return max(source, op.type.dtype, key=lambda t: tolerance(t))


def check(program: einfold.Program, target: str, seed: int = 0) -> None:
    exe = einfold.compile(program, target=target)
    rng = np.random.default_rng(seed)
    inputs = [random_input(op.type.shape, op.type.dtype, rng) for op in program.inputs]
    got = exe(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    want = run_program(program, [np.asarray(a) for a in exe.check_inputs(inputs)])
    for name, g, w in zip(program.outputs, got, want):
        element = computed_in(program, name)
        assert g.shape == w.shape and g.dtype == w.dtype, f"%{name}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if element.is_float or element.is_complex:
            wide = np.complex128 if element.is_complex else np.float64
            scale = max(1.0, float(np.max(np.abs(w.astype(wide)))) if w.size else 1.0)
            np.testing.assert_allclose(g.astype(wide), w.astype(wide), rtol=0, atol=tolerance(element) * scale,
                                       err_msg=f"output %{name} on {target}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"output %{name} on {target}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_einsum_cases_f32(target, case):
    check(CASES[case]("f32"), target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", REQUIRED_DTYPES)
def test_required_dtypes(target, dtype):
    for case in ("gemm", "chain", "trace_diag", "broadcast"):
        check(CASES[case](dtype), target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", sorted(set(ALL_DTYPES) - set(REQUIRED_DTYPES)))
def test_other_dtypes_run_or_are_refused_at_compile_time(target, dtype):
    for case in ("gemm", "reduce"):
        try:
            check(CASES[case](dtype), target)
        except einfold.UnsupportedError as error:
            assert dtype in str(error) or dt.dtype(dtype).numpy.name in str(error), str(error)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_every_op_kind(target, dtype):
    check(mlp_with_everything(dtype), target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples(target, example):
    program = einfold.load_ein(example)
    try:
        check(program, target)
    except einfold.UnsupportedError as error:
        pytest.fail(f"{example.name} is not supported on {target}: {error}")


def test_examples_exist():
    assert {"mlp", "attention", "tucker", "dft", "bilinear"} <= {p.stem for p in EXAMPLES}
