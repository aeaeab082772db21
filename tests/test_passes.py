"""The generic passes (canonicalize, constant-fold, cse, dce) and the pass manager."""

from __future__ import annotations

import io

import numpy as np
import pytest

import einfold
from einfold.passes import PASSES, get
from einfold.passmanager import PassManager, function_pass
from einfold.reference import run_program


def run_pass(name: str, program: einfold.Program) -> einfold.Program:
    return get(name).apply(program, {}).verify()


def same_results(a: einfold.Program, b: einfold.Program, *inputs: np.ndarray) -> None:
    for got, want in zip(run_program(a, list(inputs)), run_program(b, list(inputs))):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_canonicalize_relabels_specs_and_drops_identities():
    p = einfold.Program()
    x = p.input("x", (2, 3), "f64")
    y = p.input("y", (3, 4), "f64")
    same = p.einsum("xy->xy", x)
    r = p.reshape(p.reshape(p.einsum("pq,qr->pr", same, y), (8,)), (4, 2))
    p.set_outputs(p.reshape(r, (4, 2)))
    out = run_pass("canonicalize", p)
    specs = [op.attrs["spec"] for op in out.ops if op.opcode == "einsum"]
    assert specs == ["ab,bc->ac"]
    reshapes = [op for op in out.ops if op.opcode == "reshape"]
    assert len(reshapes) == 2 and reshapes[-1].operands == (reshapes[0].operands[0],)
    a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    same_results(out, p, a, b)


def test_constant_fold_folds_small_weight_subgraphs_only():
    p = einfold.Program()
    x = p.input("x", (5, 4), "f64")
    rng = np.random.default_rng(0)
    scale = p.mul(p.const("s", rng.standard_normal(4)), p.literal(2.0, "f64"))
    p1 = p.const("u", rng.standard_normal((4, 1)))
    p2 = p.const("v", rng.standard_normal((1, 4)))
    outer = p.einsum("ir,rj->ij", p1, p2)  # 16 elements from 8: must stay unfolded
    p.set_outputs(p.einsum("bi,i,ij->bj", x, scale, outer))
    out = run_pass("constant-fold", p)
    folded = [op for op in out.consts if op.attrs.get("folded")]
    assert [op.attrs["folded"] for op in folded] == ["mul"]
    assert any(op.opcode == "einsum" and op.operands == (p1, p2) for op in out.ops)
    same_results(out, p, rng.standard_normal((5, 4)))
    assert run_pass("constant-fold", out).params() == out.params()


def test_constant_fold_turns_scalar_results_into_literals():
    p = einfold.Program()
    x = p.input("x", (3,), "f32")
    two = p.add(p.literal(1.0, "f32"), p.literal(1.0, "f32"))
    p.set_outputs(p.mul(x, two))
    out = run_pass("constant-fold", p)
    assert "literal 2.0 : f32[]" in str(out)


def test_cse_merges_duplicates_and_dce_removes_dead_code():
    p = einfold.Program()
    x = p.input("x", (3, 4), "f64")
    unused = p.input("unused", (2,), "f64")
    a = p.einsum("ij->j", x)
    b = p.einsum("ij->j", x)
    p.map("exp", a)  # dead
    p.set_outputs(p.add(a, b))
    merged = run_pass("cse", p)
    assert sum(op.opcode == "einsum" for op in merged.ops) == 1
    cleaned = run_pass("dce", merged)
    assert [op.opcode for op in cleaned.ops] == ["input", "input", "einsum", "add"]
    assert unused in {op.result for op in cleaned.inputs}
    same_results(cleaned, p, np.ones((3, 4)), np.ones(2))


def test_pass_manager_prints_after_requested_passes_and_times_them(mlp):
    stream = io.StringIO()
    manager = PassManager([PASSES["canonicalize"], PASSES["dce"]], print_after="dce", stream=stream)
    out, records = manager.run(mlp, {})
    assert [r.name for r in records] == ["canonicalize", "dce"]
    assert all(r.seconds >= 0 for r in records)
    assert stream.getvalue().startswith("// ----- IR after dce") and "IR after canonicalize" not in stream.getvalue()
    with pytest.raises(einfold.IRError, match="not in the pipeline"):
        PassManager([PASSES["dce"]], print_after="cse")


def test_pass_manager_catches_a_pass_that_breaks_the_program(mlp):
    @function_pass("breaks-types")
    def breaks(program, options):
        broken = program.copy()
        broken.outputs = ["nonexistent"]
        return broken

    with pytest.raises(einfold.IRError, match="after pass 'breaks-types'.*%nonexistent"):
        PassManager([breaks]).run(mlp, {})


def test_unknown_pass_name_is_a_clear_error():
    with pytest.raises(einfold.IRError, match="unknown pass 'fold-everything'"):
        get("fold-everything")
