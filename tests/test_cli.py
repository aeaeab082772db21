"""The `einfold` command, run as a user would: through a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "mlp.ein"


def einfold(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "einfold", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_compile_prints_ir():
    result = einfold("compile", str(MLP))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("program @mlp {") and "einsum \"" in result.stdout


def test_compile_emit_to_file_and_dims(tmp_path):
    out = tmp_path / "mlp.ir"
    result = einfold("compile", str(MLP), "--dim", "b=3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "f32[3," in out.read_text()


def test_print_after_all_passes():
    result = einfold("compile", str(MLP), "--print-after", "all")
    for name in ("canonicalize", "constant-fold", "cse", "dce"):
        assert f"// ----- IR after {name}" in result.stdout


def test_run_check_reports_max_error():
    result = einfold("run", str(MLP), "--check")
    assert result.returncode == 0, result.stderr
    assert "check %" in result.stdout and "max abs error" in result.stdout and " ok" in result.stdout


def test_run_with_given_inputs_and_saved_output(tmp_path):
    import einfold as ef
    program = ef.load_ein(MLP)
    x = program.inputs[0]
    data = np.random.default_rng(5).standard_normal(x.type.shape).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    result = einfold("run", str(MLP), "--input", f"{x.result}=x.npy", "--save", "y.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = ef.compile(program)(data)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6)


def test_inspect_shows_every_stage_with_time():
    result = einfold("inspect", str(MLP))
    assert result.returncode == 0, result.stderr
    assert "// ===== input =====" in result.stdout
    assert "// ===== dce (" in result.stdout and " ms) =====" in result.stdout


def test_targets_and_passes_lists():
    targets = einfold("targets")
    assert targets.returncode == 0 and "numpy    available" in targets.stdout
    passes = einfold("passes")
    assert "* canonicalize" in passes.stdout


def test_ir_file_round_trip_through_cli(tmp_path):
    ir = einfold("compile", str(MLP)).stdout
    (tmp_path / "mlp.ir").write_text(ir)
    again = einfold("compile", str(tmp_path / "mlp.ir"), "--passes", "")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ir


@pytest.mark.parametrize("args, message", [
    (("compile", "missing.ein"), "no such file: missing.ein"),
    (("compile", str(MLP), "--target", "quantum"), "unknown target 'quantum'"),
    (("compile", str(MLP), "--dim", "b"), "--dim expects NAME=VALUE"),
    (("compile", str(MLP), "--emit", "tir"), "cannot emit 'tir'"),
    (("compile", str(MLP), "--print-after", "nonsense"), "not in the pipeline"),
    (("run", str(MLP), "--input", "nobody=x.npy"), "--input names nobody"),
])
def test_user_errors_exit_2_with_one_line(args, message):
    result = einfold(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_syntax_error_in_ein_file_has_location(tmp_path):
    bad = tmp_path / "bad.ein"
    bad.write_text("input x: f32[4]\ny = relu(x +)\nreturn y\n")
    result = einfold("compile", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr and "Traceback" not in result.stderr


def test_factorize_and_tol_flags_reach_the_factorize_pass():
    args = ("compile", str(ROOT / "examples" / "dft.ein"), "--dim", "n=1024", "--dim", "b=64", "--tol", "1e-6")
    structured = einfold(*args, "--factorize", "auto")
    assert structured.returncode == 0, structured.stderr
    assert '"chosen": "butterfly"' in structured.stdout and '"weight": "f"' in structured.stdout
    dense = einfold(*args, "--factorize", "none")
    assert dense.returncode == 0 and "factorization=" not in dense.stdout
    bad = einfold(*args, "--factorize", "sparse")
    assert bad.returncode == 2 and "sparse" in bad.stderr and "Traceback" not in bad.stderr
