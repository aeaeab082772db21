"""Each structure's detector and projection, checked against the dense product with numpy as the oracle."""

import numpy as np
import pytest

from einfold.errors import IRError
from einfold.passes import block_diag, butterfly, kronecker, low_rank, monarch
from einfold.passes.structure import Factorization

RNG = np.random.default_rng(7)


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def check_product(f: Factorization, weight: np.ndarray, tol: float, batch: int = 5) -> None:
    x = RNG.standard_normal((batch, weight.shape[1]))
    if np.iscomplexobj(weight):
        x = x + 1j * RNG.standard_normal(x.shape)
    assert max_rel(f.apply(x), x @ weight.T) <= tol
    assert max_rel(f.dense(), weight) <= tol


# ----- low rank ---------------------------------------------------------------------------------------------
def test_low_rank_finds_rank_32_of_a_2048_square_matrix():
    weight = RNG.standard_normal((2048, 32)) @ RNG.standard_normal((32, 2048))
    f = low_rank.project(weight, 1e-6)
    assert f is not None and f.params_info["rank"] == 32 and f.rel_error < 1e-12
    assert f.factor_labels == ("ri", "or") and f.params == 32 * (2048 + 2048)
    check_product(f, weight, 1e-12)


def test_low_rank_rank_follows_the_tolerance():
    u, _ = np.linalg.qr(RNG.standard_normal((200, 200)))
    v, _ = np.linalg.qr(RNG.standard_normal((150, 150)))
    s = 2.0 ** -np.arange(150)
    weight = (u[:, :150] * s) @ v.T
    for tol in (1e-2, 1e-4, 1e-8):
        f = low_rank.project(weight, tol)
        expected = next(r for r in range(1, 151) if np.sqrt((s[r:] ** 2).sum() / (s**2).sum()) <= tol)
        assert f.params_info["rank"] == expected
        assert f.rel_error <= tol
        assert abs(f.rel_error - np.linalg.norm(f.dense() - weight) / np.linalg.norm(weight)) < 1e-12


def test_low_rank_rejects_full_rank_and_ranks_that_do_not_pay():
    assert low_rank.project(RNG.standard_normal((256, 256)), 1e-3) is None
    near_full = RNG.standard_normal((64, 60)) @ RNG.standard_normal((60, 64))
    assert low_rank.project(near_full, 1e-9) is None  # rank 60: 60 * 128 >= 64 * 64
    assert low_rank.max_useful_rank(64, 64) == 31


def test_low_rank_complex_and_float32_weights():
    weight = (RNG.standard_normal((96, 4)) + 1j * RNG.standard_normal((96, 4))) @ RNG.standard_normal((4, 80))
    f = low_rank.detect(weight)
    assert f.params_info["rank"] == 4 and all(a.dtype == np.complex128 for a in f.factors)
    check_product(f, weight, 1e-12)
    single = (RNG.standard_normal((64, 3)) @ RNG.standard_normal((3, 64))).astype(np.float32)
    g = low_rank.project(single, 1e-6)
    assert g.params_info["rank"] == 3 and all(a.dtype == np.float32 for a in g.factors)


# ----- Kronecker ---------------------------------------------------------------------------------------------
def test_kronecker_product_recovered_exactly():
    a, b = RNG.standard_normal((8, 16)), RNG.standard_normal((8, 16))
    weight = np.kron(a, b)
    f = kronecker.detect(weight)
    assert f is not None and f.params_info["kronecker_rank"] == 1 and f.rel_error < 1e-12
    assert f.commuting and f.factor_labels == ("tkl", "tij")
    check_product(f, weight, 1e-12)


def test_kronecker_rank_two_sum_recovered_exactly():
    weight = sum(np.kron(RNG.standard_normal((16, 16)), RNG.standard_normal((16, 16))) for _ in range(2))
    f = kronecker.project(weight, 1e-6)
    assert f.params_info["kronecker_rank"] == 2 and f.rel_error < 1e-12
    check_product(f, weight, 1e-12)


def test_kronecker_rearrangement_is_the_van_loan_pitsianis_one():
    a, b = RNG.standard_normal((3, 5)), RNG.standard_normal((4, 2))
    r = kronecker.rearrange(np.kron(a, b), (3, 4), (5, 2))
    assert np.allclose(r, np.outer(a.ravel(), b.ravel()))


def test_kronecker_rejects_gaussian():
    assert kronecker.project(RNG.standard_normal((256, 256)), 1e-3) is None


# ----- block diagonal ----------------------------------------------------------------------------------------
def test_block_diagonal_rectangular_blocks_found_exactly():
    weight = np.zeros((96, 64))
    for g in range(8):
        weight[12 * g:12 * (g + 1), 8 * g:8 * (g + 1)] = RNG.standard_normal((12, 8))
    f = block_diag.detect(weight)
    assert f.params_info["blocks"] == 8 and f.rel_error == 0.0 and f.params == 96 * 8
    check_product(f, weight, 1e-14)


