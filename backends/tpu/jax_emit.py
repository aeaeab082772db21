"""Emitter of JAX code for a tiled program: one statement per step, GEMMs as `jax.lax.dot_general` with
`preferred_element_type`, the BAT/Barrett epilogues as the same functions the numpy executor runs (their source is
copied into the module). The module needs only numpy and jax; constants come in a dict (saved as an .npz).
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from einfold.errors import RuntimeFailure, UnsupportedError

from . import barrett as barrett_module
from . import bat as bat_module
from .tiling import Bytes, Combine, FloatGemm, Gemm, ModElementwise, Reduce, Step, TiledProgram, Vector, View

HEADER = '''"""JAX kernel emitted by einfold for the tpu program @{name}.
Run: kernel = build(dict(np.load("{name}.npz"))); outputs = kernel(*inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
MASK32 = 0xFFFFFFFF
'''

HELPERS = [barrett_module.Barrett, bat_module.BatBlock, barrett_module.mul_wide, barrett_module._finish,
           barrett_module.reduce_word, barrett_module.reduce_wide, barrett_module.mulmod, barrett_module.addmod,
           barrett_module.submod, bat_module.data_bytes, bat_module.combine]

VECTOR_FUNCTIONS = {
    "relu": "jnp.maximum({x}, 0)", "exp": "jnp.exp({x})", "log": "jnp.log({x})", "tanh": "jnp.tanh({x})",
    "sigmoid": "jax.nn.sigmoid({x})", "gelu": "jax.nn.gelu({x}, approximate=True)", "sqrt": "jnp.sqrt({x})",
    "reciprocal": "(1 / {x})", "abs": "jnp.abs({x})", "square": "({x} * {x})",
}
BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _barrett_literal(q: int) -> str:
    p = barrett_module.barrett(q)
    return f"Barrett(q={p.q}, c={p.c}, s={p.s}, m={p.m})"


class _Names:
    def __init__(self, tiled: TiledProgram):
        self.names: dict[str, str] = {}
        self.consts = set(tiled.consts)
        for k, (name, _, _) in enumerate(tiled.inputs):
            self.names[name] = f"x{k}"

    def __call__(self, buffer: str) -> str:
        if buffer in self.names:
            return self.names[buffer]
        if buffer in self.consts:
            return f"c[{buffer!r}]"
        self.names[buffer] = f"v{len(self.names)}"
        return self.names[buffer]


def _gemm(step: Gemm, w: str, x: str) -> str:
    if step.input_type == "bf16":  # the exact bf16 path: integer digits as bf16, f32 sums below 2^24
        w, x = f"{w}.astype(jnp.bfloat16)", f"{x}.astype(jnp.bfloat16)"
        return f"{_int_gemm(step, w, x, 'jnp.float32')}.astype(jnp.int32)"
    return _int_gemm(step, w, x, "jnp.int32")


def _int_gemm(step: Gemm, w: str, x: str, accumulator: str) -> str:
    typed = f"preferred_element_type={accumulator}"
    if step.post == 1:
        return (f"jax.lax.dot_general({x}.reshape({step.pre}, {step.kc}), {w}, (((1,), (1,)), ((), ())), {typed})"
                f".reshape({step.pre}, {step.m}, 1)")
    if step.pre == 1:
        return f"jax.lax.dot_general({w}, {x}[0], (((1,), (0,)), ((), ())), {typed})[None]"
    return f"jnp.transpose(jax.lax.dot_general({w}, {x}, (((1,), (1,)), ((), ())), {typed}), (1, 0, 2))"


def _vector(step: Vector, args: list[str]) -> str:
    op = step.op
    wide = [f"{a}.astype(jnp.float32)" if step.dtype == "bfloat16" else a for a in args]
    if op.opcode in BINARY:
        expression = f"({wide[0]} {BINARY[op.opcode]} {wide[1]})"
    elif op.opcode == "neg":
        expression = f"(-{wide[0]})"
    elif op.opcode == "map" and op.attrs["fn"] in VECTOR_FUNCTIONS:
        expression = VECTOR_FUNCTIONS[op.attrs["fn"]].format(x=wide[0])
    elif op.opcode == "map" and op.attrs["fn"] == "poly":
        expression = "0"
        for coeff in reversed(op.attrs["coeffs"]):
            expression = f"({expression} * {wide[0]} + {coeff!r})"
    elif op.opcode == "einsum":
        expression = f"jnp.einsum({op.attrs['spec']!r}, {', '.join(wide)})"
    elif op.opcode in ("cast", "reshape"):
        expression = wide[0]
    else:
        raise UnsupportedError(f"tpu: the JAX emitter has no rule for {op.opcode} %{op.result}")
    return f"jnp.asarray({expression}).reshape({step.shape}).astype(jnp.{step.dtype})"


def statement(step: Step, name: _Names, blocks: dict[str, str]) -> str:
    """One line of the kernel body for a step."""
    if isinstance(step, View):
        srcs = [name(s) for s in step.srcs]
        if step.how == "select":
            value = f"jnp.take({srcs[0]}, {step.index}, axis={step.axis})"
        elif step.how == "embed":
            index = "(slice(None),) * " + str(step.axis) + f" + ({step.index},)"
            value = f"jnp.zeros({step.shape}, jnp.{step.dtype}).at[{index}].set({srcs[0]})"
        elif step.how == "assemble":
            value = f"{srcs[0]} + {srcs[1]}"
        else:
            value = f"{srcs[0]}.reshape({step.shape}).astype(jnp.{step.dtype})"
    elif isinstance(step, Reduce):
        value = f"{name(step.src)} % jnp.uint64({step.q})"
    elif isinstance(step, Bytes):
        value = f"data_bytes({name(step.src)}.reshape({step.pre}, {step.j}, {step.post}), {step.k}, jnp)"
    elif isinstance(step, Gemm):
        value = _gemm(step, name(step.weights), name(step.data))
    elif isinstance(step, Combine):
        rows = step.block.rows * step.block.k_out
        span = f"{step.row_start}:{step.row_start + rows}"
        block = blocks.setdefault(step.out, f"B{len(blocks)}")
        value = (f"combine({name(step.acc)}[:, {span}, :], {name(step.bias)}[{span}], {block}, jnp)"
                 f".reshape({step.shape})")
    elif isinstance(step, ModElementwise):
        args = [f"jnp.asarray({name(s)}, jnp.uint64)" for s in step.srcs]
        if step.op == "mul":
            value = f"mulmod({args[0]}, {args[1]}, {_barrett_literal(step.q)}, jnp)"
        elif step.op in ("add", "sub"):
            value = f"{step.op}mod({args[0]}, {args[1]}, {step.q}, jnp)"
        else:
            value = f"submod(jnp.zeros_like({args[0]}), {args[0]}, {step.q}, jnp)"
        value = f"jnp.broadcast_to({value}, {step.shape})"
    elif isinstance(step, FloatGemm):
        a, b = (f"{name(s)}.astype(jnp.bfloat16)" for s in step.srcs)
        value = f"jnp.einsum({step.spec!r}, {a}, {b}, preferred_element_type=jnp.float32).astype(jnp.{step.dtype})"
    elif isinstance(step, Vector):
        value = _vector(step, [name(s) for s in step.srcs])
    else:
        raise UnsupportedError(f"tpu: the JAX emitter has no rule for {type(step).__name__}")
    return f"    {name(step.out)} = {value}  # {step.unit}: {type(step).__name__.lower()} %{step.out}"


def emit_jax(tiled: TiledProgram) -> str:
    """The JAX module text: helpers, the row-block constants, `kernel(c, *inputs)` and `build(consts)`."""
    name = _Names(tiled)
    blocks: dict[str, str] = {}
    body = [statement(step, name, blocks) for step in tiled.steps]
    block_lines = []
    for step in tiled.steps:
        if isinstance(step, Combine):
            b = step.block
            block_lines.append(f"{blocks[step.out]} = BatBlock(q={b.q}, rows={b.rows}, k_out={b.k_out}, "
                               f"offset={b.offset}, barrett={_barrett_literal(b.q)})")
    helpers = "\n\n".join(inspect.getsource(h) for h in HELPERS)
    inputs = ", ".join(name(n) for n, _, _ in tiled.inputs)
    outputs = ", ".join(name(n) for n in tiled.outputs)
    module_name = re.sub(r"\W", "_", tiled.name)
    return "\n".join([
        HEADER.format(name=module_name), helpers, "", *block_lines, "", "",
        f"def kernel(c: dict, {inputs}) -> tuple:", *body, f"    return ({outputs},)", "", "",
        "def build(consts: dict) -> Any:",
        '    """The jitted kernel over the given constants (numpy arrays by name)."""',
        "    device_consts = {k: jnp.asarray(v) for k, v in consts.items()}",
        "    return jax.jit(lambda *inputs: kernel(device_consts, *inputs))", "",
    ])


def load_jax(tiled: TiledProgram) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Execute the emitted module here and return a runner over numpy inputs (jax must be installed)."""
    try:
        import jax  # noqa: F401
    except ImportError as error:
        raise RuntimeFailure(f"the tpu target's JAX path needs jax: pip install 'jax>=0.4' ({error})") from None
    module = types.ModuleType("einfold_jax_" + re.sub(r"\W", "_", tiled.name))
    sys.modules[module.__name__] = module  # dataclasses look their module up while the source runs
    exec(compile(emit_jax(tiled), f"<einfold jax @{tiled.name}>", "exec"), module.__dict__)
    kernel = module.build(tiled.consts)
    return lambda inputs: [np.asarray(v) for v in kernel(*inputs)]


def write_jax(tiled: TiledProgram, path: str | Path) -> tuple[Path, Path]:
    """Write `<path>.py` (the module) and `<path>.npz` (its constants); returns both paths."""
    base = Path(path).with_suffix("")
    source, consts = base.with_suffix(".py"), base.with_suffix(".npz")
    source.write_text(emit_jax(tiled))
    np.savez_compressed(consts, **tiled.consts)
    return source, consts
