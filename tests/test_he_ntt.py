"""einfold.he: primes and roots, the NTT/INTT and basis-conversion Programs on the numpy reference, and the
ntt-three-step / mat-fold passes that turn the dense NTT einsum into the permutation-free three-step form."""

from __future__ import annotations

import numpy as np
import pytest

import einfold
from einfold import he
from einfold.passes import get as get_pass
from einfold.reference import run_program

BITS = (28, 30, 36, 45, 60)


def residues(moduli: list[int], shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint64[*shape[:-1], L, n]: limb l uniform in [0, q_l)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, q, shape, dtype=np.uint64) for q in moduli], axis=-2)


def test_ntt_primes_are_prime_and_ntt_friendly():
    for bits in BITS:
        for q in he.ntt_primes(bits, 2**16, 2):
            assert he.is_prime(q) and q.bit_length() == bits and (q - 1) % 2**17 == 0
    assert not he.is_prime(2**61 + 1) and he.is_prime(2**61 - 1)


def test_root_of_unity_has_exact_order():
    q = he.ntt_primes(30, 1024)[0]
    psi = he.root_of_unity(q, 2048)
    assert pow(psi, 2048, q) == 1 and pow(psi, 1024, q) == q - 1


@pytest.mark.parametrize("bits", BITS)
def test_butterfly_reference_matches_the_definition(bits):
    q = he.ntt_primes(bits, 32)[0]
    x = residues([q], (3, 32))[:, 0]
    forward = he.reference_ntt(x, q)
    assert np.array_equal(forward, he.reference_ntt_direct(x, q))
    assert np.array_equal(he.reference_ntt(forward, q, inverse=True), x)


@pytest.mark.parametrize("form", ["dense", "factored"])
@pytest.mark.parametrize("bits", [30, 60])
def test_ntt_programs_match_the_reference_on_numpy(form, bits):
    n, moduli = 64, he.ntt_primes(bits, 64, 2)
    x = residues(moduli, (2, n))
    forward = run_program(he.ntt(n, moduli, batch=(2,), form=form), [x])[0]
    expected = np.stack([he.reference_ntt(x[:, k], q) for k, q in enumerate(moduli)], axis=1)
    assert np.array_equal(forward, expected)
    back = run_program(he.ntt(n, moduli, inverse=True, batch=(2,), form=form), [forward])[0]
    assert np.array_equal(back, x)


