"""The `einfold` command: compile, run, inspect, targets, passes.

User errors (any `einfold.Error`, a missing file) exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import dtypes as dt
from .driver import Executable, compile, to_program
from .errors import Error, SourceError
from .ir import Program


def _parse_assignments(items: Sequence[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise Error(f"{what} expects NAME=VALUE, got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _dims(items: Sequence[str]) -> dict[str, int] | None:
    dims = {}
    for name, value in _parse_assignments(items, "--dim").items():
        try:
            dims[name] = int(value)
        except ValueError:
            raise Error(f"--dim {name}={value}: the size must be an integer") from None
    return dims or None


def _options(args: argparse.Namespace) -> dict:
    options: dict = {}
    if getattr(args, "factorize", None):
        options["factorize"] = args.factorize if args.factorize in ("auto", "none") else args.factorize.split(",")
    if getattr(args, "tol", None) is not None:
        options["tol"] = args.tol
    for name, value in _parse_assignments(getattr(args, "option", None) or [], "--option").items():
        options[name] = _literal(value)
    return options


def _literal(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _load(args: argparse.Namespace) -> Program:
    path = Path(args.file)
    if not path.exists():
        raise Error(f"no such file: {path}")
    if path.suffix == ".ein":
        return to_program(path, dims=_dims(args.dim))
    text = path.read_text()
    if text.lstrip().startswith("program @"):
        from .textir import parse_ir
        weights = dict(np.load(args.weights)) if getattr(args, "weights", None) else None
        return parse_ir(text, weights=weights, filename=str(path))
    raise Error(f"{path}: expected a .ein program or einfold IR text (starting with 'program @')")


def _compile(args: argparse.Namespace, program: Program, print_after=None) -> Executable:
    passes = args.passes.split(",") if getattr(args, "passes", None) else None
    return compile(program, target=args.target, passes=passes, print_after=print_after, **_options(args))


def random_input(shape: tuple[int, ...], element: dt.DType, rng: np.random.Generator) -> np.ndarray:
    """A reproducible random array of the given einfold dtype."""
    if element.is_modular:
        return rng.integers(0, element.modulus, size=shape, dtype=np.uint64)
    if element.name == "bool":
        return rng.random(shape) < 0.5
    if element.is_int:
        info = np.iinfo(element.numpy)
        return rng.integers(max(info.min, -8), min(info.max, 8) + 1, size=shape).astype(element.numpy)
    if element.is_complex:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(element.numpy)
    return rng.standard_normal(shape).astype(element.numpy)


def _inputs(program: Program, given: dict[str, str], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    names = {op.result for op in program.inputs}
    unknown = set(given) - names
    if unknown:
        raise Error(f"--input names {', '.join(sorted(unknown))}, but the inputs are {', '.join(sorted(names))}")
    arrays = []
    for op in program.inputs:
        if op.result in given:
            path = Path(given[op.result])
            if not path.exists():
                raise Error(f"--input {op.result}: no such file: {path}")
            arrays.append(np.load(path))
        else:
            arrays.append(random_input(op.type.shape, op.type.dtype, rng))
    return arrays


def tolerance(element: dt.DType) -> float:
    """Relative tolerance for comparing a backend with the numpy reference."""
    return {"f16": 2e-2, "bf16": 5e-2, "f32": 1e-4, "c64": 1e-4, "f64": 1e-9, "c128": 1e-9}.get(element.name, 0.0)


def cmd_compile(args: argparse.Namespace) -> int:
    program = _load(args)
    exe = _compile(args, program, print_after=args.print_after)
    text = exe.source(args.emit)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.emit} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    program = _load(args)
    exe = _compile(args, program)
    if args.emit:
        print(f"// ----- {args.emit} ({exe.target}) -----")
        text = exe.source(args.emit)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    inputs = _inputs(exe.program, _parse_assignments(args.input or [], "--input"), args.seed)
    start = time.perf_counter()
    outputs = exe(*inputs)
    seconds = time.perf_counter() - start
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    stats = exe.stats()
    print(f"ran @{exe.program.name} on {exe.target} in {seconds * 1e3:.3f} ms "
          f"(compile {stats['compile_seconds'] * 1e3:.1f} ms, {stats['flops']:,} flops)")
    for key, value in stats.items():
        if key not in ("flops", "compile_seconds", "pass_seconds", "contractions", "factorization",
                       "flops_input", "flops_dense") and isinstance(value, (int, float, str)):
            print(f"  {key}: {value}")
    for name, value in zip(exe.program.outputs, outputs):
        print(f"  %{name}: {value.dtype}{list(value.shape)}")
    if args.save:
        np.save(args.save, outputs[0])
    if not args.check:
        return 0
    from .reference import run_program
    expected = run_program(program, [np.asarray(a) for a in exe.check_inputs(inputs)])
    ok = True
    for name, got, want in zip(exe.program.outputs, outputs, expected):
        error = _max_error(got, want)
        scale = float(np.max(np.abs(want.astype(np.complex128 if want.dtype.kind == "c" else np.float64)))) \
            if want.size and want.dtype.kind in "fcV" else 1.0
        limit = max(tolerance(exe.program.type_of(name).dtype) * max(scale, 1.0), exe.noise)
        verdict = "ok" if error <= limit else "MISMATCH"
        ok &= error <= limit
        print(f"check %{name}: max abs error {error:.3e} vs numpy reference (limit {limit:.1e}) {verdict}")
    return 0 if ok else 1


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    if want.size == 0:
        return 0.0
    if want.dtype.kind in "iub":
        return float(np.max(np.abs(got.astype(object) - want.astype(object))))
    kind = np.complex128 if want.dtype.kind == "c" else np.float64
    return float(np.max(np.abs(got.astype(kind) - want.astype(kind))))


def cmd_inspect(args: argparse.Namespace) -> int:
    program = _load(args)
    exe = _compile(args, program)
    seconds = exe.stats()["pass_seconds"]
    for stage in exe.stages:
        timing = f" ({seconds[stage] * 1e3:.2f} ms)" if stage in seconds else ""
        print(f"// ===== {stage}{timing} =====")
        text = exe.ir(stage)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    stats = exe.stats()
    print(f"// flops {stats['flops']:,} (input program {stats['flops_input']:,}), params {stats['params']:,}, "
          f"compile {stats['compile_seconds'] * 1e3:.1f} ms")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .backends import availability
    for name, (ok, reason, description) in availability().items():
        status = "available" if ok else f"unavailable ({reason})"
        print(f"{name:8} {status:12} {description}" if ok else f"{name:8} {status}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from .passes import DEFAULT_PIPELINE, PASSES
    for name, p in sorted(PASSES.items()):
        summary = getattr(p, "summary", "") or (type(p).__doc__ or "").strip().splitlines()[0]
        marker = "*" if name in DEFAULT_PIPELINE else " "
        print(f"{marker} {name:18} {summary}")
    print("(* = in the default pipeline)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="einfold", description="Compile and run einsum programs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def program_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="a .ein program or an einfold IR file")
        p.add_argument("--target", "-t", default="numpy", help="backend (see `einfold targets`)")
        p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="bind a symbolic dimension")
        p.add_argument("--passes", help="comma-separated pass list instead of the default pipeline")
        p.add_argument("--factorize", help="structured factorization: auto, none, or a comma-separated list")
        p.add_argument("--tol", type=float, help="tolerance for approximate factorizations (default 1e-6)")
        p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a backend or pass option")
        p.add_argument("--weights", help="an .npz of weights for an IR file (weights print by hash only)")

    p = sub.add_parser("compile", help="compile and print the IR or generated code")
    program_args(p)
    p.add_argument("--emit", default="ir", help="ir, dot, or what the target offers (tir, llvm, asm, fhe, tpu, ...)")
    p.add_argument("-o", "--output", help="write the emitted text to this file")
    p.add_argument("--print-after", metavar="PASS|all", help="print the IR after this pass (or all passes)")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("run", help="compile and run on given or random inputs")
    program_args(p)
    p.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy", help="an input array")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--check", action="store_true", help="compare with the numpy reference; exit 1 on mismatch")
    p.add_argument("--emit", help="also print this form of the compiled program (ir, llvm, ...)")
    p.add_argument("--save", metavar="FILE.npy", help="save the first output")
    p.set_defaults(run=cmd_run)

    p = sub.add_parser("inspect", help="show the IR after every pass, with per-pass time")
    program_args(p)
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("targets", help="list the backends and whether they run here")
    p.set_defaults(run=cmd_targets)
    p = sub.add_parser("passes", help="list the passes")
    p.set_defaults(run=cmd_passes)
    return parser


def one_line(error: BaseException) -> str:
    """A user error as one line (a SourceError keeps its location and quotes the source line)."""
    if isinstance(error, SourceError):
        where = f"{error.filename}:{error.line}:{error.column}: " if error.line else f"{error.filename}: "
        message = error.message.splitlines()[0]
        source = error.source_line.strip()
        return where + message + (f"  [in: {source}]" if source else "")
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (Error, OSError) as error:
        print(f"einfold: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
