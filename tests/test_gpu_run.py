"""GPU correctness on the device machine: every program of the compiled bundle (benchmarks/gpu_check.sh build) runs
through backends/cupy_runtime.py and is compared with numpy. Needs only numpy and CuPy (no einfold install):

    PYTHONPATH=. python3 -m pytest -q -m gpu --noconftest -o addopts="" tests/test_gpu_run.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(os.environ.get("EINFOLD_GPU_BUNDLE", ROOT / ".gpu_bundle"))
pytestmark = pytest.mark.gpu


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


runtime = _load("cupy_runtime", ROOT / "backends" / "cupy_runtime.py")
bench = _load("gpu_einsum", ROOT / "benchmarks" / "gpu_einsum.py")
MANIFEST = json.loads((BUNDLE / "manifest.json").read_text()) if (BUNDLE / "manifest.json").exists() else None


def _params(kind: str) -> list:
    if MANIFEST is None:
        return [pytest.param(None, None, id="no-bundle")]
    return [pytest.param(entry, target, id=f"{entry['name']}-{target}")
            for entry in MANIFEST[kind] for target in entry["programs"]]


def _require_bundle(entry: dict | None) -> None:
    assert entry is not None, f"no GPU bundle at {BUNDLE}: run `benchmarks/gpu_check.sh build` first"


@pytest.mark.parametrize(("entry", "target"), _params("checks"))
def test_check_program_matches_numpy(entry: dict | None, target: str | None) -> None:
    _require_bundle(entry)
    with np.load(BUNDLE / entry["io"]) as io:
        inputs = [io[f"in{k}"] for k in range(entry["inputs"])]
        expected = [io[f"out{k}"] for k in range(entry["outputs"])]
    program = runtime.GpuProgram.load(BUNDLE / entry["programs"][target]["file"])
    outputs = runtime.GpuRunner(program)(inputs)
    assert len(outputs) == len(expected)
    for k, (got, want, dtype) in enumerate(zip(outputs, expected, entry["dtypes"])):
        problem = bench.compare(got, want, dtype)
        assert problem is None, f"{entry['name']} ({target}) output {k}: {problem}"


@pytest.mark.parametrize(("entry", "target"), _params("cases"))
def test_suite_case_matches_numpy(entry: dict | None, target: str | None) -> None:
    _require_bundle(entry)
    import cupy
    inputs, ours = bench.case_inputs(entry)
    runner = runtime.GpuRunner(runtime.GpuProgram.load(BUNDLE / entry["programs"][target]["file"]))
    got = cupy.asnumpy(runner.run_device([cupy.asarray(x) for x in ours])[0])
    problem = bench.einsum_error(got, entry["spec"], inputs, entry["dtype"])
    assert problem is None, f"{entry['name']} ({target}): {problem}"


def test_runner_rejects_wrong_input_shape() -> None:
    _require_bundle(MANIFEST)
    entry = MANIFEST["checks"][0]
    target = next(iter(entry["programs"]))
    runner = runtime.GpuRunner(runtime.GpuProgram.load(BUNDLE / entry["programs"][target]["file"]))
    import cupy
    with pytest.raises(ValueError, match="expected"):
        runner.run_device([cupy.zeros((1,), dtype=cupy.float32)])


def test_division_by_zero_raises_and_the_next_call_runs_clean() -> None:
    _require_bundle(MANIFEST)
    entry = next(entry for entry in MANIFEST["checks"] if entry["name"] == "divide_i32")
    with np.load(BUNDLE / entry["io"]) as io:
        a, b, want = io["in0"], io["in1"], io["out0"]
    assert set(entry["programs"]) == set(MANIFEST["targets"])
    for info in entry["programs"].values():
        runner = runtime.GpuRunner(runtime.GpuProgram.load(BUNDLE / info["file"]))
        with pytest.raises(ArithmeticError, match="integer division by zero"):
            runner([a, np.array([2, 0, 1, 3, 5], np.int32)])
        np.testing.assert_array_equal(runner([a, b])[0], want)