def test_basis_conversion_program_matches_python_integers():
    qs, ps = he.ntt_primes(30, 16, 3), he.ntt_primes(45, 16, 2)
    x = residues(qs, (4, 16))
    out = run_program(he.basis_convert(16, qs, ps, batch=(4,)), [x])[0]
    assert np.array_equal(out, he.reference_basis_convert(x, qs, ps))
    # it is x + u Q (0 <= u < L) for the CRT value x of each coefficient
    big_q = int(np.prod([int(q) for q in qs], dtype=object))
    crt = sum(int(x[0, i, 0]) * (big_q // q) * pow(big_q // q, -1, q) for i, q in enumerate(qs)) % big_q
    assert any(all(int(out[0, j, 0]) == (crt + u * big_q) % p for j, p in enumerate(ps)) for u in range(len(qs)))


def test_bad_parameters_are_clear_errors():
    with pytest.raises(einfold.SpecError, match="not 1 mod"):
        he.ntt(512, [7681])  # prime, but 7680 is not a multiple of 1024
    with pytest.raises(einfold.SpecError, match="power of two"):
        he.ntt(48, [7681])
    with pytest.raises(einfold.SpecError, match="not prime"):
        he.ntt(64, [385])  # 3 * 128 + 1 = 5 * 7 * 11
    with pytest.raises(einfold.SpecError, match="too large"):
        he.ntt(2**13, he.ntt_primes(30, 2**13), form="dense")
    with pytest.raises(einfold.SpecError, match="coprime"):
        he.basis_convert(16, [97, 97], [193])


def test_three_step_pass_factors_the_dense_ntt_exactly():
    n, q = 256, he.ntt_primes(36, 256)[0]
    dense = he.ntt(n, [q], batch=(3,), form="dense")
    factored = get_pass("dce").apply(get_pass("ntt-three-step").apply(dense, {"ntt_rows": 16}), {}).verify()
    steps = [op for op in factored.ops if "three_step" in op.attrs]
    assert len(steps) == 1 and "R=16 C=16" in steps[0].attrs["three_step"]
    assert max(op.type.size for op in factored.consts) < n * n  # the N x N matrix is gone
    x = residues([q], (3, n))
    assert np.array_equal(run_program(factored, [x])[0], run_program(dense, [x])[0])


def test_three_step_pass_recognises_the_inverse_in_transposed_form():
    n, q = 64, he.ntt_primes(28, 64)[0]
    dense = he.ntt(n, [q], inverse=True, batch=(2,), form="dense")
    factored = get_pass("ntt-three-step").apply(dense, {}).verify()
    assert any("cols-first" in op.attrs.get("three_step", "") for op in factored.ops)
    x = residues([q], (2, n))
    assert np.array_equal(run_program(factored, [x])[0], run_program(dense, [x])[0])


def test_three_step_pass_leaves_non_dft_matrices_alone():
    q = he.ntt_primes(30, 64)[0]
    p = einfold.Program("random")
    x = p.input("x", (64,), einfold.zq(q))
    w = np.random.default_rng(0).integers(0, q, (64, 64), dtype=np.uint64)
    p.set_outputs(p.einsum("kj,j->k", p.const("w", w, einfold.zq(q)), x))
    assert str(get_pass("ntt-three-step").apply(p, {})) == str(p)
    with pytest.raises(einfold.UnsupportedError, match="not a DFT"):
        get_pass("ntt-three-step").apply(p, {"ntt_three_step": "require"})


@pytest.mark.parametrize("inverse", [False, True])
def test_mat_fold_removes_every_permutation(inverse):
    n, q = 256, he.ntt_primes(45, 256)[0]
    program = he.ntt(n, [q], inverse=inverse, batch=(2,), form="factored")
    perm_consts = {op.result for op in program.consts if op.attrs["name"].endswith(("Prow", "Pcol"))}
    assert len(perm_consts) == 2
    folded = get_pass("dce").apply(get_pass("mat-fold").apply(program, {}), {}).verify()
    assert not any(set(op.operands) & perm_consts for op in folded.ops)
    assert not any(op.attrs["name"].endswith(("Prow", "Pcol")) for op in folded.consts)
    assert sum("mat" in op.attrs for op in folded.consts) == 3  # T1 (rows), T2 (rows) and T3 (columns) permuted
    x = residues([q], (2, n))
    assert np.array_equal(run_program(folded, [x])[0], run_program(program, [x])[0])


def test_mat_fold_keeps_a_permutation_it_cannot_fold():
    p = einfold.Program("perm")
    x = p.input("x", (2, 4), "f32")
    perm = np.eye(4, dtype=np.float32)[[2, 0, 3, 1]]
    p.set_outputs(p.einsum("uz,bz->bu", p.const("P", perm), x))  # feeds the output straight from an input
    folded = get_pass("mat-fold").apply(p, {})
    assert str(folded) == str(p)


def test_fast_modular_einsum_reference_is_exact_for_wide_moduli():
    from einfold.reference import _modular_einsum
    rng = np.random.default_rng(3)
    for q in (2**32 + 15, he.ntt_primes(60, 16)[0], 2**64 - 59):
        a = rng.integers(0, q, (3, 40, 20), dtype=np.uint64)
        b = rng.integers(0, q, (20, 7), dtype=np.uint64)
        expected = (np.einsum("abc,cd->abd", a.astype(object), b.astype(object)) % q).astype(np.uint64)
        assert np.array_equal(_modular_einsum("abc,cd->abd", [a, b], q), expected)
