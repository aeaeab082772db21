"""The `.ein` language: the shipped examples against numpy, index notation, dims, weights, and error positions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import einfold
from einfold.errors import SourceError
from einfold.frontend.dsl import load_ein
from einfold.reference import run_program

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RNG = np.random.default_rng(1234)


def random_inputs(program: einfold.Program) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(op.type.shape).astype(op.type.dtype.numpy) for op in program.inputs]


def run(source: str, *inputs: np.ndarray, **kwargs) -> list[np.ndarray]:
    program = load_ein(source, **kwargs).verify()
    return run_program(program, list(inputs))


# ----- the shipped examples -------------------------------------------------------------------------------------
def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def expected_mlp(w: dict, x: np.ndarray) -> list[np.ndarray]:
    hidden = np.maximum(x @ w["w1"] + w["b1"], 0)
    return [gelu(hidden @ w["w2"] + w["b2"])]


def expected_attention(w: dict, x: np.ndarray) -> list[np.ndarray]:
    b, t, m = x.shape
    heads, e = 4, m // 4
    q, k, v = ((x @ w[name]).reshape(b, t, heads, e).transpose(0, 2, 1, 3) for name in ("wq", "wk", "wv"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e)
    attn = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, t, m)
    return [attn, out]


def expected_tucker(w: dict, x: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    u1, u2, u3 = w["u1"], w["u2"], w["u3"]
    core = np.tensordot(np.tensordot(np.tensordot(x, u1, ([0], [0])), u2, ([0], [0])), u3, ([0], [0]))
    rebuilt = np.tensordot(np.tensordot(np.tensordot(core, u1.T, ([0], [0])), u2.T, ([0], [0])), u3.T, ([0], [0]))
    proj = np.tensordot(np.tensordot(np.tensordot(t, u1, ([0], [0])), u2, ([0], [0])), u3, ([0], [0]))
    return [rebuilt, proj.transpose(1, 2, 3, 0)]


def expected_dft(w: dict, x: np.ndarray) -> list[np.ndarray]:
    return [np.fft.fft(x, axis=-1)]


def expected_bilinear(w: dict, x1: np.ndarray, x2: np.ndarray) -> list[np.ndarray]:
    bilinear = np.stack([np.sum((x1 @ w["w"][a]) * x2, axis=1) for a in range(w["w"].shape[0])], axis=1)
    return [np.tanh(bilinear + w["bias"])]


def expected_ckks_mlp(w: dict, x: np.ndarray) -> list[np.ndarray]:
    return [np.square(x @ w["w1"] + w["b1"]) @ w["w2"]]


def expected_ckks_attention(w: dict, q: np.ndarray, k: np.ndarray) -> list[np.ndarray]:
    return [np.einsum("bthd,bshd->bhts", q, k)]


EXPECTED = {"mlp": expected_mlp, "attention": expected_attention, "tucker": expected_tucker,
            "dft": expected_dft, "bilinear": expected_bilinear,
            "ckks_mlp": expected_ckks_mlp, "ckks_attention": expected_ckks_attention}


def test_every_example_has_an_oracle():
    assert sorted(p.stem for p in EXAMPLES.glob("*.ein")) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_example_loads_prints_and_round_trips(stem):
    path = EXAMPLES / f"{stem}.ein"
    program = load_ein(path).verify()
    assert program.name == stem
    text = str(program)
    reparsed = einfold.parse_ir(text, weights=program.weights)
    assert str(reparsed) == text
    inputs = random_inputs(program)
    for got, want in zip(run_program(reparsed, inputs), run_program(program, inputs), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_example_compiles_and_matches_numpy(stem):
    path = EXAMPLES / f"{stem}.ein"
    exe = einfold.compile(str(path))
    inputs = random_inputs(exe.program)
    got = exe(*inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    weights = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in exe.program.weights.items()}
    want = EXPECTED[stem](weights, *(x.astype(np.complex128 if x.dtype.kind == "c" else np.float64) for x in inputs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        tolerance = 1e-10 if g.dtype in (np.float64, np.complex128) else 2e-5
        np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance)


def test_example_weights_follow_their_initialisers():
    mlp = load_ein(EXAMPLES / "mlp.ein")
    np.testing.assert_array_equal(mlp.weights["w1"],
                                  (np.random.default_rng(0).uniform(-1, 1, (64, 128)) * 0.125).astype(np.float32))
    np.testing.assert_array_equal(mlp.weights["b1"],
                                  (np.random.default_rng(1).standard_normal(128) * 0.1).astype(np.float32))
    np.testing.assert_array_equal(mlp.weights["b2"], np.zeros(10, np.float32))
    dft = load_ein(EXAMPLES / "dft.ein")
    np.testing.assert_allclose(dft.weights["f"], np.fft.fft(np.eye(64)), atol=1e-12)
    assert dft.weights["f"].dtype == np.complex128


# ----- dims --------------------------------------------------------------------------------------------------
def test_dims_override_changes_shapes_and_results():
    program = load_ein(EXAMPLES / "mlp.ein", dims={"b": 32, "h": 16})
    assert program.type_of("x").shape == (32, 64)
    assert program.type_of("w1").shape == (64, 16)
    assert program.type_of("y").shape == (32, 10)
    x = RNG.standard_normal((32, 64)).astype(np.float32)
    weights = {k: v.astype(np.float64) for k, v in program.weights.items()}
    np.testing.assert_allclose(run_program(program, [x])[0], expected_mlp(weights, x)[0], rtol=2e-5, atol=2e-5)


def test_dim_without_default_takes_the_override():
    source = "dim n\ninput x: f32[n, n*2]\ny = x * 2\nreturn y\n"
    assert load_ein(source, dims={"n": 3}).type_of("y").shape == (3, 6)


def test_dim_products_in_shapes_and_reshape():
    source = "dim b = 2, m = 3\ninput x: f32[b, m*m]\ny = reshape(x, [b, m, -1])\nreturn y\n"
    program = load_ein(source)
    assert program.type_of("y").shape == (2, 3, 3)
    x = RNG.standard_normal((2, 9)).astype(np.float32)
    np.testing.assert_array_equal(run_program(program, [x])[0], x.reshape(2, 3, 3))


# ----- index notation -----------------------------------------------------------------------------------------
INDEX_CASES = [
    ("y[i, k] = a[i, j] * b[j, k]", "ij,jk->ik", [(3, 4), (4, 5)]),
    ("y[k, i] = a[i, j] * b[j, k]", "ij,jk->ki", [(3, 4), (4, 5)]),
    ("y[i] = a[i, i]", "ii->i", [(4, 4)]),
    ("y[] = a[i, i]", "ii->", [(4, 4)]),
    ("y[row, col] = a[row, inner] * b[inner, col]", "ij,jk->ik", [(2, 3), (3, 2)]),
    ("y[b, n, T] = a[b, n, d] * b[b, T, d]", "bnd,bTd->bnT", [(2, 3, 4), (2, 5, 4)]),
    ("y[i, j] = a[i] * b[j]", "i,j->ij", [(3,), (5,)]),
]


@pytest.mark.parametrize("statement, spec, shapes", INDEX_CASES)
def test_index_notation_equals_the_einsum_form(statement, spec, shapes):
    letters = "ab"[:len(shapes)]
    declarations = "".join(f"input {name}: f64[{', '.join(map(str, s))}]\n" for name, s in zip(letters, shapes))
    operands = ", ".join(letters)
    arrays = [RNG.standard_normal(s) for s in shapes]
    indexed = run(declarations + statement + "\nreturn y\n", *arrays)[0]
    called = run(declarations + f'y = einsum("{spec}", {operands})\nreturn y\n', *arrays)[0]
    np.testing.assert_allclose(indexed, np.einsum(spec, *arrays), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(indexed, called)


def test_index_notation_sums_of_scaled_terms():
    source = """input a: f64[3, 4]
