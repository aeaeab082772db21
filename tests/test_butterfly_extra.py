"""The butterfly pass's DCT (the real part of the 2N-point DFT's top-left block) and its general butterfly
projection, against numpy products with matrices built here (the oracle), through the `factorize` pass on the
numpy and llvm targets."""

import dataclasses
import math
import time

import numpy as np
import pytest

import einfold
from einfold.errors import IRError
from einfold.ir import Program
from einfold.passes import butterfly
from einfold.passes.factorize import CostModel, Leaf, target_costs
from einfold.passes.structure import relative_error

RNG = np.random.default_rng(23)
PIPELINE = ["canonicalize", "constant-fold", "factorize", "cse", "dce"]


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def cosine_matrix(n: int, orthonormal: bool = False) -> np.ndarray:
    """C[k, j] = cos(pi (2j+1) k / 2n), the angle's multiple of pi/2n reduced mod 4n before the cosine."""
    k, j = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.cos(np.pi * ((2 * j + 1) * k % (4 * n)) / (2 * n))
    if orthonormal:
        c = c * np.where(k == 0, math.sqrt(1 / n), math.sqrt(2 / n))
    return c


def random_butterfly(n: int, complex_: bool = False) -> np.ndarray:
    """P_rev M_0 M_1 ... M_{L-1}: M_t mixes the index pairs differing in bit t with a random 2x2 block for every
    value of the other bits, P_rev reverses the bits of the output index (this file's fixed convention)."""
    bits = n.bit_length() - 1
    rows = np.arange(n)
    w = np.eye(n, dtype=complex if complex_ else float)
    for t in reversed(range(bits)):  # w <- M_t w, so M_{L-1} acts first
        same, other = RNG.standard_normal((2, n, 1))
        if complex_:
            same, other = same + 1j * RNG.standard_normal((n, 1)), other + 1j * RNG.standard_normal((n, 1))
        w = same * w + other * w[rows ^ (1 << t)]
    reversed_rows = [int(format(r, f"0{bits}b")[::-1], 2) for r in range(n)]
    return w[reversed_rows]


def with_noise(weight: np.ndarray, level: float) -> np.ndarray:
    noise = RNG.standard_normal(weight.shape)
    if np.iscomplexobj(weight):
        noise = noise + 1j * RNG.standard_normal(weight.shape)
    return weight + noise * (level * np.linalg.norm(weight) / np.linalg.norm(noise))


def linear(weight: np.ndarray, batch: int, spec: str = "bi,oi->bo") -> Program:
    p = Program("linear")
    dtype = "c128" if np.iscomplexobj(weight) else str(einfold.dtypes.dtype(weight.dtype))
    x = p.input("x", (batch, weight.shape[1]), dtype)
    p.set_outputs(p.einsum(spec, x, p.const("W", weight)))
    return p


def compile_(program: Program, target: str) -> einfold.Executable:
    return einfold.compile(program, target=target, passes=PIPELINE, factorize="auto", tol=1e-6)


def record(exe: einfold.Executable) -> dict:
    (found,) = [op.attrs["factorization"] for op in exe.program.ops if "factorization" in op.attrs]
    return found


# ----- DCT via the DFT -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dct2", "dct3"])
@pytest.mark.parametrize("orthonormal", [False, True])
def test_dct_1024_recovered_exactly_as_a_real_part_chain(kind, orthonormal):
    c = cosine_matrix(1024, orthonormal)
    weight = 2.5 * (c if kind == "dct2" else c.T)
    f = butterfly.detect(weight)
    assert f is not None and f.real_part and f.rel_error <= 1e-12
    assert f.params_info == {"transform": kind, "norm": "ortho" if orthonormal else "none",
                             "scale": pytest.approx(2.5, rel=1e-12), "real_part": True}
    assert len(f.factors) == 10 and f.params < 20 * 1024  # O(N log N): about 2N per factor, not N^2
    x = RNG.standard_normal((4, 1024))
    assert max_rel(f.apply(x), x @ weight.T) <= 1e-12
    assert f.flops(1) < 2 * 1024**2 / 4


def test_dct_matches_an_fft_based_dct():
    # An independent route: the DCT-II from the FFT of the even extension [x, reversed x] (length 2N).
    n = 256
    f = butterfly.detect(cosine_matrix(n))
    x = RNG.standard_normal((3, n))
    spectrum = np.fft.fft(np.concatenate([x, x[:, ::-1]], axis=1), axis=1)[:, :n]
    expected = 0.5 * (np.exp(-1j * np.pi * np.arange(n) / (2 * n)) * spectrum).real
    assert max_rel(f.apply(x), expected) <= 1e-12


