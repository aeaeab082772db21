"""einfold.compile: accepted sources, stages, stats, and checking of inputs."""

from __future__ import annotations

import numpy as np
import pytest

import einfold


def test_compile_a_spec_with_shapes_and_run():
    exe = einfold.compile("ij,jk->ik", shapes=[(3, 4), (4, 5)], dtype="f64")
    a, b = np.random.default_rng(0).standard_normal((2, 3, 4))[0], np.random.default_rng(1).standard_normal((4, 5))
    np.testing.assert_allclose(exe(a, b), a @ b, rtol=1e-13)
    assert exe.stats()["flops"] == 2 * 3 * 4 * 5


def test_stages_ir_source_and_stats(mlp):
    exe = einfold.compile(mlp)
    assert exe.stages == ["input", "canonicalize", "constant-fold", "cse", "dce"]
    assert exe.ir("input") == str(mlp)
    assert exe.ir() == exe.source() == exe.source("ir")
    assert exe.source("dot").startswith("digraph")
    stats = exe.stats()
    assert stats["params"] == mlp.params() and set(stats["pass_seconds"]) == set(exe.stages[1:])
    with pytest.raises(einfold.Error, match="no stage 'tir'"):
        exe.ir("tir")
    with pytest.raises(einfold.UnsupportedError, match="cannot emit 'tir'"):
        exe.source("tir")


def test_compile_ir_text(mlp):
    exe = einfold.compile(str(mlp))
    assert exe.ir("input") == str(mlp)


def test_inputs_are_checked_with_clear_errors(mlp):
    exe = einfold.compile(mlp)
    with pytest.raises(einfold.RuntimeFailure, match="takes 1 input"):
        exe()
    with pytest.raises(einfold.RuntimeFailure, match="input %x must have shape \\(4, 8\\), got \\(8, 4\\)"):
        exe(np.zeros((8, 4), np.float32))
    with pytest.raises(einfold.RuntimeFailure, match="cannot safely cast complex128"):
        exe(np.zeros((4, 8), np.complex128))
    assert exe(np.zeros((4, 8), np.float64)).dtype == np.float32  # same-kind casts are accepted


def test_unknown_target_and_attribute_errors(mlp):
    with pytest.raises(einfold.UnsupportedError, match="unknown target 'quantum'"):
        einfold.compile(mlp, target="quantum")
    with pytest.raises(AttributeError, match="has no attribute 'keygen'"):
        einfold.compile(mlp).keygen()


def test_factorize_option_adds_the_pass_to_the_pipeline():
    from einfold.driver import pipeline
    default = ["canonicalize", "constant-fold", "cse", "dce"]
    assert pipeline(default, ["contraction-plan"], {}) == default + ["contraction-plan"]
    assert pipeline(default, [], {"factorize": "auto"})[:3] == ["canonicalize", "constant-fold", "factorize"]