input b: f64[4, 3]
input c: f64[3, 3]
y[i, k] = 2 * a[i, j] * b[j, k] - c[k, i] / 4 + -c[i, k]
return y
"""
    a, b, c = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 3)), RNG.standard_normal((3, 3))
    np.testing.assert_allclose(run(source, a, b, c)[0], 2 * a @ b - c.T / 4 - c, rtol=1e-12, atol=1e-12)


def test_index_notation_names_its_value_and_uses_one_einsum():
    program = load_ein("input a: f32[2, 3]\ninput b: f32[3, 4]\ny[i, k] = a[i, j] * b[j, k] * 0.5\nreturn y\n")
    opcodes = [op.opcode for op in program.ops]
    assert opcodes.count("einsum") == 1
    assert program.outputs == ["y"] and program.defining_op("y").opcode == "mul"


# ----- expressions ------------------------------------------------------------------------------------------
def test_arithmetic_literals_and_functions():
    source = """dim n = 4
input x: f64[n]
input m: f64[n, n]
y = -x ** 2 + 3 * x / n - 1.5 + sqrt(abs(x)) * square(x) + poly(x, [1, 2, 3]) + sigmoid(tanh(x)) \\
    + exp(x) * log(abs(x) + 1)
z = einsum("...ij,j->...i", m, x) + relu(x)
return y, z
"""
    x, m = RNG.standard_normal(4), RNG.standard_normal((4, 4))
    y, z = run(source, x, m)
    want = (-(x**2) + 3 * x / 4 - 1.5 + np.sqrt(np.abs(x)) * x * x + (1 + 2 * x + 3 * x**2)
            + 1 / (1 + np.exp(-np.tanh(x))) + np.exp(x) * np.log(np.abs(x) + 1))
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z, m @ x + np.maximum(x, 0), rtol=1e-12, atol=1e-12)


def test_numbers_fold_and_literals_take_the_tensor_dtype():
    program = load_ein("dim e = 16\ninput x: f32[2]\ny = x * (2 ** 3 - 1) / sqrt(e)\nreturn y\n")
    literals = [op for op in program.ops if op.opcode == "literal"]
    assert [op.attrs["value"] for op in literals] == [7, 4.0]
    assert all(str(op.type) == "f32[]" for op in literals)
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(run_program(program, [x])[0], x * 7 / 4)


def test_cast_complex_and_modular_types():
    source = """input x: f32[3]
