"""The `llvm` GEMM's packing paths on odd shapes: B copied by vector rows (also through an offset table), B
transposed in registers (k runs consecutive, through a stride or a table, ragged k), A by rows (also through a k
table) or, column-major, k-outside, element copies where nothing is consecutive; each against numpy at tight
tolerances, f32/f64/i32/i64, 1-2 threads."""

from __future__ import annotations

import numpy as np
import pytest

import einfold
from einfold.driver import spec_program

# spec, shapes, what the lowering note must say about packing (f32 names its 8x8 blocks, f64 its 4x4 ones)
CASES = {
    "B rows through a table (runs of 32)": ("ab,cbd->acd", [(9, 20), (3, 20, 32)], "B packed by vector rows"),
    "B rows, ragged runs of 37": ("ab,cbd->acd", [(7, 13), (5, 13, 37)], "B packed by vector rows"),
    "B rows, partial last panel": ("ik,kj->ij", [(50, 67), (67, 45)], "B packed by vector rows"),
    "B transposed, ragged k and rows": ("bhqd,bhkd->bhqk", [(2, 3, 29, 19), (2, 3, 37, 19)],
                                        "A packed by rows, B packed in {b}"),
    "B transposed through a k table": ("abc,bdc->ad", [(13, 11, 19), (11, 40, 19)], "B packed in {b}"),
    "A by rows through a k table": ("bac,bdc->ad", [(11, 13, 19), (11, 40, 19)], "A packed by rows"),
    "A column-major, edge rows": ("cde,fc->def", [(19, 13, 21), (35, 19)], "A packed by columns"),
    "B by elements": ("ik,kjx->ixj", [(14, 30), (30, 9, 5)], "B packed in elements"),
    "A in place, B transposed": ("abc,bdc->ad", [(20, 9, 40), (9, 7, 40)], "A read in place, B packed in {b}"),
}
LANES = {"f32": 8, "f64": 4, "i32": 8, "i64": 4}
TOLERANCE = {"f32": 1e-5, "f64": 1e-13}


def run_case(spec: str, shapes: list[tuple[int, ...]], dtype: str, threads: int, seed: int = 0):
    exe = einfold.compile(spec_program(spec, shapes, dtype), target="llvm", threads=threads)
    rng = np.random.default_rng(seed)
    if dtype.startswith("i"):
        inputs = [rng.integers(-9, 10, size=shape).astype(np.dtype(dtype.replace("i", "int"))) for shape in shapes]
    else:
        inputs = [rng.uniform(-1.0, 1.0, size=shape).astype(np.dtype(dtype.replace("f", "float")))
                  for shape in shapes]
    return exe, inputs, exe(*inputs)


def assert_close_to_numpy(spec: str, inputs: list[np.ndarray], got: np.ndarray, dtype: str) -> None:
    if dtype.startswith("i"):
        np.testing.assert_array_equal(got, np.einsum(spec, *inputs, optimize=True))
        return
    wide = [x.astype(np.float64) for x in inputs]
    want = np.einsum(spec, *wide, optimize=True)
    scale = np.einsum(spec, *(np.abs(x) for x in wide), optimize=True)  # rounding grows with the sum of |terms|
    assert got.shape == want.shape and got.dtype == inputs[0].dtype
    error = np.abs(got.astype(np.float64) - want)
    assert np.all(error <= TOLERANCE[dtype] * scale), float(np.max(error / scale))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_packing_paths_match_numpy(name: str, dtype: str, threads: int) -> None:
    spec, shapes, note = CASES[name]
    exe, inputs, got = run_case(spec, shapes, dtype, threads)
    lanes = LANES[dtype]
    lowering = exe.stats()["llvm_lowering"][0]
    assert "gemm" in lowering and note.format(b=f"{lanes}x{lanes} transposed blocks") in lowering, lowering
    assert_close_to_numpy(spec, inputs, got, dtype)


@pytest.mark.parametrize("dtype", ["i32", "i64"])
@pytest.mark.parametrize("name", ["B transposed, ragged k and rows", "B transposed through a k table",
                                  "A by rows through a k table", "B rows, ragged runs of 37",
                                  "A column-major, edge rows"])
def test_integer_packing_paths_are_exact(name: str, dtype: str) -> None:
    spec, shapes, _ = CASES[name]
    exe, inputs, got = run_case(spec, shapes, dtype, threads=2)
    assert "gemm" in exe.stats()["llvm_lowering"][0]
    assert_close_to_numpy(spec, inputs, got, dtype)


def test_several_k_and_row_blocks() -> None:
    """k past one KC block (accumulating into C) and rows past one MC block, with every packing path in play."""
    for spec, shapes in [("bhqd,bhkd->bhqk", [(1, 2, 131, 300), (1, 2, 45, 300)]),
                         ("cde,fc->def", [(270, 11, 23), (20, 270)]),
                         ("abc,bdc->ad", [(130, 3, 200), (3, 50, 200)])]:
        for threads in (1, 2):
            _, inputs, got = run_case(spec, shapes, "f32", threads, seed=threads)
            assert_close_to_numpy(spec, inputs, got, "f32")


def test_benchmark_shapes_match_numpy() -> None:
    """The issue's odd-shaped benchmark cases at full size (their binary steps take the paths above)."""
    cases = [("bn,anm,bm->ba", [(64, 128), (64, 128, 128), (64, 128)]),
             ("ijk,jr,kr->ir", [(128, 128, 128), (128, 32), (128, 32)]),
             ("abc,ia,jb,kc->ijk", [(32, 32, 32), (128, 32), (128, 32), (128, 32)]),
             ("bhqd,bhkd->bhqk", [(4, 8, 256, 64), (4, 8, 256, 64)])]
    for spec, shapes in cases:
        _, inputs, got = run_case(spec, shapes, "f32", threads=2)
        assert_close_to_numpy(spec, inputs, got, "f32")