def test_dct_projection_reports_its_error_and_respects_tol():
    weight = with_noise(cosine_matrix(128, orthonormal=True), 1e-4)
    assert butterfly.project_known(weight, 1e-6) is None and butterfly.project(weight, 1e-6) is None
    f = butterfly.project(weight, 1e-3)
    assert f.params_info["transform"] == "dct2" and 0.9e-4 < f.rel_error < 1.0e-4
    assert abs(f.rel_error - relative_error(f.dense(), weight)) < 1e-12


def test_complex_weights_are_not_taken_for_a_dct():
    assert butterfly.project_known(cosine_matrix(64) + 0j, 1e-6) is None  # Re(N x) needs a real x


@pytest.mark.filterwarnings("error")  # no ComplexWarning from the real part
@pytest.mark.parametrize("target", ["numpy", "llvm"])
def test_dct_1024_chosen_at_large_batch_and_exact_on(target):
    weight = cosine_matrix(1024, orthonormal=True)
    exe = compile_(linear(weight, 256), target)
    found = record(exe)
    assert found["chosen"] == "butterfly" and found["info"]["transform"] == "dct2" and found["rel_error"] <= 1e-12
    assert found["alternatives"]["butterfly"] < found["alternatives"]["dense"]
    casts = [op for op in exe.program.ops if op.opcode == "cast"]
    assert [str(op.type.dtype) for op in casts] == ["c128", "f64"]  # into complex first, the real part last
    einsums = [op for op in exe.program.ops if op.opcode == "einsum"]
    assert einsums and all(str(op.type.dtype) == "c128" for op in einsums)
    assert exe.program.ops.index(casts[0]) < exe.program.ops.index(einsums[0])
    assert exe.program.ops.index(casts[1]) > exe.program.ops.index(einsums[-1])
    x = RNG.standard_normal((256, 1024))
    y = exe(x)
    assert y.dtype == np.float64 and max_rel(y, x @ weight.T) <= 1e-12


def test_dct3_orientation_and_the_printed_ir_round_trip():
    c = cosine_matrix(1024)
    exe = compile_(linear(c, 128, spec="bk,kn->bn"), "numpy")  # y = x C: the DCT-III applied to each row
    found = record(exe)
    assert found["chosen"] == "butterfly" and found["info"]["transform"] == "dct3"
    text = exe.ir()
    assert "cast" in text and '"real_part": true' in text
    assert str(einfold.parse_ir(text, weights=exe.program.weights)) == text
    x = RNG.standard_normal((128, 1024))
    assert max_rel(exe(x), x @ c) <= 1e-12


def test_dct_in_float32_runs_in_complex64():
    weight = cosine_matrix(256, orthonormal=True).astype(np.float32)
    exe = compile_(linear(weight, 512), "numpy")
    assert record(exe)["chosen"] == "butterfly"
    assert {str(op.type.dtype) for op in exe.program.ops if op.opcode == "einsum"} == {"c64"}
    x = RNG.standard_normal((512, 256)).astype(np.float32)
    y = exe(x)
    assert y.dtype == np.float32 and max_rel(y, x.astype(np.float64) @ weight.T.astype(np.float64)) < 1e-5


def test_costs_count_the_two_casts_of_a_real_part_chain():
    n, batch = 64, 32
    f = butterfly.dct(n)
    without = dataclasses.replace(f, real_part=False)
    costs = target_costs("llvm")
    leaves = [Leaf(None, 0, batch)] + [Leaf(("W",), k) for k in range(1, len(f.terms))]
    itemsize = {("W",): (16, True)}
    priced = [CostModel(leaves, {("W",): network}, costs, itemsize) for network in (f, without)]
    everything = frozenset(range(1, len(f.terms)))
    first = [model.contraction(frozenset([0]), frozenset([1])) for model in priced]
    whole = [model.contraction(frozenset([0]), everything) for model in priced]
    cast_in = costs.kernel(0, batch * n * (8 + 16), 1, 1)
    assert first[0] - first[1] == pytest.approx(cast_in)
    assert whole[0] - whole[1] == pytest.approx(2 * cast_in)  # x's first contraction and the last one


def test_dct_builder_rejects_bad_arguments():
    with pytest.raises(IRError, match="n = 2"):
        butterfly.dct(12)
    with pytest.raises(IRError, match="kind"):
        butterfly.dct(16, kind="dct4")
    with pytest.raises(IRError, match="norm"):
        butterfly.dct(16, norm="forward")