input q: zq(97)[3]
c = cast(x, c128) * 2j
r = q * q - 1 + 100
s = cast(q, i64)
t = cast(s * 50, zq(97))
return c, r, s, t
"""
    x = RNG.standard_normal(3).astype(np.float32)
    q = np.array([0, 5, 96], np.uint64)
    c, r, s, t = run(source, x, q)
    assert c.dtype == np.complex128
    np.testing.assert_allclose(c, x.astype(np.complex128) * 2j, rtol=1e-7)
    np.testing.assert_array_equal(r, (q.astype(np.int64) ** 2 - 1 + 100) % 97)
    np.testing.assert_array_equal(s, q.astype(np.int64))
    np.testing.assert_array_equal(t, q.astype(np.int64) * 50 % 97)


def test_comments_blank_lines_and_continuations_inside_brackets():
    source = """
# leading comment

program cont   # trailing comment
input a: f64[2, 2], \\
      b: f64[2, 2]
y = einsum("ij,jk->ik",
           a,    # first operand
           b)
return y
"""
    program = load_ein(source)
    assert program.name == "cont"
    a, b = RNG.standard_normal((2, 2)), RNG.standard_normal((2, 2))
    np.testing.assert_allclose(run_program(program, [a, b])[0], a @ b, rtol=1e-12)


def test_initialisers():
    source = """weight e: f32[3, 4] = eye
