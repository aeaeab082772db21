"""Hypothesis strategies for einsum cases, and the check that a compiled target agrees with numpy on them.

    @settings(max_examples=50, deadline=None)
    @given(einsum_cases(dtypes=("f32", "i32")))
    def test_my_target(case):
        check_target(case, "my-target")
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

import einfold
from einfold import dtypes as dt
from einfold.spec import LETTERS


class EinsumCase(NamedTuple):
    """An einsum in numpy's notation and operands that fit it."""

    subscripts: str
    operands: tuple[np.ndarray, ...]


def _promotes(a: str, b: str) -> bool:
    try:
        dt.result_type(dt.dtype(a), dt.dtype(b))
    except einfold.IRError:
        return False
    return True


# Pairs of dtypes with a common type (bf16 has none with f16, i16..i64, u16..u64).
PROMOTABLE = {a: tuple(b for b in dt.ALL_NAMES if _promotes(a, b)) for a in dt.ALL_NAMES}

# Bound on the einsum's loop volume (product of all index sizes), so every example runs in microseconds.
MAX_VOLUME = 4096


def random_values(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Small values of dtype `name`: floats in [-1, 1) (so f16 sums stay finite), integers in [-8, 8]."""
    element = dt.dtype(name)
    if name == "bool":
        return rng.random(shape) < 0.5
    if element.is_int:
        low = 0 if name.startswith("u") else -8
        return rng.integers(low, 9, shape).astype(element.numpy)
    values = rng.uniform(-1, 1, shape)
    if element.is_complex:
        values = values + 1j * rng.uniform(-1, 1, shape)
    return values.astype(element.numpy)


@st.composite
def einsum_cases(draw: Any, dtypes: tuple[str, ...] = dt.ALL_NAMES, max_operands: int = 6, max_dim: int = 4,
                 max_rank: int = 3, mixed_dtypes: bool = True, ellipsis: bool = True, broadcasting: bool = True,
                 implicit: bool = True) -> EinsumCase:
    """Random valid einsums: 1..max_operands operands, explicit or implicit output, `...` with broadcasting,
    repeated indices in one operand (diagonals), size-1 broadcasting, upper- and lower-case letters."""
    n_operands = draw(st.integers(1, max_operands))
    labels = draw(st.lists(st.sampled_from(LETTERS), min_size=0, max_size=7, unique=True))
    sizes = dict(zip(labels, draw(st.lists(st.integers(1, max_dim), min_size=len(labels), max_size=len(labels))),
                     strict=True))
    batch = tuple(draw(st.lists(st.integers(1, max_dim), max_size=2))) if ellipsis and draw(st.booleans()) else None

    terms, shapes, used = [], [], set()
    for _ in range(n_operands):
        rank = draw(st.integers(0, max_rank)) if labels else 0
        term = draw(st.lists(st.sampled_from(labels), min_size=rank, max_size=rank)) if labels else []
        one = {label for label in set(term) if broadcasting and draw(st.integers(0, 4)) == 0}
        shape = [1 if label in one else sizes[label] for label in term]
        used |= set(term)
        if batch is not None and draw(st.booleans()):
            depth = draw(st.integers(0, len(batch)))
            dims = [1 if broadcasting and draw(st.integers(0, 3)) == 0 else d for d in batch[len(batch) - depth:]]
            at = draw(st.integers(0, len(term)))
            term = [*term[:at], "...", *term[at:]]
            shape = [*shape[:at], *dims, *shape[at:]]
        terms.append("".join(term))
        shapes.append(tuple(shape))

    subscripts = (", " if draw(st.integers(0, 7)) == 0 else ",").join(terms)
    if not implicit or draw(st.integers(0, 2)) > 0:
        order = draw(st.permutations(sorted(used)))
        output = list(order[:draw(st.integers(0, len(order)))])
        if any("..." in term for term in terms):
            output.insert(draw(st.integers(0, len(output))), "...")
        subscripts += "->" + "".join(output)

    volume = math.prod(sizes[label] for label in used) * math.prod(batch or ())
    if volume > MAX_VOLUME:  # shrink every size to at most 2 (a rare, still valid case)
        shapes = [tuple(min(d, 2) for d in shape) for shape in shapes]

    first = draw(st.sampled_from(dtypes))
    names = [first] * n_operands
    partners = [b for b in PROMOTABLE[first] if b in dtypes and b != first]
    if mixed_dtypes and n_operands > 1 and partners and draw(st.booleans()):
        second = draw(st.sampled_from(partners))
        names = [draw(st.sampled_from((first, second))) for _ in range(n_operands)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return EinsumCase(subscripts, tuple(random_values(rng, shape, name) for shape, name in zip(shapes, names,
                                                                                                 strict=True)))


# ----- the oracle -----------------------------------------------------------------------------------
HALF = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
# Relative tolerance, against the sum of |products| that make each output element.
RTOL = {"f16": 2e-3, "bf16": 1e-2, "f32": 1e-5, "c64": 1e-5, "f64": 1e-12, "c128": 1e-12}


def result_dtype(operands: tuple[np.ndarray, ...]) -> np.dtype:
    return dt.result_type(*(dt.dtype(a.dtype) for a in operands)).numpy


def expected_einsum(subscripts: str, operands: tuple[np.ndarray, ...]) -> np.ndarray:
    """numpy's answer; f16/bf16 results (which numpy accumulates in f16 or cannot do) are computed in f32 and
    rounded once, and bf16 operands are converted first, since numpy's einsum does not take bf16."""
    result = result_dtype(operands)
    if result in HALF or any(a.dtype in HALF for a in operands):
        compute = np.float32 if result in HALF else result
        return np.asarray(np.einsum(subscripts, *(a.astype(compute) for a in operands))).astype(result)
    return np.asarray(np.einsum(subscripts, *operands))


def magnitude(subscripts: str, operands: tuple[np.ndarray, ...]) -> np.ndarray:
    """For each output element, the sum of the |products| that make it: the scale rounding errors are relative to."""
    wide = [np.abs(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)) for a in operands]
    return np.asarray(np.einsum(subscripts, *wide))


