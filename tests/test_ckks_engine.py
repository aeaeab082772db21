"""Real RNS-CKKS runs on desilofhe (few and small): rotation direction, agreement with the simulator
(values and op counts), the client/server split, key hygiene and serialisation."""

from __future__ import annotations

import numpy as np
import pytest

import einfold
from einfold.backends.ckks.cases import EINHOPS_CASES
from einfold.backends.ckks.engine import EncryptedResult, EncryptedTensor, make_engine
from einfold.backends.ckks.keys import EvaluationKeys
from einfold.backends.ckks.params import get_params


def test_desilofhe_rotation_moves_slot_i_plus_k_to_slot_i():
    # desilofhe 2.0 reversed rotate's direction relative to 1.x; the FHE IR assumes this one.
    engine = make_engine(get_params("n8192-L7"))
    secret = engine.create_secret_key()
    x = np.arange(engine.slot_count, dtype=np.float64)
    key = engine.create_fixed_rotation_key(secret, 3)
    rotated = engine.decrypt(engine.rotate(engine.encrypt(x, secret), key), secret)
    np.testing.assert_allclose(rotated[:5], np.roll(x, -3)[:5], atol=1e-6)


@pytest.mark.parametrize("spec,shapes", [("ik,k->i", [(32, 32), (32,)]), ("ij,jk,kl->il", [(4, 8), (8, 8), (8, 4)]),
                                         ("bthd,bThd->bhtT", [(2, 5, 2, 4), (2, 5, 2, 4)])])
def test_encrypted_run_matches_numpy_and_the_simulators_counts(spec, shapes):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in shapes]
    exe = einfold.compile(spec, shapes=shapes, dtype="f64", target="ckks")
    np.testing.assert_allclose(exe(*arrays), np.einsum(spec, *arrays), atol=1e-3)
    real = dict(exe.runtime.last_counts)
    exe.simulate(arrays)
    assert real == dict(exe.runtime.last_counts)
    stats = exe.stats()
    assert real.get("rotate", 0) == stats["rotations"] and real.get("mul", 0) == stats["ct_ct_mults"]


def test_split_api_keeps_the_secret_key_on_the_client(tmp_path, capsys):
    rng = np.random.default_rng(2)
    w, x = rng.standard_normal((16, 16)), rng.standard_normal(16)
    p = einfold.Program("mv")
    p.set_outputs(p.einsum("ik,k->i", p.const("w", w), p.input("x", (16,), "f64")))
    exe = einfold.compile(p, target="ckks")
    keys = exe.keygen()
    assert "keygen: rotation key" in capsys.readouterr().err
    assert sorted(keys.evaluation.rotation_keys) == exe.fhe_program.rotation_amounts()  # only the keys it needs
    ct = exe.encrypt(x, keys)
    assert not any(isinstance(v, type(keys.secret_key)) for v in vars(ct.keys).values())
    out = exe.run_encrypted(ct)
    np.testing.assert_allclose(exe.decrypt(out, keys), w @ x, atol=1e-3)
    assert "secret" not in exe.source("fhe").lower()

    # serialise keys, ciphertext and result, then run from the files alone
    engine = make_engine(exe.plan.params)
    keys.evaluation.save(engine, tmp_path / "keys")
    ct.save(tmp_path / "x")
    server_keys = exe.load_keys(str(tmp_path / "keys"))
    assert isinstance(server_keys, EvaluationKeys)
    loaded = exe.load_ciphertext(str(tmp_path / "x"), server_keys)
    assert isinstance(loaded, EncryptedTensor)
    exe.run_encrypted(loaded).save(tmp_path / "y")
    result = EncryptedResult.load(tmp_path / "y", engine)
    np.testing.assert_allclose(exe.decrypt(result, keys), w @ x, atol=1e-3)


def test_bad_split_api_use_gets_clear_errors():
    exe = einfold.compile("ij,ij->ij", shapes=[(4, 4), (4, 4)], dtype="f64", target="ckks")
    keys = exe.keygen(progress=None)
    with pytest.raises(einfold.RuntimeFailure, match="say which"):
        exe.encrypt(np.ones((4, 4)), keys)
    with pytest.raises(einfold.RuntimeFailure, match="shape"):
        exe.encrypt(np.ones((3, 4)), keys, "in0")
    a = exe.encrypt(np.ones((4, 4)), keys, "in0")
    with pytest.raises(einfold.RuntimeFailure, match="missing"):
        exe.run_encrypted(a)
    with pytest.raises(einfold.RuntimeFailure, match="secret"):
        exe.decrypt(exe.run_encrypted(*exe.encrypt([np.ones((4, 4))] * 2, keys)), keys.evaluation)


@pytest.mark.slow
@pytest.mark.parametrize("name,spec,shapes", EINHOPS_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_einhops_cases_encrypted_at_full_size(name, spec, shapes):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    exe = einfold.compile(spec, shapes=shapes, dtype="f64", target="ckks", params="n16384-L17")
    np.testing.assert_allclose(exe(*arrays), np.einsum(spec, *arrays), atol=1e-3)


@pytest.mark.slow
def test_real_bootstrap_refreshes_a_deep_program():
    x = np.random.default_rng(0).uniform(-1, 1, 8)
    p = einfold.Program("deep")
    y = p.input("x", (8,), "f64")
    for _ in range(9):  # depth 18 > 17: one bootstrap (minutes on CPU)
        y = p.map("poly", y, coeffs=[0.0, 0.9, 0.0, 0.05])
    p.set_outputs(y)
    exe = einfold.compile(p, target="ckks", params="n32768-boot")
    assert exe.stats()["bootstraps"] >= 1
    np.testing.assert_allclose(exe(x), einfold.compile(p, target="numpy")(x), atol=1e-3)


def test_a_product_that_is_only_decrypted_skips_relinearisation():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 16, 16))
    exe = einfold.compile("ij,ij,ij->ij", shapes=[(16, 16)] * 3, dtype="f64", target="ckks",
                          params="n8192-L7", plaintext_weights=False)
    fhe = exe.source("fhe")
    muls = [line for line in fhe.splitlines() if " = mul(" in line or " = mul " in line]
    assert len(muls) == 2 and sum("relin=False" in line for line in muls) == 1, fhe  # only the last product
    c = rng.standard_normal((16, 16))
    np.testing.assert_allclose(exe(a, b, c), a * b * c, atol=1e-3)
