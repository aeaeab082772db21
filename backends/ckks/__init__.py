"""The `ckks` target: einsum programs as encrypted RNS-CKKS programs on desilofhe, with visible packing.

The `ckks-packing` pass picks the parameter set and each einsum's joint slot order; `lower` builds the
FHE program (`exe.source('fhe')`), its levels and cost model (`exe.stats()`), and the runtime: `exe(...)`
(encrypt, run, decrypt; `simulate=True` uses the slot simulator) and `exe.keygen/encrypt/run_encrypted/decrypt`.
"""

from __future__ import annotations

from einfold.backend_api import Lowered
from einfold.ir import Program

from . import cost
from .program import plan_program
from .runtime import CkksRuntime

DESCRIPTION = "encrypted RNS-CKKS execution on desilofhe (CPU/GPU) or its slot simulator, with visible packing"


def available() -> tuple[bool, str]:
    try:
        import desilofhe  # noqa: F401
    except ImportError as error:
        return False, f"desilofhe is not installed ({error})"
    return True, ""


def passes(options: dict) -> list[str]:
    return ["ckks-packing"]


def lower(program: Program, options: dict) -> Lowered:
    orders = {op.result: op.attrs["ckks_order"] for op in program.ops if "ckks_order" in op.attrs}
    chosen = next((op.attrs["ckks_params"] for op in program.ops if "ckks_params" in op.attrs), None)
    plan = plan_program(program, {**options, "params": chosen or options.get("params")}, orders)
    runtime = CkksRuntime(program, plan, options)
    text = str(plan.fhe)
    api = {name: getattr(runtime, name) for name in
           ("keygen", "encrypt", "run_encrypted", "decrypt", "simulate", "load_keys", "load_ciphertext",
            "load_result")}
    api["fhe_program"] = plan.fhe
    api["plan"] = plan
    api["runtime"] = runtime
    return Lowered(run=runtime.run, emits={"fhe": lambda: text}, stages={"fhe": text},
                   stats=cost.stats(plan.fhe, plan.levels.depth), api=api, source_kind="fhe", noise=1e-3)