# ----- the general butterfly projection ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [8, 64, 1024])
@pytest.mark.parametrize("complex_", [False, True])
def test_fit_recovers_random_butterflies(n, complex_):
    weight = random_butterfly(n, complex_)
    start = time.perf_counter()
    f = butterfly.fit(weight, 1e-12)
    assert time.perf_counter() - start < 5.0
    bits = n.bit_length() - 1
    assert f is not None and f.rel_error <= 1e-12 and f.params_info == {"transform": "fitted"}
    assert len(f.factors) == bits and f.params == 2 * n * bits
    assert all(a.dtype == weight.dtype for a in f.factors)
    x = RNG.standard_normal((3, n))
    if complex_:
        x = x + 1j * RNG.standard_normal(x.shape)
    assert max_rel(f.apply(x), x @ weight.T) <= 1e-12
    if n <= 64:
        assert max_rel(f.dense(), weight) <= 1e-12


def test_fit_with_noise_reports_the_true_error_and_follows_tol():
    weight = random_butterfly(1024)
    noisy = with_noise(weight, 1e-9)
    f = butterfly.project(noisy, 1e-6)
    assert f is not None and f.params_info["transform"] == "fitted"
    # The projection removes the noise inside the butterfly manifold (2 n L of n^2 directions), about 1%.
    assert 0.95e-9 < f.rel_error <= 1.0e-9
    assert f.rel_error == pytest.approx(relative_error(f.dense(), noisy), rel=1e-6)
    assert relative_error(f.dense(), weight) < 1e-9  # closer to the clean butterfly than the input was
    assert butterfly.project(noisy, 1e-10) is None


@pytest.mark.parametrize("complex_", [False, True])
def test_fit_rejects_gaussian_quickly(complex_):
    weight = RNG.standard_normal((1024, 1024))
    if complex_:
        weight = weight + 1j * RNG.standard_normal(weight.shape)
    start = time.perf_counter()
    assert butterfly.project(weight, 1e-3) is None
    assert time.perf_counter() - start < 2.0


def test_fit_convention_contains_the_dft_but_not_hadamard():
    # The DFT network maps bit t to bit L-1-t, as the fit does; Hadamard keeps bit t in place.
    f = butterfly.fit(butterfly.dft_matrix(256), 1e-12)
    assert f is not None and f.rel_error <= 1e-12
    assert butterfly.fit(butterfly.hadamard_matrix(256), 1e-3) is None
    assert butterfly.project(butterfly.hadamard_matrix(256), 1e-12).params_info["transform"] == "hadamard"
    assert butterfly.project(3 * butterfly.dft_matrix(256), 1e-12).params_info["transform"] == "dft"


def test_fit_declines_what_it_cannot_save():
    assert butterfly.fit(RNG.standard_normal((4, 4)), 0.5) is None  # 2 n L = n^2: nothing to gain
    assert butterfly.fit(RNG.standard_normal((12, 12)), 0.5) is None
    assert butterfly.fit(RNG.standard_normal((16, 8)), 0.5) is None
    assert butterfly.fit(np.zeros((16, 16)), 0.5) is None


def test_butterfly_network_checks_block_shapes():
    with pytest.raises(IRError, match="shapes"):
        butterfly.butterfly_network([np.ones((1, 2, 4, 2)), np.ones((2, 2, 2, 2))])
    blocks = [RNG.standard_normal((2**level, 2, 2 ** (2 - level), 2)) for level in range(3)]
    f = butterfly.butterfly_network(blocks)
    assert max_rel(f.dense(), butterfly.butterfly_dense(blocks)) <= 1e-14


@pytest.mark.parametrize("target", ["numpy", "llvm"])
def test_fitted_butterfly_chosen_through_the_pass_on(target):
    weight = random_butterfly(256)
    exe = compile_(linear(weight, 1024), target)
    found = record(exe)
    assert found["chosen"] == "butterfly" and found["info"] == {"transform": "fitted"}
    assert found["rel_error"] <= 1e-12 and found["params"] < found["params_dense"] / 4
    x = RNG.standard_normal((1024, 256))
    assert max_rel(exe(x), x @ weight.T) <= 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("complex_", [False, True])
def test_fit_4096(complex_):
    weight = random_butterfly(4096, complex_)
    f = butterfly.fit(weight, 1e-12)
    assert f is not None and f.rel_error <= 1e-12
    x = RNG.standard_normal((2, 4096))
    assert max_rel(f.apply(x), x @ weight.T) <= 1e-12
    assert butterfly.project(with_noise(weight, 1e-9), 1e-6).rel_error <= 1e-9
