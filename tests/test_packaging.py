"""The package-dir mapping (compiler/ -> einfold, frontend/ -> einfold.frontend, ...) in a normal, non-editable
install: every subpackage and grammar file is installed, and the installed copy compiles and runs a program."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_normal_install_has_every_package_and_runs(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build",
                                                                 ".gpu_bundle", "results"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    for part in ("ir.lark", "frontend/ein.lark", "passes/factorize.py", "backends/llvm/gemm.py",
                 "backends/tvm/lower_te.py", "backends/ckks/engine.py", "backends/tpu/bat.py"):
        assert (site / "einfold" / part).exists(), part
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-m", "einfold", "run", str(ROOT / "examples" / "mlp.ein"), "--target",
                          "llvm", "--check"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert " ok" in run.stdout
    where = subprocess.run([sys.executable, "-c", "import einfold; print(einfold.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env)
    assert where.stdout.strip().startswith(str(site))
