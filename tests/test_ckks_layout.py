"""Layouts and polynomial approximations: packing round trips, printing, tiling splits, Chebyshev fits."""

from __future__ import annotations

import numpy as np
import pytest

import einfold
from einfold.backends.ckks.layout import compact_layout, joint_layout
from einfold.backends.ckks.polyapprox import fit


def test_joint_layout_copies_missing_labels_and_round_trips():
    layout = joint_layout("ik", {"i": 5, "k": 6}, "k", 64)
    assert str(layout) == "slot[i:*5/8@8 k:6/8@1]"
    x = np.arange(6.0)
    (vector,) = layout.pack(x)
    assert np.count_nonzero(vector) == 8 * 5  # copies fill all 8 padded positions of i; x[0] = 0
    np.testing.assert_array_equal(vector.reshape(8, 8)[3, :6], x)
    np.testing.assert_array_equal(layout.unpack([vector]), x)


def test_layout_larger_than_the_slots_splits_into_ciphertexts():
    layout = compact_layout((40000,), 16384)
    assert layout.tiles == 4 and str(layout).startswith("ct[a:")
    x = np.random.default_rng(0).standard_normal(40000)
    vectors = layout.pack(x)
    assert len(vectors) == 4
    np.testing.assert_array_equal(layout.unpack(vectors), x)


def test_copied_ciphertext_dims_share_one_ciphertext():
    layout = joint_layout("ji", {"j": 4, "i": 4096}, "i", 4096)
    assert layout.tiles == 4 and set(layout.distinct_tiles) == {0}


@pytest.mark.parametrize("fn,interval,degree,bound", [("sigmoid", (-6, 6), 15, 1e-3), ("exp", (-2, 2), 12, 1e-6),
                                                      ("gelu", (-4, 4), 16, 2e-2), ("relu", (-1, 1), 16, 5e-2)])
def test_chebyshev_fits_state_their_error(fn, interval, degree, bound):
    approx = fit(fn, interval, degree)
    grid = np.linspace(*interval, 1001)
    error = np.max(np.abs(approx(grid) - {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "exp": np.exp,
                                          "relu": lambda x: np.maximum(x, 0),
                                          "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.7978845608028654 * (
                                              x + 0.044715 * x ** 3)))}[fn](grid)))
    assert error <= approx.max_error * 1.01 + 1e-12 and approx.max_error < bound
    assert approx.depth == 2 + int(np.ceil(np.log2(degree)))


def test_least_squares_fit_is_available_and_close():
    assert fit("tanh", (-3, 3), 15, "lsq").max_error < 1e-3


def test_approximated_sigmoid_runs_and_matches_its_polynomial():
    x = np.random.default_rng(1).uniform(-5, 5, (8, 8))
    p = einfold.Program("s")
    p.set_outputs(p.map("sigmoid", p.einsum("ij->ji", p.input("x", (8, 8), "f64"))))
    exe = einfold.compile(p, target="ckks", simulate=True, approx={"sigmoid": {"interval": (-6, 6), "degree": 15}})
    approx = fit("sigmoid", (-6, 6), 15)
    np.testing.assert_allclose(exe(x), approx(x.T), atol=1e-9)
    np.testing.assert_allclose(exe(x), 1 / (1 + np.exp(-x.T)), atol=approx.max_error * 1.01)
    assert exe.stats()["depth"] == approx.depth
    assert "Chebyshev degree 15 on [-6, 6]" in exe.source("fhe")


def test_relu_mlp_with_approximation_masks_junk_before_the_polynomial():
    rng = np.random.default_rng(2)
    p = einfold.Program("mlp")
    h = p.einsum("bi,io->bo", p.input("x", (4, 16), "f64"), p.const("w", rng.standard_normal((16, 8)) / 4))
    p.set_outputs(p.map("relu", h))
    exe = einfold.compile(p, target="ckks", simulate=True, approx={"relu": {"interval": (-4, 4), "degree": 15}})
    x = rng.standard_normal((4, 16))
    approx = fit("relu", (-4, 4), 15)
    np.testing.assert_allclose(exe(x), approx(x @ p.weights["w"]), atol=1e-9)
