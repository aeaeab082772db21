"""`einfold.einsum` as a drop-in for `numpy.einsum`: out=, dtype=, casting=, object and bool arrays, sublists,
numpy's error types; on the numpy target and on a compiled target (executables cached per signature)."""

from __future__ import annotations

import numpy as np
import pytest
from strategies import assert_einsum_matches, random_values

import einfold
from einfold import SpecError, UnsupportedError, backends
from einfold.frontend import numpy_api

COMPILED = "numpy-compiled"  # the reference backend under a second name, so einfold.einsum compiles for it
TARGETS = ["numpy", COMPILED]


@pytest.fixture(scope="module", autouse=True)
def compiled_target():
    backends.register(COMPILED, "einfold.backends.numpy_ref")
    yield
    del backends.BACKENDS[COMPILED]


def raised(fn, *args, **kwargs) -> BaseException:
    """The exception a call raises (the test fails if it raises none)."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return info.value


RNG = np.random.default_rng(7)
A, B, C = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 5)), RNG.standard_normal((5, 3))


@pytest.mark.parametrize("subscripts, operands", [
    ("ij,jk->ik", (A, B)),
    ("ij,jk,ki", (A, B, C)),
    ("ii", (A @ A.T,)),
    ("ii->i", (A @ A.T,)),
    ("i,i", (A[0], A[1])),
    ("...j,jk", (A, B)),
    ("ij,ij->ij", (A[:, :1], A)),
    (",ij", (2.0, A)),
    ("i,i", ([1, 2, 3], [4, 5, 6])),
])
@pytest.mark.parametrize("optimize", [False, True])
def test_numpy_target_is_numpy_itself(subscripts, operands, optimize):
    want = np.einsum(subscripts, *operands, optimize=optimize)
    got = einfold.einsum(subscripts, *operands, optimize=optimize)
    assert type(got) is type(want)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("subscripts, operands", [
    ("ij,jk->ik", (A, B)),
    ("ij,jk,ki", (A, B, C)),
    ("ii->i", (A @ A.T,)),
    ("i,i", (A[0], A[1])),
    ("...j,jk", (A, B)),
    (",ij", (2.0, A)),
    ("i,i", ([1, 2, 3], [4, 5, 6])),
])
def test_compiled_target_matches_numpy(subscripts, operands):
    want = np.einsum(subscripts, *operands)
    got = einfold.einsum(subscripts, *operands, target=COMPILED)
    assert type(got) is type(want)  # a 0-d result is a numpy scalar, as numpy's
    assert np.asarray(got).dtype == np.asarray(want).dtype
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_out(target):
    out = np.full((3, 5), np.nan)
    assert einfold.einsum("ij,jk->ik", A, B, out=out, target=target) is out
    np.testing.assert_allclose(out, A @ B, rtol=1e-12)
    scalar_out = np.empty((), np.float64)
    assert einfold.einsum("i,i", A[0], A[1], out=scalar_out, target=target) is scalar_out
    np.testing.assert_allclose(scalar_out, A[0] @ A[1], rtol=1e-12)
    wider = np.zeros((3, 5), np.complex128)  # f64 -> c128 is a safe cast
    einfold.einsum("ij,jk->ik", A, B, out=wider, target=target)
    np.testing.assert_allclose(wider, A @ B, rtol=1e-12)
    strided = np.zeros((3, 10))[:, ::2]
    einfold.einsum("ij,jk->ik", A, B, out=strided, target=target)
    np.testing.assert_allclose(strided, A @ B, rtol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_dtype_and_casting(target):
    ints = np.arange(6, dtype=np.int64).reshape(2, 3)
    got = einfold.einsum("ij,ij->i", ints, ints, dtype=np.float64, target=target)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [5, 50])
    got = einfold.einsum("ij,ij->i", ints, ints, dtype="f4", casting="unsafe", target=target)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [5, 50])
    out = np.empty(2, np.float32)
    einfold.einsum("ij,ij->i", ints * 1.0, ints * 1.0, out=out, casting="same_kind", target=target)
    np.testing.assert_array_equal(out, [5, 50])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kwargs", [
    {"dtype": np.float32},  # i64 -> f32 is not a safe cast
    {"dtype": np.int32, "casting": "no"},
    {"out": np.empty(2, np.float32)},  # computed in f64 (i64 with f32), which cannot go into f32 safely
    {"out": np.empty(2, np.int32), "casting": "equiv"},  # einsum reads out= too: i32 -> i64 is not 'equiv'
    {"out": np.empty(2, np.int32), "dtype": np.float64, "casting": "same_kind"},
    {"out": np.empty(2, np.float64), "casting": "no", "operands": (np.float32, np.float32)},
    {"casting": "no", "operands": (np.float32, np.float64)},
])
def test_casting_errors_are_numpys(target, kwargs):
    """The same TypeError, with the same message, as numpy's einsum."""
    kwargs = dict(kwargs)
    first, second = kwargs.pop("operands", (np.int64, np.int64))
    ints = np.arange(6).reshape(2, 3)
    want = raised(np.einsum, "ij,ij->i", ints.astype(first), ints.astype(second), **kwargs)
    got = raised(einfold.einsum, "ij,ij->i", ints.astype(first), ints.astype(second), target=target, **kwargs)
    assert type(want) is TypeError and isinstance(got, TypeError)
    assert str(got) == str(want)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("subscripts, operands, kwargs", [
    ("ij,jk", (A,), {}),  # too few operands
    ("ij", (A, B), {}),  # too many operands
    ("ij,jk->ik", (A, A), {}),  # mismatched sizes
    ("ij->ik", (A,), {}),  # output label not in the inputs
    ("ij->ii", (A,), {}),  # repeated output label
    ("i#", (A,), {}),  # bad character
    ("ii", (A,), {}),  # diagonal of a non-square operand
    ("...i->i", (A,), {}),  # '...' in the inputs but not in the output
    ("ij,jk->ik", (A, B), {"out": np.empty((2, 2))}),  # out= of the wrong shape
    ("ij,jk->ik", (A, B), {"out": [[0.0]]}),  # out= not an array
    ("ij,jk->ik", (A, B), {"casting": "bogus"}),
    ("ij->ij", (A,), {"out": np.broadcast_to(np.empty(4), (3, 4))}),  # read-only out=
])
def test_error_types_are_numpys(target, subscripts, operands, kwargs):
    want = raised(np.einsum, subscripts, *operands, **kwargs)
    got = raised(einfold.einsum, subscripts, *operands, target=target, **kwargs)
    assert isinstance(got, type(want)), f"numpy raised {type(want).__name__}, einfold {type(got).__name__}: {got}"
    if target != "numpy":
        assert isinstance(got, (einfold.Error, TypeError))


