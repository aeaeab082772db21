"""Monarch factorization (Dao et al. 2022): M = P L P^T R with block-diagonal L and R, applied as
`'Zkp,kqp,qsk->Zsq'` on x viewed as (batch, k, p), output index s*Q + q. The best approximation is closed
form: view M as T[k,q,s,p] and keep the top singular pair of every (k,q) slice. Rectangular sizes split
n_in = K*P and n_out = S*Q as evenly as possible.
"""

from __future__ import annotations

import math

import numpy as np

from .structure import Factorization, relative_error

EXACT_TOL = 1e-12


def balanced_split(n: int) -> tuple[int, int] | None:
    """n = a * b with a <= b as close as possible, both > 1; None for primes and 1."""
    for a in range(math.isqrt(n), 1, -1):
        if n % a == 0:
            return a, n // a
    return None


def top_singular_pairs(stack: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """For each matrix A of a stack, u*sigma and v^H of its top singular pair, by power iteration
    started from A's largest row (exact in one step when A has rank 1); stops once sigma settles."""
    rows = np.linalg.norm(stack, axis=2)
    v = stack[np.arange(stack.shape[0]), np.argmax(rows, axis=1)].conj()
    sigma = np.zeros(stack.shape[0])
    for _ in range(iterations):
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.finfo(float).tiny)
        left = np.einsum("nsp,np->ns", stack, v)  # einsum: numpy's batched complex matmul is far slower
        previous, sigma = sigma, np.linalg.norm(left, axis=1)
        if np.all(np.abs(sigma - previous) <= 1e-15 * np.maximum(sigma, np.finfo(float).tiny)):
            break
        v = np.einsum("ns,nsp->np", left.conj(), stack).conj()
    return left, v.conj()


def from_blocks(weight: np.ndarray, right: np.ndarray, left: np.ndarray) -> Factorization:
    """The Monarch factorization with R (K, Q, P) and L (Q, S, K), its error measured against W."""
    k, q, p = right.shape
    _, s, _ = left.shape
    approx = np.einsum("qsk,kqp->sqkp", left, right).reshape(s * q, k * p)
    return Factorization("monarch", (k, p), (s, q), "kp", "sq", ("kqp", "qsk"), (right, left),
                         relative_error(approx, weight), {"blocks": [k, q]})


def project(weight: np.ndarray, tol: float) -> Factorization | None:
    """The nearest Monarch matrix in Frobenius norm when it is within `tol` and stores fewer numbers."""
    weight = np.asarray(weight)
    n_out, n_in = weight.shape
    in_split, out_split = balanced_split(n_in), balanced_split(n_out)
    if in_split is None or out_split is None:
        return None
    (k, p), (s, q) = in_split, out_split
    if k * q * (p + s) >= n_out * n_in:
        return None
    slices = weight.reshape(s, q, k, p).transpose(2, 1, 0, 3)  # T[k, q, s, p]
    norms = np.linalg.norm(slices.reshape(k * q, s * p), axis=1) ** 2
    total = float(norms.sum())
    if total == 0.0:
        return None
    left, right = top_singular_pairs(slices.reshape(k * q, s, p))
    kept = float(np.linalg.norm(left) ** 2)
    if math.sqrt(max(total - kept, 0.0) / total) > max(tol, 1e-7):
        return None
    found = from_blocks(weight, np.ascontiguousarray(right.reshape(k, q, p)),
                        np.ascontiguousarray(left.reshape(k, q, s).transpose(1, 2, 0)))
    return found if found.rel_error <= tol else None


def detect(weight: np.ndarray) -> Factorization | None:
    """W exactly Monarch (to rounding), or None."""
    return project(weight, EXACT_TOL)
