"""Block-diagonal factorization: W = diag(W_1, ..., W_g) with equal contiguous blocks, so
`'Zi,oi->Zo'` becomes `'Zgi,goi->Zgo'` on x viewed as (batch, g, n/g). The projection keeps the blocks
and drops the rest (error = off-block energy); the most blocks within tolerance win.
"""

from __future__ import annotations

import math

import numpy as np

from .structure import Factorization

EXACT_TOL = 0.0  # off-block entries exactly zero


def blocks(weight: np.ndarray, count: int) -> np.ndarray:
    """The `count` diagonal blocks of W, shape (count, n_out/count, n_in/count)."""
    n_out, n_in = weight.shape
    grid = weight.reshape(count, n_out // count, count, n_in // count)
    return np.ascontiguousarray(grid[np.arange(count), :, np.arange(count), :])


def tile_energies(weight: np.ndarray, count: int) -> np.ndarray:
    """E[a, b] = squared norm of tile (a, b) when W is cut into count x count equal tiles."""
    n_out, n_in = weight.shape
    grid = weight.reshape(count, n_out // count, count, n_in // count)
    return np.einsum("aibj,aibj->ab", grid, grid.conj()).real


def project(weight: np.ndarray, tol: float) -> Factorization | None:
    """The finest equal block-diagonal split with off-block error within `tol` (at least 2 blocks), or None.
    The error sums the dropped tiles' energies (no cancellation), so exact zeros give exactly 0."""
    weight = np.asarray(weight)
    n_out, n_in = weight.shape
    finest = math.gcd(n_out, n_in)
    if finest < 2:
        return None
    energies = tile_energies(weight, finest)
    total = float(energies.sum())
    if total == 0.0:
        return None
    index = np.arange(finest)
    for count in sorted((d for d in range(2, finest + 1) if finest % d == 0), reverse=True):
        group = finest // count
        outside = index[:, None] // group != index[None, :] // group
        error = math.sqrt(float(energies[outside].sum()) / total)
        if error <= tol:
            return Factorization("block_diag", (count, n_in // count), (count, n_out // count), "gi", "go",
                                 ("goi",), (blocks(weight, count),), error, {"blocks": count})
    return None


def detect(weight: np.ndarray) -> Factorization | None:
    """Exact block-diagonal structure (off-block entries exactly zero), or None."""
    return project(weight, EXACT_TOL)