def test_spec_errors_carry_a_caret():
    error = raised(einfold.einsum, "ij,jk->iz", A, B)
    assert isinstance(error, SpecError)
    assert str(error).splitlines()[-1] == " " * (4 + 8) + "^"


def test_object_arrays_on_numpy_and_refused_when_compiled():
    big = np.array([2**70, 3], dtype=object)
    got = einfold.einsum("i,i", big, big, optimize=False)
    assert got == 2**140 + 9 and isinstance(got, int)  # exact Python integers, as numpy gives
    assert einfold.einsum("i,i", big, big)[()] == 2**140 + 9  # the optimized default: numpy's 0-d object array
    mixed = einfold.einsum("i,i->i", big, np.array([1.5, 2.0]))
    assert mixed.dtype == object and list(mixed) == [2**70 * 1.5, 6.0]
    with pytest.raises(UnsupportedError, match="target='numpy'"):
        einfold.einsum("i,i", big, big, target=COMPILED)


@pytest.mark.parametrize("target", TARGETS)
def test_bool_arrays(target):
    a = RNG.random((4, 3)) < 0.4
    b = RNG.random((3, 5)) < 0.4
    got = einfold.einsum("ij,jk->ik", a, b, target=target)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, np.einsum("ij,jk->ik", a, b))
    np.testing.assert_array_equal(got, (a.astype(int) @ b.astype(int)) > 0)
    mixed = einfold.einsum("ij,jk->ik", a, b.astype(np.int8), target=target)
    assert mixed.dtype == np.int8
    np.testing.assert_array_equal(mixed, a.astype(np.int8) @ b.astype(np.int8))


