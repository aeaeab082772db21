"""Levels, bootstrap placement (on the simulator), parameter choice and compile-time errors."""

from __future__ import annotations

import numpy as np
import pytest

import einfold
from einfold.backends.ckks.params import PARAM_SETS


def deep_program(layers: int) -> einfold.Program:
    p = einfold.Program("deep")
    y = p.input("x", (8,), "f64")
    for _ in range(layers):
        y = p.map("poly", y, coeffs=[0.0, 0.9, 0.0, 0.05])  # degree 3: 2 levels each
    p.set_outputs(y)
    return p


def test_inputs_are_encrypted_at_the_level_the_program_needs():
    exe = einfold.compile(deep_program(2), target="ckks", simulate=True, params="n16384-L17")
    levels = [i.level for i in exe.fhe_program.instrs if i.opcode == "encrypt"]
    assert levels == [exe.stats()["depth"]] == [4]


def test_bootstraps_are_inserted_when_the_program_is_deeper_than_the_parameters():
    program = deep_program(12)  # depth 24 > 17
    exe = einfold.compile(program, target="ckks", simulate=True, params="n32768-boot")
    stats = exe.stats()
    assert stats["depth"] == 24 and stats["bootstraps"] >= 1
    boot = PARAM_SETS["n32768-boot"]
    for instr in exe.fhe_program.instrs:
        assert instr.level >= 0
        if instr.opcode == "bootstrap":
            assert instr.level == boot.boot_out_level
    x = np.random.default_rng(0).uniform(-1, 1, 8)
    np.testing.assert_allclose(exe(x), einfold.compile(program, target="numpy")(x), atol=1e-9)


def test_auto_params_pick_a_bootstrapping_set_only_when_needed():
    assert einfold.compile(deep_program(2), target="ckks", simulate=True).stats()["bootstraps"] == 0
    exe = einfold.compile(deep_program(14), target="ckks", simulate=True)
    assert exe.stats()["bootstraps"] >= 1 and "n32768-boot" in exe.source("fhe")


def test_too_deep_without_bootstrapping_is_a_compile_time_error():
    with pytest.raises(einfold.UnsupportedError, match="depth 24"):
        einfold.compile(deep_program(12), target="ckks", params="n16384-L17")
    with pytest.raises(einfold.UnsupportedError, match="bootstrap=False"):
        einfold.compile(deep_program(14), target="ckks", bootstrap=False)


def test_exact_relu_on_a_ciphertext_is_a_compile_time_error():
    p = einfold.Program("r")
    p.set_outputs(p.map("relu", p.input("x", (4,), "f64")))
    with pytest.raises(einfold.UnsupportedError, match="exact relu.*approx="):
        einfold.compile(p, target="ckks")


def test_integer_tensors_and_ciphertext_division_are_rejected():
    with pytest.raises(einfold.UnsupportedError, match="approximate reals"):
        einfold.compile("ij->j", shapes=[(4, 4)], dtype="i32", target="ckks")
    p = einfold.Program("d")
    x = p.input("x", (4,), "f64")
    p.set_outputs(p.div(x, p.input("y", (4,), "f64")))
    with pytest.raises(einfold.UnsupportedError, match="div by a ciphertext"):
        einfold.compile(p, target="ckks")


def test_shapes_that_cannot_fit_even_tiled_are_rejected():
    with pytest.raises(einfold.UnsupportedError, match="ciphertexts"):
        einfold.compile("ij,jk->ik", shapes=[(4096, 4096), (4096, 4096)], dtype="f64", target="ckks",
                        params="n16384-L17")


def test_unknown_parameter_set_is_named():
    with pytest.raises(einfold.UnsupportedError, match="unknown CKKS parameter set 'huge'"):
        einfold.compile("i->", shapes=[(4,)], dtype="f64", target="ckks", params="huge")


def test_stats_have_exactly_the_issue_keys_and_source_shows_layouts():
    exe = einfold.compile("ik,k->i", shapes=[(128, 128), (128,)], dtype="f64", target="ckks", simulate=True)
    keys = {"rotations", "rotation_keys", "ct_ct_mults", "ct_pt_mults", "depth", "bootstraps", "ciphertexts",
            "slots", "est_latency_s"}
    assert keys <= set(exe.stats())
    text = exe.source("fhe")
    assert "slot[" in text and "encrypt" in text and "decrypt" in text and "rotate" in text
    assert "fhe" in exe.stages and "ckks_order" in exe.ir("ckks-packing")
