"""Low-rank factorization by truncated SVD: `'Zi,oi->Zo'` becomes `'Zi,ri,or->Zo'` with W ~ U V (r < mn/(m+n)).

The rank comes from the tolerance (relative Frobenius error = sqrt(1 - kept energy)) or is given; a
randomized range finder with a growing sketch keeps large matrices cheap, and the final error is measured
directly on the factors. Flat spectra (DFT) are rejected early from the sketch's singular values, and ranks
above MAX_SEARCH_RANK are not searched.
"""

from __future__ import annotations

import math

import numpy as np

from .structure import Factorization, relative_error

EXACT_TOL = 1e-12
MIN_SAVING = 2.0  # a rank that saves less than half of W's numbers and FLOPs is not worth a second kernel
MAX_SEARCH_RANK = 128  # larger ranks are not searched: on big matrices the sketches cost seconds each
SAFETY = 1.1  # slack on estimated singular values when rejecting early (a miss costs speed, never accuracy)


def max_useful_rank(n_out: int, n_in: int, saving: float = 1.0) -> int:
    """The largest rank storing `saving` times fewer numbers than W: saving * r (m + n) < m n."""
    return max(math.ceil(n_out * n_in / saving) - 1, 0) // (n_out + n_in)


def _range(weight: np.ndarray, sketch: int, rng: np.random.Generator) -> np.ndarray:
    """An orthonormal basis of (approximately) W's column space, from a Gaussian sketch with one power step."""
    omega = rng.standard_normal((weight.shape[1], sketch))
    if np.iscomplexobj(weight):
        omega = omega + 1j * rng.standard_normal((weight.shape[1], sketch))
    q, _ = np.linalg.qr(weight @ omega)
    q, _ = np.linalg.qr(weight @ (q.conj().T @ weight).conj().T)
    return q


def capturable(sketch_values: np.ndarray, rank: int) -> float:
    """An estimate (from above, with SAFETY) of the energy any rank-`rank` approximation can keep, from the
    singular values of a sketch: the first ones as found, the rest no larger than the last one."""
    top = sketch_values[:rank]
    rest = max(rank - top.size, 0) * (SAFETY * sketch_values[-1]) ** 2
    return float((SAFETY * top) @ (SAFETY * top)) + rest


def factorize(weight: np.ndarray, rank: int) -> Factorization:
    """The rank-`rank` truncated SVD of W as a factorization (factors V: (r, n_in), U: (n_out, r))."""
    u, s, vh = np.linalg.svd(weight, full_matrices=False)
    return _build(weight, u[:, :rank] * s[:rank], vh[:rank])


def _build(weight: np.ndarray, left: np.ndarray, right: np.ndarray) -> Factorization:
    n_out, n_in = weight.shape
    error = relative_error(left @ right, weight)
    return Factorization("low_rank", (n_in,), (n_out,), "i", "o", ("ri", "or"), (right, left), error,
                         {"rank": int(right.shape[0])})


def project(weight: np.ndarray, tol: float, max_rank: int | None = None, saving: float = MIN_SAVING,
            seed: int = 0) -> Factorization | None:
    """The lowest-rank factorization within `tol` relative Frobenius error (rank at most `max_rank`),
    or None if there is none storing `saving` times fewer numbers than W."""
    weight = np.asarray(weight)
    work = weight.astype(np.complex128 if np.iscomplexobj(weight) else np.float64)
    n_out, n_in = work.shape
    limit = max_useful_rank(n_out, n_in, saving)
    limit = limit if max_rank is None else min(max_rank, limit)
    if limit < 1:
        return None
    total = float(np.linalg.norm(work)) ** 2
    if total == 0.0:
        return None
    rng = np.random.default_rng(seed)
    sketch = min(16, limit + 1)
    while True:
        q = _range(work, min(sketch + 8, min(n_out, n_in)), rng)
        small = q.conj().T @ work
        u, s, vh = np.linalg.svd(small, full_matrices=False)
        tail = np.maximum(total - np.cumsum(s**2), 0.0) / total
        fits = np.nonzero(np.sqrt(tail) <= tol)[0]
        if fits.size and fits[0] + 1 <= limit:
            rank = int(fits[0]) + 1
            candidate = _build(work, (q @ u[:, :rank]) * s[:rank], vh[:rank])
            if candidate.rel_error <= tol:
                return _cast(candidate, weight.dtype)
        if (sketch > min(limit, MAX_SEARCH_RANK) or sketch >= min(n_out, n_in)
                or capturable(s, limit) < (1 - tol**2) * total):
            return None
        sketch *= 2


def detect(weight: np.ndarray) -> Factorization | None:
    """W's exact (numerical) rank factorization when that rank pays, else None."""
    return project(weight, EXACT_TOL)


def _cast(f: Factorization, dtype: np.dtype) -> Factorization:
    right, left = (a.astype(dtype) if not np.iscomplexobj(a) or np.dtype(dtype).kind == "c" else a
                   for a in f.factors)
    return Factorization(f.structure, f.in_dims, f.out_dims, f.x_labels, f.out_labels, f.factor_labels,
                         (right, left), f.rel_error, f.params_info)
