"""Kronecker factorization (Van Loan–Pitsianis): W ~ sum_t A_t (x) B_t, found by rearranging
W[(i k),(j l)] into R[(i j),(k l)] and a truncated SVD of R (its rank is the Kronecker rank);
`'Zn,on->Zo'` becomes `'Zjl,tkl,tij->Zik'` on x viewed as (batch, n1, n2).
"""

from __future__ import annotations

import numpy as np

from . import low_rank
from .structure import Factorization, relative_error

EXACT_TOL = 1e-12
MAX_KRONECKER_RANK = 8


def splits(n: int) -> list[tuple[int, int]]:
    """Ways to write n = a * b with a, b > 1, most balanced first."""
    pairs = [(a, n // a) for a in range(2, n) if n % a == 0]
    return sorted(pairs, key=lambda p: abs(np.log(p[0] / p[1])))


def rearrange(weight: np.ndarray, out_split: tuple[int, int], in_split: tuple[int, int]) -> np.ndarray:
    """R[(i j),(k l)] = W[(i k),(j l)] for W of shape (m1 m2, n1 n2)."""
    (m1, m2), (n1, n2) = out_split, in_split
    return weight.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def from_terms(weight: np.ndarray, a: np.ndarray, b: np.ndarray) -> Factorization:
    """The factorization sum_t a[t] (x) b[t] of W; a: (r, m1, n1), b: (r, m2, n2)."""
    r, m1, n1 = a.shape
    _, m2, n2 = b.shape
    approx = np.einsum("tij,tkl->ikjl", a, b).reshape(m1 * m2, n1 * n2)
    return Factorization("kronecker", (n1, n2), (m1, m2), "jl", "ik", ("tkl", "tij"), (b, a),
                         relative_error(approx, weight), {"kronecker_rank": r}, commuting=True)


def project(weight: np.ndarray, tol: float, max_splits: int = 2,
            max_rank: int = MAX_KRONECKER_RANK) -> Factorization | None:
    """The sum of at most `max_rank` Kronecker products within `tol` with the fewest parameters over the
    `max_splits` most balanced splits of each side, or None."""
    weight = np.asarray(weight)
    n_out, n_in = weight.shape
    best: Factorization | None = None
    for out_split in splits(n_out)[:max_splits]:
        for in_split in splits(n_in)[:max_splits]:
            found = low_rank.project(rearrange(weight, out_split, in_split), tol, max_rank)
            if found is None:
                continue
            right, left = found.factors  # R ~ left @ right: left (m1 n1, r), right (r, m2 n2)
            r = right.shape[0]
            a = left.T.reshape(r, *(out_split[0], in_split[0]))
            b = right.reshape(r, out_split[1], in_split[1])
            candidate = from_terms(weight, a, b)
            if candidate.rel_error <= tol and (best is None or candidate.params < best.params):
                best = candidate
    return best


def detect(weight: np.ndarray) -> Factorization | None:
    """An exact sum of Kronecker products (of low Kronecker rank), or None."""
    return project(weight, EXACT_TOL)
