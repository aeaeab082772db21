"""Tracing Python functions into Programs: numpy-style operators on Tensors, weights captured from numpy arrays,
scalar functions (eager on arrays), the `einfold.function` decorator and its per-signature cache, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import einfold
from einfold import IRError, SpecError, UnsupportedError
from einfold.frontend.tracing import Tensor

RNG = np.random.default_rng(11)
W1 = RNG.standard_normal((8, 16)).astype(np.float32)
B1 = RNG.standard_normal(16).astype(np.float32)
W2 = RNG.standard_normal((16, 3)).astype(np.float32)


def numpy_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def run(program: einfold.Program, *arrays: np.ndarray):
    return einfold.compile(program, target="numpy")(*arrays)


def mlp(x):
    return einfold.gelu(x @ W1 + B1) @ W2


def test_traced_mlp_equals_numpy():
    program = einfold.trace(mlp, (4, 8))
    assert [op.result for op in program.inputs] == ["x"]
    assert sorted(op.attrs["name"] for op in program.consts) == ["B1", "W1", "W2"]
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    got = run(program, x)
    assert got.dtype == np.float32 and got.shape == (4, 3)
    np.testing.assert_allclose(got, numpy_gelu(x @ W1 + B1) @ W2, rtol=1e-5, atol=1e-5)


def attention(q, k, v):
    scores = einfold.einsum("nd,md->nm", q, k) / math.sqrt(q.shape[-1])
    weights = einfold.exp(scores)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    return weights @ v


def test_traced_attention_equals_numpy():
    q, k, v = (RNG.standard_normal(shape).astype(np.float32) for shape in [(5, 4), (7, 4), (7, 6)])
    program = einfold.trace(attention, q, k, v)
    assert [op.result for op in program.inputs] == ["q", "k", "v"]
    scores = q @ k.T / 2.0
    probabilities = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    got = run(program, q, k, v)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, probabilities @ v, rtol=1e-5, atol=1e-6)


def test_example_arguments_give_input_types():
    program = einfold.trace(lambda a, b, c: (a, b, c), np.zeros((2, 3), np.int16), (4, 5), ((6,), "bf16"))
    assert [str(op.type) for op in program.inputs] == ["i16[2,3]", "f32[4,5]", "bf16[6]"]
    program = einfold.trace(lambda *xs: xs[0] + xs[1], (3,), (3,), name="pair")
    assert program.name == "pair" and [op.result for op in program.inputs] == ["xs0", "xs1"]


@pytest.mark.parametrize("fn, dtype, want_dtype", [
    (lambda x: x * 2.0, "f32", "f32"),  # Python numbers are weak, as in numpy
    (lambda x: x * 1.5, "i8", "f64"),
    (lambda x: x + 1, "bool", "i64"),
    (lambda x: x + 1j, "f32", "c64"),
    (lambda x: 1 / x, "i32", "f64"),  # true division, as numpy's `/`
    (lambda x: 2 - x, "f64", "f64"),
    (lambda x: 2 ** x, "f16", "f16"),
    (lambda x: x ** 2, "i16", "i16"),
    (lambda x: -x, "i32", "i32"),
    (lambda x: np.float32(3) * x, "f16", "f32"),  # numpy scalars are strong
    (lambda x: np.arange(3.0) + x, "f32", "f64"),  # numpy arrays become weights with their own dtype
    (lambda x: x.sum(), "i8", "i64"),  # numpy's sum widens small integers
    (lambda x: x.sum(axis=0), "u16", "u64"),
    (lambda x: x.astype(np.complex128) * 2, "f32", "c128"),
])
def test_operators_follow_numpy(fn, dtype, want_dtype):
    x = (np.arange(1, 4) * 0.5 + 1).astype(einfold.DType(dtype).numpy)
    program = einfold.trace(fn, x)
    got = run(program, x)
    want = np.asarray(fn(x))
    assert str(program.type_of(program.outputs[0]).dtype) == want_dtype
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("fn, shapes", [
    (lambda x, y: x @ y, [(3, 4), (4, 5)]),
    (lambda x, y: x @ y, [(2, 3, 4), (4, 5)]),
    (lambda x, y: x @ y, [(2, 1, 3, 4), (5, 4, 2)]),  # batch dimensions broadcast
    (lambda x, y: x @ y, [(4,), (2, 4, 3)]),
    (lambda x, y: x @ y, [(2, 3, 4), (4,)]),
    (lambda x, y: x @ y, [(4,), (4,)]),
    (lambda x, y: x.T @ y.T, [(4, 3), (5, 4)]),
    (lambda x, y: (x.reshape(-1) * y.reshape(2, 3).T.reshape(6)).reshape((3, 2)), [(2, 3), (6,)]),
    (lambda x, y: x.sum(axis=(0, -1), keepdims=True) + y.sum(1), [(2, 3, 4), (3, 5)]),
    (lambda x, y: np.ones((5, 4)) @ x @ y, [(4, 3), (3,)]),  # an array on the left defers to the Tensor
])
def test_shapes_follow_numpy(fn, shapes):
    arrays = [RNG.standard_normal(shape) for shape in shapes]
    got = run(einfold.trace(fn, *shapes), *(a.astype(np.float32) for a in arrays))
    want = fn(*(a.astype(np.float32) for a in arrays))
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_einsum_in_a_trace():
    bias = RNG.standard_normal((2, 5))

    def fn(x, y):
        both = einfold.einsum("...ij,jk->...ik", x, y)
        return einfold.einsum(both, [0, 1, 2], bias, [0, 2], [0, 2]), einfold.einsum("ij->", y, dtype="f64")

    x, y = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((4, 5))
    program = einfold.trace(fn, x.astype(np.float32), y.astype(np.float32))
    first, second = run(program, x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(first, ((x @ y) * bias[:, None, :]).sum(1), rtol=1e-5)
    assert second.dtype == np.float64
    np.testing.assert_allclose(second, y.astype(np.float32).sum(dtype=np.float64), rtol=1e-12)
    with pytest.raises(TypeError, match="according to the rule 'safe'"):
        einfold.trace(lambda x: einfold.einsum("i->", x, dtype="i32"), (3,))
    with pytest.raises(SpecError, match="out="):
        einfold.trace(lambda x: einfold.einsum("i->", x, out=np.zeros(())), (3,))


def test_weights_are_named_readably_and_uniquely():
    def layer(x, weight):
        return x @ weight

    def fn(x):
        back = layer(layer(x, W1), W1.T.copy())  # W1, then another array, both called `weight` in `layer`
        return back + layer(x, W1) @ W1.T  # W1 again (one weight); W1.T is a new, nameless array

    program = einfold.trace(fn, (2, 8))
    names = [op.attrs["name"] for op in program.consts]
    assert names == ["weight", "weight_1", "w2"]
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(run(program, x), fn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, reference", [
    ("relu", lambda x: np.maximum(x, 0)),
    ("exp", np.exp),
    ("log", np.log),
    ("tanh", np.tanh),
    ("gelu", numpy_gelu),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("sqrt", np.sqrt),
    ("square", np.square),
])
def test_scalar_functions_traced_and_eager(name, reference):
    fn = getattr(einfold, name)
    x = RNG.uniform(0.1, 2.0, (3, 4)).astype(np.float32)
    eager = fn(x)
    assert eager.dtype == np.float32
    np.testing.assert_allclose(eager, reference(x), rtol=1e-6)
    np.testing.assert_allclose(run(einfold.trace(fn, x), x), reference(x), rtol=1e-6)


def test_scalar_functions_promote_integers_like_numpy():
    for dtype in (np.int8, np.int16, np.int32, np.bool_):
        x = np.arange(1, 4).astype(dtype)
        assert einfold.exp(x).dtype == np.exp(x).dtype
        traced = run(einfold.trace(einfold.sqrt, x), x)
        assert traced.dtype == np.sqrt(x).dtype
        np.testing.assert_allclose(traced, np.sqrt(x), rtol=1e-3)
    assert einfold.relu(np.array([-2, 3], np.int32)).dtype == np.int32


def test_poly():
    x = RNG.standard_normal(5)
    np.testing.assert_allclose(einfold.poly(x, [1.0, -2.0, 0.5]), 1 - 2 * x + 0.5 * x**2, rtol=1e-12)
    program = einfold.trace(lambda t: einfold.poly(t, [1, 2, 3]), ((3,), "i64"))
    ints = np.array([-2, 0, 5])
    np.testing.assert_array_equal(run(program, ints), 1 + 2 * ints + 3 * ints**2)
    with pytest.raises(IRError, match="integer coefficients"):
        einfold.trace(lambda t: einfold.poly(t, [0.5, 1]), ((3,), "i32"))
    with pytest.raises(IRError, match="at least one coefficient"):
        einfold.poly(x, [])


def test_function_decorator_traces_once_per_signature():
    traced = []

    @einfold.function(target="numpy")
    def affine(x, w):
        traced.append(x.shape)
        return x @ w + 1.0

    x, w = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 2))
    np.testing.assert_allclose(affine(x, w), x @ w + 1, rtol=1e-12)
    np.testing.assert_allclose(affine(2 * x, w), 2 * x @ w + 1, rtol=1e-12)
    assert traced == [(3, 4)] and len(affine.signatures) == 1
    affine(x[:2], w)  # a new shape
    affine(x.astype(np.float32), w.astype(np.float32))  # new dtypes
    assert traced == [(3, 4), (2, 4), (3, 4)] and len(affine.signatures) == 3
    assert affine(x.astype(np.float32), w.astype(np.float32)).dtype == np.float32
    assert affine.__name__ == "affine" and affine.executable(x, w).target == "numpy"
    assert len(traced) == 3


def test_function_decorator_bare_and_tuples():
    @einfold.function
    def split(x):
        return (x * 2,)

    @einfold.function(passes=["dce"])
    def pair(x):
        return einfold.relu(x), -x

    x = RNG.standard_normal(4)
    (doubled,) = split(x)
    np.testing.assert_array_equal(doubled, 2 * x)
    positive, negative = pair(x)
    np.testing.assert_array_equal(positive, np.maximum(x, 0))
    np.testing.assert_array_equal(negative, -x)
    stages = pair.executable(x).stages  # the compile options reach einfold.compile
    assert "dce" in stages and "cse" not in stages
    with pytest.raises(IRError, match="positionally"):
        pair(x=x)


def test_errors():
    with pytest.raises(IRError, match="must return a Tensor"):
        einfold.trace(lambda x: 3, (2,))
    with pytest.raises(IRError, match="output 1 is a ndarray"):
        einfold.trace(lambda x: (x, np.ones(2)), (2,))
    with pytest.raises(IRError, match="Python `if`"):
        einfold.trace(lambda x: x if x else -x, (2,))
    with pytest.raises(IRError, match="does not exist while tracing"):
        einfold.trace(lambda x: float(x.sum()) * x, (2,))
    with pytest.raises(IRError, match="conversion to a numpy array"):
        einfold.trace(lambda x: np.asarray(x), (2,))
    with pytest.raises(IRError, match=r"%x: f32\[3\] \+ %y: f32\[4\]`: .*do not broadcast"):
        einfold.trace(lambda x, y: x + y, (3,), (4,))
    with pytest.raises(IRError, match=r"contracted dimensions differ \(3 != 4\)"):
        einfold.trace(lambda x, y: x @ y, (2, 3), (4, 5))
    with pytest.raises(IRError, match="batch dimensions"):
        einfold.trace(lambda x, y: x @ y, (2, 3, 4), (3, 4, 5))
    with pytest.raises(IRError, match="at least one dimension"):
        einfold.trace(lambda x, y: x @ y, (), (3,))
    with pytest.raises(SpecError, match="index 'j' has size 4"):
        einfold.trace(lambda x, y: einfold.einsum("ij,jk", x, y), (2, 3), (4, 5))
    with pytest.raises(IRError, match="reshape"):
        einfold.trace(lambda x: x.reshape(4, 2), (2, 3))
    with pytest.raises(IRError, match="axis 2 is out of bounds"):
        einfold.trace(lambda x: x.sum(axis=2), (2, 3))
    with pytest.raises(IRError, match="out of bounds for i8"):
        einfold.trace(lambda x: x + 300, ((2,), "i8"))
    with pytest.raises(IRError, match="neg is not defined on bool"):
        einfold.trace(lambda x: -x, ((2,), "bool"))
    with pytest.raises(IRError, match="needs a float"):
        einfold.trace(lambda x: einfold.exp(x), ((2,), "zq(97)"))
    with pytest.raises(UnsupportedError, match="indexing"):
        einfold.trace(lambda x: x[0], (2,))
    with pytest.raises(UnsupportedError, match="comparisons"):
        einfold.trace(lambda x: x > 0, (2,))
    with pytest.raises(IRError, match="cannot use a list"):
        einfold.trace(lambda x: x + [1, 2], (2,))
    with pytest.raises(IRError, match=r"takes 2 to 2 tensor argument\(s\) \(x, y\), but 1"):
        einfold.trace(lambda x, y: x, (2,))
    with pytest.raises(IRError, match="must be a numpy array, a shape tuple or"):
        einfold.trace(lambda x: x, "f32")


def test_tensors_from_another_trace_are_refused():
    leaked: list[Tensor] = []
    einfold.trace(lambda x: leaked.append(x) or x, (2,))
    with pytest.raises(IRError, match="different traces"):
        einfold.trace(lambda y: y + leaked[0], (2,))


def test_tensor_reports_shape_and_dtype():
    def fn(x):
        assert isinstance(x, Tensor)
        assert (x.shape, str(x.dtype), x.ndim, x.size, len(x)) == ((2, 3), "f64", 2, 6, 2)
        assert repr(x) == "Tensor(%x: f64[2,3])"
        return x

    assert einfold.trace(fn, ((2, 3), "f64")).outputs == ["x"]