def test_block_diagonal_projection_reports_the_dropped_energy():
    weight = np.kron(np.eye(4), RNG.standard_normal((16, 16)))
    noise = 1e-5 * RNG.standard_normal(weight.shape)
    assert block_diag.detect(weight + noise) is None
    f = block_diag.project(weight + noise, 1e-3)
    assert f.params_info["blocks"] == 4
    expected = np.linalg.norm(f.dense() - weight - noise) / np.linalg.norm(weight + noise)
    assert abs(f.rel_error - expected) < 1e-12
    assert block_diag.project(RNG.standard_normal((64, 64)), 1e-3) is None


# ----- Monarch -----------------------------------------------------------------------------------------------
def monarch_matrix(k: int, q: int, p: int, s: int, complex_: bool = False) -> np.ndarray:
    right, left = RNG.standard_normal((k, q, p)), RNG.standard_normal((q, s, k))
    if complex_:
        right = right + 1j * RNG.standard_normal(right.shape)
    return np.einsum("qsk,kqp->sqkp", left, right).reshape(s * q, k * p)


@pytest.mark.parametrize("k,q,p,s", [(16, 16, 16, 16), (4, 6, 8, 5)])
def test_monarch_random_matrices_recovered_exactly(k, q, p, s):
    weight = monarch_matrix(k, q, p, s)
    f = monarch.detect(weight)
    assert f is not None and f.rel_error < 1e-12 and f.in_dims == (k, p) and f.out_dims == (s, q)
    check_product(f, weight, 1e-12)
    # The published einsum with output index s*Q + q.
    x = RNG.standard_normal((3, k * p))
    right, left = f.factors
    y = np.einsum("bkp,kqp,qsk->bsq", x.reshape(3, k, p), right, left).reshape(3, -1)
    assert max_rel(y, x @ weight.T) < 1e-12


@pytest.mark.parametrize("m", [32, pytest.param(64, marks=pytest.mark.slow)])
def test_monarch_complex_recovered(m):
    weight = monarch_matrix(m, m, m, m, complex_=True)
    f = monarch.project(weight, 1e-6)
    assert f is not None and f.rel_error < 1e-12
    x = RNG.standard_normal((4, m * m)) + 1j * RNG.standard_normal((4, m * m))
    assert max_rel(f.apply(x), x @ weight.T) < 1e-12


def test_monarch_rejects_gaussian_and_primes():
    assert monarch.project(RNG.standard_normal((256, 256)), 1e-3) is None
    assert monarch.project(RNG.standard_normal((13, 13)), 0.5) is None


# ----- butterfly -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1024, 4096])
def test_butterfly_recovers_the_dft(n):
    f = butterfly.detect(butterfly.dft_matrix(n))
    assert f is not None and f.structure == "butterfly" and len(f.factors) == n.bit_length() - 1
    x = RNG.standard_normal((3, n)) + 1j * RNG.standard_normal((3, n))
    reference = np.fft.fft(x, axis=1)
    assert max_rel(f.apply(x), reference) <= 1e-12


def test_butterfly_recovers_scaled_inverse_dft():
    weight = butterfly.dft_matrix(256, sign=1) / 256
    f = butterfly.detect(weight)
    assert f.params_info["transform"] == "idft"
    x = RNG.standard_normal((2, 256)) + 1j * RNG.standard_normal((2, 256))
    assert max_rel(f.apply(x), np.fft.ifft(x, axis=1)) <= 1e-12
    check_product(f, weight, 1e-12)


def test_butterfly_hadamard_4096_exact():
    weight = butterfly.hadamard_matrix(4096)
    f = butterfly.detect(weight)
    assert f.params_info["transform"] == "hadamard" and f.rel_error == 0.0
    x = RNG.standard_normal((3, 4096))
    assert np.array_equal(np.rint(f.apply(np.rint(x * 4))), np.rint(x * 4) @ weight.T)


def test_butterfly_small_dense_reconstruction_and_rejections():
    assert np.abs(butterfly.dft(16).dense() - butterfly.dft_matrix(16)).max() < 1e-14
    assert np.array_equal(butterfly.hadamard(16).dense(), butterfly.hadamard_matrix(16))
    assert butterfly.project(RNG.standard_normal((64, 64)), 1e-3) is None
    noisy = butterfly.dft_matrix(64) + 1e-4 * RNG.standard_normal((64, 64))
    assert butterfly.project(noisy, 1e-6) is None
    f = butterfly.project(noisy, 1e-3)
    assert f is not None and 1e-6 < f.rel_error <= 1e-3


def test_factorization_rejects_inconsistent_labels():
    with pytest.raises(IRError, match="labels"):
        Factorization("low_rank", (4,), (4,), "ij", "o", ("ri", "or"), (np.ones((2, 4)), np.ones((4, 2))))
    with pytest.raises(IRError, match="unknown structure"):
        Factorization("sparse", (4,), (4,), "i", "o", ("oi",), (np.ones((4, 4)),))