@pytest.mark.parametrize("target", TARGETS)
def test_sublist_form(target):
    np.testing.assert_allclose(einfold.einsum(A, [0, 1], B, [1, 2], [0, 2], target=target), A @ B, rtol=1e-12)
    np.testing.assert_allclose(einfold.einsum(A, [0, 1], B, [1, 2], target=target), A @ B, rtol=1e-12)
    np.testing.assert_allclose(einfold.einsum(A, [Ellipsis, 1], [Ellipsis], target=target), A.sum(1), rtol=1e-12)
    out = np.empty((4, 3))
    assert einfold.einsum(A, [0, 1], [1, 0], out=out, target=target) is out
    np.testing.assert_array_equal(out, A.T)
    assert isinstance(raised(einfold.einsum, A, [0, 1.5], target=target), TypeError)
    assert isinstance(raised(einfold.einsum, A, [0, 60], target=target), ValueError)


@pytest.mark.parametrize("target", TARGETS)
def test_zero_size_dimensions(target):
    empty = np.ones((0, 3))
    np.testing.assert_array_equal(einfold.einsum("ij,jk->ik", empty, B[:3], target=target), np.zeros((0, 5)))
    assert einfold.einsum("i,i", np.ones(0), np.ones(1), target=target) == 0.0
    assert isinstance(raised(einfold.einsum, "i,i", np.ones(0), np.ones(3), target=target), ValueError)


@pytest.mark.parametrize("name", einfold.dtypes.ALL_NAMES)
def test_compiled_dtypes(name):
    rng = np.random.default_rng(3)
    a, b = random_values(rng, (3, 4), name), random_values(rng, (4, 5), name)
    got = einfold.einsum("ij,jk->ik", a, b, target=COMPILED)
    assert_einsum_matches(got, "ij,jk->ik", (a, b))


def test_executables_are_cached_per_signature():
    numpy_api.clear_cache()
    einfold.einsum("ij,jk->ik", A, B, target=COMPILED)
    einfold.einsum("ij,jk->ik", A + 1, B, target=COMPILED)
    assert numpy_api.cache_info().misses == 1 and numpy_api.cache_info().hits == 1
    einfold.einsum("ij,jk->ik", A[:2], B, target=COMPILED)  # another shape
    einfold.einsum("ij,jk->ik", A.astype(np.float32), B.astype(np.float32), target=COMPILED)  # another dtype
    einfold.einsum("ij,jk->ik", A, B, dtype=np.complex128, target=COMPILED)  # another compute dtype
    info = numpy_api.cache_info()
    assert (info.misses, info.hits, info.size) == (4, 1, 4)


def test_executable_cache_is_bounded_lru():
    cache = numpy_api.ExecutableCache(maxsize=2)
    built = []

    def build(key):
        built.append(key)
        return einfold.compile("i->", shapes=[(key,)])

    for key in (1, 2, 1, 3, 1, 2):
        cache.get(key, lambda key=key: build(key))
    assert built == [1, 2, 3, 2]  # 1 was used recently, so 2 was evicted when 3 came
    assert cache.info() == numpy_api.CacheInfo(hits=2, misses=4, size=2, maxsize=2)


def test_unknown_target():
    with pytest.raises(UnsupportedError, match="unknown target 'nope'"):
        einfold.einsum("ij,jk", A, B, target="nope")


def test_traced_operands_give_a_tensor():
    from einfold.frontend.tracing import Tensor

    def fn(x):
        y = einfold.einsum("ij,jk->ik", x, B)
        assert isinstance(y, Tensor) and y.shape == (3, 5)
        return y

    program = einfold.trace(fn, A)
    np.testing.assert_allclose(einfold.compile(program)(A), A @ B, rtol=1e-12)
