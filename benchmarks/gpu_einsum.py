"""GPU einsum benchmark and correctness check, in two stages so that the GPU machine needs only numpy, CuPy and torch.

    python benchmarks/gpu_einsum.py --build-bundle .gpu_bundle [--quick] [--targets ptx,cuda]   # here: compile
    PYTHONPATH=. python3 benchmarks/gpu_einsum.py --run-bundle .gpu_bundle [--repeat 20]          # on the GPU
Stage 1 compiles every suite case and every check program for the GPU targets and saves the GPU programs (kernel
source or PTX, launch plan, buffers; JSON + npz) with a manifest. Stage 2 loads `backends/cupy_runtime.py` by path,
runs every program, compares it with numpy (float64 oracle), times einfold against torch.einsum (cuBLAS) and
cupy.einsum with CUDA events (medians) and prints markdown tables; any wrong result makes it exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
Shapes = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Case:
    """One benchmark einsum at GPU size (and a small size for --quick). With `weight` set, the second operand is a
    weight of that structure (`make_weight`, made again from its seed where it runs); with `factorize` other than
    "none" it is compiled into the program as a constant for the factorize pass to find. `dense_of` names the dense
    case a factorized one replaces (reported as a structured speedup, left out of the suite's geometric mean)."""

    name: str
    spec: str
    shapes: Shapes
    quick_shapes: Shapes
    dtype: str = "f32"
    dense_of: str | None = None
    weight: str | None = None
    factorize: str = "none"


SUITE = [
    Case("GEMM 4096^3 f32", "ij,jk->ik", ((4096, 4096), (4096, 4096)), ((256, 192), (192, 320))),
    Case("GEMM 4096^3 bf16", "ij,jk->ik", ((4096, 4096), (4096, 4096)), ((256, 192), (192, 320)), "bf16"),
    Case("batched matmul", "bij,bjk->bik", ((64, 512, 512), (64, 512, 512)), ((4, 64, 96), (4, 96, 80))),
    Case("attention scores", "bhqd,bhkd->bhqk", ((8, 16, 1024, 64), (8, 16, 1024, 64)),
         ((2, 2, 64, 32), (2, 2, 96, 32))),
    Case("MTTKRP", "ijk,jr,kr->ir", ((512, 512, 512), (512, 64), (512, 64)), ((24, 20, 18), (20, 8), (18, 8))),
    Case("TTM", "ijk,kl->ijl", ((512, 512, 512), (512, 256)), ((20, 24, 28), (28, 12))),
    Case("4-matrix chain", "ij,jk,kl,lm->im", ((2048, 4096), (4096, 4096), (4096, 4096), (4096, 2048)),
         ((40, 64), (64, 48), (48, 32), (32, 24))),
    Case("Tucker", "abc,ia,jb,kc->ijk", ((128, 128, 128), (512, 128), (512, 128), (512, 128)),
         ((8, 10, 12), (20, 8), (22, 10), (24, 12))),
    # Structured weights y = x W^T with W = A (x) B (Kronecker) and W = U V^T (low rank): the same program compiled
    # dense and with factorize="auto", which must find the structure itself.
    Case("Kronecker W, dense", "nj,ij->ni", ((4096, 4096), (4096, 4096)), ((64, 64), (64, 64)),
         weight="kronecker"),
    Case("Kronecker W, factorized", "nj,ij->ni", ((4096, 4096), (4096, 4096)), ((64, 64), (64, 64)),
         dense_of="Kronecker W, dense", weight="kronecker", factorize="auto"),
    Case("low-rank W, dense", "nj,ij->ni", ((8192, 4096), (4096, 4096)), ((64, 96), (80, 96)), weight="low_rank"),
    Case("low-rank W, factorized", "nj,ij->ni", ((8192, 4096), (4096, 4096)), ((64, 96), (80, 96)),
         dense_of="low-rank W, dense", weight="low_rank", factorize="auto"),
]
STRUCTURED_DENSE = {case.dense_of for case in SUITE if case.dense_of}
FLOAT_TOLERANCE = {"f32": 1e-4, "bf16": 1.6e-2, "f16": 4e-3, "f64": 1e-11}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def make_inputs(shapes: Shapes, dtype: str, seed: int = 0) -> list[np.ndarray]:
    """Uniform [-1, 1) inputs in the storage type of `dtype` (bf16 as uint16 bits, rounded to nearest even)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1.0, 1.0, size=shape).astype(np.float32) for shape in shapes]
    if dtype == "bf16":
        return [bf16_bits(a) for a in arrays]
    return [a.astype({"f32": np.float32, "f16": np.float16, "f64": np.float64}[dtype]) for a in arrays]


def make_weight(kind: str, shape: tuple[int, int], seed: int = 3) -> np.ndarray:
    """A structured f32 weight: `kronecker` A (x) B with square factors, `low_rank` U V^T of rank min(shape) / 64."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    if kind == "kronecker":
        a, b = math.isqrt(rows), math.isqrt(cols)
        return np.kron(rng.uniform(-1, 1, (a, b)), rng.uniform(-1, 1, (rows // a, cols // b))).astype(np.float32)
    rank = max(1, min(shape) // 64)
    return (rng.uniform(-1, 1, (rows, rank)) @ rng.uniform(-1, 1, (rank, cols)) / rank).astype(np.float32)


def bf16_bits(array: np.ndarray) -> np.ndarray:
    bits = array.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def as_float64(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return (np.asarray(array).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.asarray(array).astype(np.float64)


def einsum_error(got: np.ndarray, spec: str, inputs: list[np.ndarray], dtype: str) -> str | None:
    """None when `got` matches numpy's float64 einsum within rounding relative to einsum(|x|), else what is wrong."""
    wide = [as_float64(x, dtype) for x in inputs]
    expected = np.einsum(spec, *wide, optimize=True)
    scale = np.einsum(spec, *(np.abs(x) for x in wide), optimize=True)
    got = as_float64(got, dtype)
    if got.shape != expected.shape:
        return f"shape {got.shape}, numpy gives {expected.shape}"
    tolerance = FLOAT_TOLERANCE[dtype]
    bound = tolerance * np.maximum(scale, 1e-30)
    error = np.abs(got - expected)
    if not np.all(error <= bound):
        return f"differs from numpy by {float(np.max(error / bound)) * tolerance:.2e} relative to einsum(|x|)"
    return None


# ----- stage 1: compile here ---------------------------------------------------------------------------------

def check_programs() -> list[tuple[str, Any, list[np.ndarray]]]:
    """Small programs covering what the GPU targets lower (ops, dtypes, layouts), with their inputs."""
    import einfold
    rng = np.random.default_rng(1)
    uniform = lambda *shape: rng.uniform(-1, 1, size=shape).astype(np.float32)  # noqa: E731
    programs = []

    p = einfold.Program("mlp")
    x = p.input("x", (33, 40))
    w1, b1 = p.const("w1", uniform(40, 70)), p.const("b1", uniform(70))
    w2 = p.const("w2", uniform(70, 20))
    h = p.map("gelu", p.add(p.einsum("bi,ih->bh", x, w1), b1))
    out = p.einsum("bh,ho->bo", p.map("tanh", h), w2)
    p.set_outputs(p.map("sigmoid", p.mul(out, p.map("exp", p.neg(out)))), h)
    programs.append(("mlp", p, [uniform(33, 40)]))

    for dtype in ("f16", "bf16", "f64", "i32", "c64"):
        p = einfold.Program(f"matmul_{dtype}")
        a, b = p.input("a", (70, 50), dtype), p.input("b", (50, 90), dtype)
        p.set_outputs(p.einsum("ij,jk->ik", a, b))
        numpy_type = einfold.dtypes.dtype(dtype).numpy
        values = [rng.integers(-3, 4, size=s) if dtype == "i32" else uniform(*s) for s in ((70, 50), (50, 90))]
        if dtype == "c64":
            values = [v + 1j * uniform(*v.shape) for v in values]
        programs.append((f"matmul_{dtype}", p, [np.asarray(v).astype(numpy_type) for v in values]))

    shapes = {"diagonal": ("ii->i", [(37, 37)]), "trace_product": ("ij,ji->", [(30, 41), (41, 30)]),
              "transposed_gemm": ("ki,jk->ji", [(130, 70), (90, 130)]), "reduction": ("ijk->j", [(20, 30, 16)]),
              "outer": ("i,j->ij", [(50,), (70,)]), "split_k": ("ij,jk->ik", [(64, 3000), (3000, 50)]),
              "split_k_even": ("ij,jk->ik", [(64, 4096), (4096, 50)]),
              "interleaved": ("aib,bjc,ca->jic", [(4, 9, 5), (5, 7, 3), (3, 4)])}
    for name, (spec, operand_shapes) in shapes.items():
        p = einfold.Program(name)
        names = [p.input(f"x{k}", s) for k, s in enumerate(operand_shapes)]
        p.set_outputs(p.einsum(spec, *names))
        programs.append((name, p, [uniform(*s) for s in operand_shapes]))

    p = einfold.Program("layout_ops")
    x, y = p.input("x", (6, 8)), p.input("y", (8,))
    r = p.reshape(p.div(p.sub(x, y), p.add(p.map("abs", y), p.literal(1.0, "f32"))), (4, 12))
    p.set_outputs(p.cast(r, "f16"), x, r, r)
    programs.append(("layout_ops", p, [uniform(6, 8), uniform(8)]))

    p = einfold.Program("divide_i32")  # a kernel that can set the error flag (tests/test_gpu_run.py divides by 0)
    p.set_outputs(p.div(p.input("a", (5,), "i32"), p.input("b", (5,), "i32")))
    programs.append(("divide_i32", p, [np.array([7, -7, 3, 4, 5], np.int32), np.array([2, 2, 1, 3, 5], np.int32)]))

    tensor_core = {"transposed_gemm_bf16": ("ki,jk->ij", [(136, 72), (40, 136)], "bf16"),
                   "batched_gemm_f16": ("bij,bkj->bik", [(3, 100, 72), (3, 60, 72)], "f16")}
    for name, (spec, operand_shapes, dtype) in tensor_core.items():
        p = einfold.Program(name)
        p.set_outputs(p.einsum(spec, *(p.input(f"x{k}", s, dtype) for k, s in enumerate(operand_shapes))))
        programs.append((name, p, [uniform(*s).astype(einfold.dtypes.dtype(dtype).numpy) for s in operand_shapes]))
    return programs


def build_bundle(folder: Path, quick: bool, targets: list[str]) -> int:
    import einfold
    from einfold import backends
    from einfold.reference import run_program
    for target in list(targets):
        try:
            ok, reason = backends.get(target).available()
        except ImportError as error:
            ok, reason = False, f"not built ({error})"
        if not ok:
            print(f"target {target} left out: {reason}")
            targets.remove(target)
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"quick": quick, "targets": targets, "cases": [], "checks": [], "skipped": []}
    for case in SUITE:
        shapes = case.quick_shapes if quick else case.shapes
        entry = {"name": case.name, "spec": case.spec, "shapes": [list(s) for s in shapes], "dtype": case.dtype,
                 "dense_of": case.dense_of, "programs": {}}
        source: Any = case.spec
        if case.weight:
            entry["weight"], entry["weight_compiled"] = case.weight, case.factorize != "none"
        if case.weight and case.factorize != "none":
            source = einfold.Program(slug(case.name))
            source.set_outputs(source.einsum(case.spec, source.input("x", shapes[0], case.dtype),
                                             source.const("W", make_weight(case.weight, shapes[1]))))
        for target in targets:
            start = time.perf_counter()
            try:
                exe = einfold.compile(source, shapes=None if isinstance(source, einfold.Program) else shapes,
                                      dtype=case.dtype, target=target, factorize=case.factorize)
            except einfold.errors.Error as error:
                manifest["skipped"].append(f"{case.name} / {target}: {error}".splitlines()[0])
                continue
            program = exe.gpu_program()
            program = _renamed(program, f"{slug(case.name)}.{target}")
            program.save(folder)
            chosen = {w: c["chosen"] for w, c in exe.stats().get("factorization", {}).items()}
            entry["programs"][target] = {"file": f"{program.name}.json", "flops": exe.stats()["flops"],
                                         "compile_seconds": time.perf_counter() - start, "chosen": chosen}
            print(f"compiled {case.name} for {target} in {time.perf_counter() - start:.1f} s", flush=True)
        manifest["cases"].append(entry)
    for name, program, inputs in check_programs():
        expected = run_program(program, inputs)
        np.savez(folder / f"check_{name}.io.npz", **{f"in{k}": _storage(x) for k, x in enumerate(inputs)},
                 **{f"out{k}": _storage(x) for k, x in enumerate(expected)})
        entry = {"name": name, "io": f"check_{name}.io.npz", "inputs": len(inputs), "outputs": len(expected),
                 "dtypes": [str(program.type_of(v).dtype) for v in program.outputs], "programs": {}}
        for target in targets:
            try:
                exe = einfold.compile(program, target=target)
            except einfold.errors.Error as error:
                manifest["skipped"].append(f"check {name} / {target}: {error}".splitlines()[0])
                continue
            gpu = _renamed(exe.gpu_program(), f"check_{name}.{target}")
            gpu.save(folder)
            entry["programs"][target] = {"file": f"{gpu.name}.json"}
        manifest["checks"].append(entry)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"bundle written to {folder} ({len(manifest['cases'])} cases, {len(manifest['checks'])} checks)")
    for line in manifest["skipped"]:
        print(f"  not compiled: {line}")
    return 0


def _renamed(program: Any, name: str) -> Any:
    from dataclasses import replace
    return replace(program, name=name)


def _storage(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, order="C")
    if array.dtype.name == "bfloat16":
        return array.view(np.uint16)
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    return array


# ----- stage 2: run on the GPU ------------------------------------------------------------------------------

def load_runtime() -> Any:
    """backends/cupy_runtime.py loaded by path (no einfold install needed on the GPU machine)."""
    spec = importlib.util.spec_from_file_location("cupy_runtime", ROOT / "backends" / "cupy_runtime.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cupy_runtime"] = module
    spec.loader.exec_module(module)
    return module


def gpu_time(fn: Any, repeat: int, events: Any, elapsed_ms: Any = None) -> float:
    """Median seconds per call, each call timed between two CUDA events after three warm-up calls
    (`elapsed_ms(start, end)` reads the time; default: the events' own `elapsed_time`, as torch has)."""
    elapsed_ms = elapsed_ms or (lambda start, end: start.elapsed_time(end))
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeat):
        start, end = events(), events()
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(elapsed_ms(start, end) / 1e3)
    return statistics.median(samples)


CHECK_TOLERANCE = {"f16": 2e-3, "bf16": 1e-2, "f32": 2e-5, "f64": 1e-12, "c64": 2e-5, "c128": 1e-12}


def compare(got: np.ndarray, expected: np.ndarray, dtype: str) -> str | None:
    if got.shape != expected.shape:
        return f"shape {got.shape}, expected {expected.shape}"
    if dtype not in CHECK_TOLERANCE:
        return None if np.array_equal(got, expected) else "integers differ"
    widen = (lambda x: as_float64(x, dtype)) if dtype == "bf16" else (lambda x: x)  # noqa: E731
    a, b = widen(got).astype(np.complex128), widen(expected).astype(np.complex128)
    tolerance = CHECK_TOLERANCE[dtype]
    # relative to each element and to the largest one (long sums round relative to their terms, not their result)
    largest = float(np.max(np.abs(b), initial=0.0))
    if np.allclose(a, b, rtol=tolerance, atol=tolerance * max(largest, 1.0), equal_nan=True):
        return None
    return f"max abs error {float(np.max(np.abs(a - b))):.3e} (largest |value| {largest:.3e})"


def case_inputs(entry: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every operand of a suite case's einsum (for numpy and the peers), and those einfold's program takes: a
    structured weight is made again from its seed and, when compiled into the program, is not an input."""
    shapes = tuple(tuple(s) for s in entry["shapes"])
    if "weight" not in entry:
        inputs = make_inputs(shapes, entry["dtype"])
        return inputs, inputs
    inputs = make_inputs(shapes[:1], entry["dtype"]) + [make_weight(entry["weight"], shapes[1])]
    return inputs, inputs[:1] if entry["weight_compiled"] else inputs


def run_checks(folder: Path, manifest: dict, runtime: Any) -> list[str]:
    failures, rows = [], []
    for entry in manifest["checks"]:
        with np.load(folder / entry["io"]) as io:
            inputs = [io[f"in{k}"] for k in range(entry["inputs"])]
            expected = [io[f"out{k}"] for k in range(entry["outputs"])]
        for target, info in entry["programs"].items():
            program = runtime.GpuProgram.load(folder / info["file"])
            outputs = runtime.GpuRunner(program)(inputs)
            problems = [f"output {k}: {p}" for k, (got, want, dtype) in
                        enumerate(zip(outputs, expected, entry["dtypes"])) if (p := compare(got, want, dtype))]
            rows.append((entry["name"], target, "ok" if not problems else "; ".join(problems)))
            failures += [f"check {entry['name']} / {target}: {p}" for p in problems]
    print("\n### Correctness of small programs (vs the numpy reference)\n")
    print(table(["program", "target", "result"], rows))
    return failures


def run_bundle(folder: Path, repeat: int, peers: list[str]) -> int:
    import cupy
    runtime = load_runtime()
    manifest = json.loads((folder / "manifest.json").read_text())
    failures = run_checks(folder, manifest, runtime)
    torch = None
    if "torch" in peers:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False  # f32 means f32: no TF32 tensor cores for the peer either
    targets = manifest["targets"]
    rows, ratios, structured, times = [], [], [], {}
    for entry in manifest["cases"]:
        dtype, spec = entry["dtype"], entry["spec"]
        inputs, ours = case_inputs(entry)
        device = [cupy.asarray(x) for x in ours]
        flops = next(iter(entry["programs"].values()), {}).get("flops", 0)
        cells = {}
        for target in targets:
            info = entry["programs"].get(target)
            if info is None:
                cells[target] = "n/a"
                continue
            runner = runtime.GpuRunner(runtime.GpuProgram.load(folder / info["file"]))
            try:
                got = cupy.asnumpy(runner.run_device(device)[0])
                problem = einsum_error(got, spec, inputs, dtype)
            except Exception as error:  # a launch failure is reported with the table
                problem = f"{type(error).__name__}: {error}".splitlines()[0]
            if problem:
                failures.append(f"{entry['name']} / {target}: {problem}")
                cells[target] = "FAILED"
                continue
            cells[target] = gpu_time(lambda r=runner, d=device: r.run_device(d), repeat, cupy.cuda.Event,
                                     cupy.cuda.get_elapsed_time)
        device = [cupy.asarray(x) for x in inputs]  # the peers take every operand
        peer_calls = {}
        if torch is not None:
            tensors = [torch.as_tensor(x.view(np.int16), device="cuda").view(torch.bfloat16) if dtype == "bf16"
                       else torch.as_tensor(x, device="cuda") for x in inputs]
            peer_calls["torch"] = (lambda s=spec, t=tensors: torch.einsum(s, *t),
                                   lambda: torch.cuda.Event(enable_timing=True), None)
        if "cupy" in peers and dtype != "bf16":
            peer_calls["cupy"] = (lambda s=spec, d=device: cupy.einsum(s, *d, optimize=True), cupy.cuda.Event,
                                  cupy.cuda.get_elapsed_time)
        for peer in peers:
            if peer not in peer_calls:
                cells[peer] = f"n/a ({dtype})"
                continue
            try:
                cells[peer] = gpu_time(peer_calls[peer][0], repeat, *peer_calls[peer][1:])
            except Exception as error:  # a peer that cannot run a case (e.g. out of memory) is reported, not fatal
                cells[peer] = f"failed ({type(error).__name__})"
        times[entry["name"]] = cells
        ours = [cells[t] for t in targets if isinstance(cells.get(t), float)]
        best = min(ours) if ours else None
        peer_times = [cells[p] for p in ("torch", "cupy") if isinstance(cells.get(p), float)]
        ratio = min(peer_times) / best if best and peer_times else None
        if entry["dense_of"] is None and entry["name"] not in STRUCTURED_DENSE and ratio:
            ratios.append(ratio)
        if entry["dense_of"] and best and isinstance(times.get(entry["dense_of"], {}).get(targets[0]), float):
            dense_best = min(v for k, v in times[entry["dense_of"]].items() if k in targets and isinstance(v, float))
            chosen = {t: info.get("chosen") for t, info in entry["programs"].items()}
            structured.append((entry["name"], dense_best / best, chosen))
        rate = f"{flops / best / 1e12:.1f}" if best and flops else "-"
        rows.append([entry["name"], dtype, *(_cell(cells.get(c)) for c in [*targets, *peers]), rate,
                     f"{ratio:.2f}x" if ratio else "-"])
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"\n### GPU einsum suite ({props['name'].decode()}, CUDA events, median of {repeat})\n")
    print(table(["case", "dtype", *targets, *peers, "einfold TFLOP/s", "vs best peer"], rows))
    if ratios:
        print(f"\ngeometric mean of (best peer time / best einfold time) over the suite: "
              f"{math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f}x")
    for name, speedup, chosen in structured:
        print(f"structured: {name} is {speedup:.1f}x faster than its dense form (einfold, best target; "
              f"factorize chose {chosen})")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value * 1e3:.3f} ms"
    return "-" if value is None else str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stage = parser.add_mutually_exclusive_group(required=True)
    stage.add_argument("--build-bundle", type=Path, help="compile every program into this folder (needs einfold)")
    stage.add_argument("--run-bundle", type=Path, help="run a compiled bundle on the GPU (numpy, cupy, torch)")
    parser.add_argument("--quick", action="store_true", help="small shapes (for a fast check)")
    parser.add_argument("--targets", default="ptx,cuda", help="GPU targets to compile for (stage 1)")
    parser.add_argument("--peers", default="torch,cupy", help="peers to time against (stage 2)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per measurement (stage 2)")
    args = parser.parse_args(argv)
    if args.build_bundle:
        sys.path.insert(0, str(ROOT))
        return build_bundle(args.build_bundle, args.quick, [t for t in args.targets.split(",") if t])
    return run_bundle(args.run_bundle, args.repeat, [p for p in args.peers.split(",") if p])


if __name__ == "__main__":
    sys.exit(main())
