"""Einsum conformance: einfold agrees with numpy on random einsums over every dtype, through three doors:
`einfold.einsum(target='numpy')`, a Program run through `einfold.compile`, and `einfold.einsum` on a compiled target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import EinsumCase, assert_einsum_matches, check_target, einsum_cases, einsum_program, random_values

import einfold
from einfold import backends
from einfold.dtypes import ALL_NAMES

COMPILED = "numpy-compiled"  # the reference backend under a second name, so einfold.einsum compiles for it


@pytest.fixture(scope="module", autouse=True)
def compiled_target():
    backends.register(COMPILED, "einfold.backends.numpy_ref")
    yield
    del backends.BACKENDS[COMPILED]


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """('ok', result) or ('error', exception class): what a call did, for comparing two implementations."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as error:  # any exception numpy raises, einfold must raise too
        return "error", type(error)


def led_by(name: str) -> st.SearchStrategy[EinsumCase]:
    """Cases whose first (and most often drawn) dtype is `name`; the others appear as partners."""
    return einsum_cases(dtypes=(name, *(other for other in ALL_NAMES if other != name)))


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(max_examples=15, deadline=None)
@given(data=st.data(), optimize=st.booleans())
def test_numpy_target_is_numpy(name: str, data: st.DataObject, optimize: bool):
    case = data.draw(led_by(name))
    want = outcome(np.einsum, case.subscripts, *case.operands, optimize=optimize)
    got = outcome(einfold.einsum, case.subscripts, *case.operands, optimize=optimize, target="numpy")
    assert got[0] == want[0], f"numpy: {want}, einfold: {got}"
    if want[0] == "error":
        assert issubclass(got[1], want[1]), f"numpy raised {want[1]}, einfold {got[1]}"
        return
    assert type(got[1]) is type(want[1])
    assert np.asarray(got[1]).dtype == np.asarray(want[1]).dtype
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_program_einsum_on_numpy_target(name: str, data: st.DataObject):
    check_target(data.draw(led_by(name)), "numpy")


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_einsum_on_a_compiled_target(name: str, data: st.DataObject):
    case = data.draw(led_by(name))
    assert_einsum_matches(einfold.einsum(case.subscripts, *case.operands, target=COMPILED),
                          case.subscripts, case.operands)


@settings(max_examples=60, deadline=None)
@given(einsum_cases(max_operands=3))
def test_normalised_spec_is_exact(case: EinsumCase):
    """The normalised spec has letters only, explicit output, and every index the same size everywhere."""
    parsed = einfold.spec.parse_subscripts(case.subscripts, [a.shape for a in case.operands])
    text = str(parsed.spec)
    assert "..." not in text and text.count("->") == 1
    assert einfold.EinsumSpec.parse(text).sizes([a.shape for a in case.operands]) == parsed.sizes


@pytest.mark.parametrize("name", ["bool", "i8", "u64", "f16", "bf16", "f32", "f64", "c64", "c128"])
def test_checker_rejects_wrong_answers(name: str):
    """The comparison is not vacuous: a wrong value, dtype or shape fails it."""
    rng = np.random.default_rng(0)
    case = EinsumCase("ij,jk->ik", (random_values(rng, (3, 4), name), random_values(rng, (4, 2), name)))
    right = einfold.compile(einsum_program(case))(*case.operands)
    assert_einsum_matches(right, *case)
    wrong = right.copy()
    wrong[0, 0] = ~wrong[0, 0] if name == "bool" else wrong[0, 0] + 1
    other_dtype = {"f64": np.float32, "c64": np.complex128, "c128": np.complex64}.get(name, np.float64)
    for bad in (wrong, right.astype(other_dtype), right[:, :1]):
        with pytest.raises(AssertionError):
            assert_einsum_matches(bad, *case)
