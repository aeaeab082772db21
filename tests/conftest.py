"""Shared fixtures: small programs every test file can use."""

from __future__ import annotations

import numpy as np
import pytest

import einfold


def build_mlp(batch: int = 4, d_in: int = 8, hidden: int = 16, d_out: int = 3, seed: int = 0) -> einfold.Program:
    rng = np.random.default_rng(seed)
    p = einfold.Program("mlp")
    x = p.input("x", (batch, d_in))
    w1 = p.const("w1", rng.standard_normal((d_in, hidden)).astype(np.float32))
    b1 = p.const("b1", rng.standard_normal(hidden).astype(np.float32))
    w2 = p.const("w2", rng.standard_normal((hidden, d_out)).astype(np.float32))
    h = p.map("relu", p.add(p.einsum("bi,ih->bh", x, w1), b1))
    p.set_outputs(p.einsum("bh,ho->bo", h, w2))
    return p


@pytest.fixture
def mlp() -> einfold.Program:
    return build_mlp()