weight h: f64[8, 8] = hadamard
weight hq: zq(17)[2, 2] = hadamard
weight o: i32[2] = ones
weight r: i8[50] = random(seed=3, scale=2)
weight zr: zq(5)[50] = random(seed=4)
weight c: c64[3] = normal(seed=5)
weight l: f32[2, 2] = [[1, 2], [3, 4.5]]
input x: f64[8]
y = einsum("ij,j->i", h, x)
return y
"""
    program = load_ein(source)
    w = program.weights
    np.testing.assert_array_equal(w["e"], np.eye(3, 4, dtype=np.float32))
    i, j = np.indices((8, 8))
    popcount = np.vectorize(lambda v: bin(v).count("1"))
    np.testing.assert_array_equal(w["h"], (-1.0) ** popcount(i & j))
    np.testing.assert_array_equal(w["hq"], np.array([[1, 1], [1, 16]], np.uint64))
    assert w["o"].dtype == np.int32 and w["o"].tolist() == [1, 1]
    assert w["r"].dtype == np.int8 and set(w["r"].tolist()) <= {-2, -1, 0, 1, 2} and len(set(w["r"].tolist())) > 3
    assert w["zr"].dtype == np.uint64 and int(w["zr"].max()) < 5
    rng = np.random.default_rng(5)
    want = (rng.standard_normal(3) + 1j * rng.standard_normal(3)) * np.sqrt(0.5)
    np.testing.assert_array_equal(w["c"], want.astype(np.complex64))
    np.testing.assert_array_equal(w["l"], np.array([[1, 2], [3, 4.5]], np.float32))


def test_random_without_seed_is_deterministic_and_differs_per_weight():
    source = "weight a: f32[4] = random\nweight b: f32[4] = random\ninput x: f32[4]\ny = x * a + b\nreturn y\n"
    first, second = load_ein(source), load_ein(source)
    np.testing.assert_array_equal(first.weights["a"], second.weights["a"])
    assert not np.array_equal(first.weights["a"], first.weights["b"])


def test_load_npy_and_npz_relative_to_the_file(tmp_path):
    w = RNG.standard_normal((3, 4))
    bias = RNG.standard_normal(4).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    np.savez(tmp_path / "params.npz", bias=bias, other=np.zeros(2))
    np.savez(tmp_path / "single.npz", only=bias)
    path = tmp_path / "model.ein"
    path.write_text('input x: f32[2, 3]\nweight w: f32[3, 4] = load("w.npy")\n'
                    'weight b: f32[4] = load("params.npz", key="bias")\n'
                    'weight c: f32[4] = load("single.npz")\n'
                    "y = einsum(\"ij,jk->ik\", x, w) + b - c\nreturn y\n")
    program = load_ein(path)
    assert program.name == "model"
    np.testing.assert_array_equal(program.weights["w"], w.astype(np.float32))
    np.testing.assert_array_equal(program.weights["b"], bias)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(einfold.compile(path)(x), x @ w.astype(np.float32), rtol=2e-5, atol=2e-5)
    from_text = load_ein(path.read_text(), filename=str(path))
    np.testing.assert_array_equal(from_text.weights["w"], program.weights["w"])


# ----- errors -------------------------------------------------------------------------------------------------
ERROR_CASES = [
    # (source, line, text at the column, fragment of the message)
    ("input x: f32[2]\ny = x +* 2\nreturn y", 2, "*", "unexpected '*'"),
    ("input x: f32[2]\ny = x $ 2\nreturn y", 2, "$", "unexpected character '$'"),
    ("input x: f32[2]\ny = (x + 2\nreturn y", 3, "return", "expected"),
    ("input x: f32[2]\ny = x + z\nreturn y", 2, "z", "undefined name 'z'"),
    ("input x: f32[2]\nx = x * 2\nreturn x", 2, "x =", "already defined (line 1)"),
    ("dim n = 2, n = 3\ninput x: f32[n]\nreturn x", 1, "n = 3", "already defined"),
    ("input x: f32[2]\ny = relux(x)\nreturn y", 2, "relux", "unknown function 'relux'"),
    ("input x: f32[2]\ny = relu(x, x)\nreturn y", 2, "x)", "relu takes 1 argument(s), got 2"),
    ("input x: f32[2]\ny = reshape(x)\nreturn y", 2, "reshape", "missing its argument 'shape'"),
    ("input x: f32[2]\ny = poly(x, coefs=[1])\nreturn y", 2, "coefs", "no parameter 'coefs'"),
    ("input x: f33[2]\nreturn x", 1, "f33", "unknown dtype 'f33'"),
    ("input x: f32[2]\ny = cast(x, f99)\nreturn y", 2, "f99", "unknown dtype 'f99'"),
    ('weight w: f32[2] = load("nowhere.npy")\nreturn w', 1, '"nowhere', "no such weight file 'nowhere.npy'"),
    ("input a: f32[2, 3]\ninput b: f32[4, 5]\ny = einsum('ij,jk->ik', a, b)\nreturn y", 3, "jk", "index 'j'"),
    ("input a: f32[2, 3]\ninput b: f32[4]\ny = a + b\nreturn y", 3, "+", "do not broadcast"),
    ("input a: f32[2, 3]\ny = reshape(a, [4, 2])\nreturn y", 2, "[4", "6 elements"),
    ("input a: f32[2, 3]\ny[i] = a[i, j, k]\nreturn y", 2, "a[", "2 dimension(s)"),
    ("input a: f32[2, 3]\ny[i, k] = a[i, j]\nreturn y", 2, "a[", "output index k"),
    ("input a: f32[2, 3]\ny[i, i] = a[i, i]\nreturn y", 2, "i]", "appears twice"),
    ("input a: f32[2, 3]\ny = a[i, j]\nreturn y", 2, "a[", "index notation"),
    ("input a: i32[2]\ny = a * 0.5\nreturn y", 2, "*", "cannot be a literal of type i32"),
    ("input a: f32[2]\ny = 2.0\nreturn a", 2, "2.0", "must be a tensor"),
    ("dim n\ninput a: f32[n]\nreturn a", 1, "n", "dim n has no default"),
    ("input a: f32[2]\nreturn a\ny = a * 2", 3, "y", "after `return`"),
    ("weight w: f32[2, 2] = dft\nreturn w", 1, "dft", "declare w as c64 or c128"),
    ("weight w: f32[3, 3] = hadamard\nreturn w", 1, "hadamard", "power of two"),
    ("weight w: f32[2] = [1, 2, 3]\nreturn w", 1, "[1", "shape (3,)"),
    ("weight w: f32[2] = relu(1)\nreturn w", 1, "relu", "needs an initialiser"),
    ("input x: f32[2]\ny = random(seed=1)\nreturn y", 2, "random", "weight initialiser"),
    ("input x: f32[2]\ny = x * (1 / 0)\nreturn y", 2, "/ 0", "division by zero"),
    ("input x: f32[2]\ny = x * 10 ** 40\nreturn y", 2, "*", "exceeds the largest f32"),
    ("input x: f32[2]\ny = cast(x, zq(97))\nreturn y", 2, "x,", "needs an integer tensor"),
    ("weight w: f32[2] = normal(seed=1, 2)\nreturn w", 1, "2)", "positional argument after a keyword"),
    ("input x: f32[2]\ny = cast(x, y)\nreturn y", 2, "y)", "unknown dtype 'y'"),
]


@pytest.mark.parametrize("source, line, at, fragment", ERROR_CASES, ids=[c[3] for c in ERROR_CASES])
def test_errors_point_at_the_fault(source, line, at, fragment):
    with pytest.raises(SourceError) as caught:
        load_ein(source, filename="bad.ein")
    error = caught.value
    source_line = source.splitlines()[line - 1]
    assert fragment in error.message
    assert (error.filename, error.line, error.column) == ("bad.ein", line, source_line.index(at) + 1)
    assert error.source_line == source_line
    text = str(error)
    assert text.startswith(f"bad.ein:{line}:{error.column}: ") and source_line in text
    assert text.splitlines()[-1] == "    " + " " * (error.column - 1) + "^"


def test_einsum_spec_errors_point_inside_the_string():
    source = 'input a: f32[2, 3]\ny = einsum("ij->iq", a)\nreturn y'
    with pytest.raises(SourceError) as caught:
        load_ein(source)
    assert caught.value.line == 2 and caught.value.column == source.splitlines()[1].index("q") + 1
    assert "'q'" in caught.value.message


def test_missing_return_and_unknown_dims_override():
    with pytest.raises(SourceError, match="no `return`"):
        load_ein("input x: f32[2]\ny = x * 2\n")
    with pytest.raises(SourceError, match="does not declare; declared dims: b, d") as caught:
        load_ein("dim b = 2, d = 3\ninput x: f32[b, d]\nreturn x\n", dims={"n": 64})
    assert "'n'" in caught.value.message
    with pytest.raises(SourceError, match="must be a positive integer"):
        load_ein("dim b = 2\ninput x: f32[b]\nreturn x\n", dims={"b": 0})


def test_weight_file_problems(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((2, 3)))
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.ones(2))
    np.save(tmp_path / "c.npy", np.zeros(2, np.complex128))
    cases = [
        ('weight w: f32[3, 2] = load("w.npy")', "shape (2, 3)"),
        ('weight w: f32[2] = load("two.npz")', "holds arrays a, b"),
        ('weight w: f32[2] = load("two.npz", "zz")', "no array 'zz'"),
        ('weight w: f32[2, 3] = load("w.npy", "a")', "drop the key"),
        ('weight w: f32[2] = load("c.npy")', "cannot safely convert"),
    ]
    for statement, fragment in cases:
        path = tmp_path / "m.ein"
        path.write_text(statement + "\nreturn w\n")
        with pytest.raises(SourceError, match=re.escape(fragment)) as caught:
            load_ein(path)
        assert caught.value.line == 1 and caught.value.filename == str(path)


def test_compile_reports_source_errors_from_paths(tmp_path):
    path = tmp_path / "broken.ein"
    path.write_text("input x: f32[2]\ny = x ** \nreturn y\n")
    with pytest.raises(SourceError) as caught:
        einfold.compile(path)
    assert caught.value.line == 2 and caught.value.message.startswith("syntax error: unexpected end of line")