def assert_einsum_matches(got: Any, subscripts: str, operands: tuple[np.ndarray, ...]) -> None:
    """`got` equals numpy's einsum: same dtype and shape; exact for bool and integers, within RTOL for floats."""
    want = expected_einsum(subscripts, operands)
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"{subscripts!r}: dtype {got.dtype}, numpy gives {want.dtype}"
    assert got.shape == want.shape, f"{subscripts!r}: shape {got.shape}, numpy gives {want.shape}"
    name = dt.dtype(want.dtype).name
    if name not in RTOL:
        np.testing.assert_array_equal(got, want, err_msg=subscripts)
        return
    finfo = ml_dtypes.finfo(want.dtype)
    tolerance = RTOL[name] * magnitude(subscripts, operands) + 2 * float(finfo.smallest_subnormal)
    wide = np.complex128 if want.dtype.kind == "c" else np.float64
    error = np.abs(got.astype(wide) - want.astype(wide))
    bad = ~((error <= tolerance) | (got.astype(wide) == want.astype(wide)))
    assert not bad.any(), (f"{subscripts!r} ({name}): {int(bad.sum())} element(s) off; worst error "
                           f"{float(np.max(np.where(bad, error, 0)))}\n got: {got[bad][:5]}\nwant: {want[bad][:5]}")


def einsum_program(case: EinsumCase) -> einfold.Program:
    """One `Program.einsum` over inputs in0, in1, ... of the operands' shapes and dtypes."""
    program = einfold.Program("einsum")
    names = [program.input(f"in{k}", a.shape, a.dtype) for k, a in enumerate(case.operands)]
    program.set_outputs(program.einsum(case.subscripts, *names))
    return program


def check_target(case: EinsumCase, target: str = "numpy", **compile_options: Any) -> None:
    """Compile the case for `target` (default passes included), run it, and compare with numpy."""
    executable = einfold.compile(einsum_program(case), target=target, **compile_options)
    assert_einsum_matches(executable(*case.operands), case.subscripts, case.operands)

