"""Bit-exact numpy executor of a tiled program: each step computes what the engine's unit would.

Integer GEMMs (int8 x int8 -> int32) run as float64 BLAS products, exact because the compile-time checks keep
|accumulators| < 2^31 < 2^53. Float GEMMs round inputs to bf16, sum each K tile exactly (float64) and round it to
f32, then add the tiles in f32 in order, as an MXU with f32 accumulators does.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np

from einfold.reference import evaluate_op

from . import barrett
from . import bat as bat_ops
from .tiling import (
    Bytes,
    Combine,
    FloatGemm,
    Gemm,
    ModElementwise,
    Reduce,
    TiledProgram,
    Vector,
    View,
    step_inputs,
)


def int_gemm(weights: np.ndarray, data: np.ndarray) -> np.ndarray:
    """W[m, kc] . X[pre, kc, post] -> int32[pre, m, post], exactly."""
    w = weights.astype(np.float64)
    x = data.astype(np.float64)
    if data.shape[2] == 1:
        out = (x[:, :, 0] @ w.T)[:, :, None]
    else:
        out = np.matmul(w, x)
    return out.astype(np.int32)


def float_gemm(step: FloatGemm, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The engine's float einsum: bf16 inputs, exact K-tile sums rounded to f32, f32 accumulation across tiles."""
    spec_in, out_labels = step.spec.split("->")
    a_term, b_term = spec_in.split(",")
    a16 = a.astype(ml_dtypes.bfloat16).astype(np.float64)
    b16 = b.astype(ml_dtypes.bfloat16).astype(np.float64)
    batch = [x for x in out_labels if x in a_term and x in b_term]
    m = [x for x in a_term if x not in b_term]
    n = [x for x in b_term if x not in a_term]
    k = [x for x in a_term if x in b_term and x not in out_labels]
    a3 = np.einsum(f"{a_term}->{''.join(batch + m + k)}", a16).reshape(step.batch, step.m, step.k)
    b3 = np.einsum(f"{b_term}->{''.join(batch + k + n)}", b16).reshape(step.batch, step.k, step.n)
    acc = np.zeros((step.batch, step.m, step.n), dtype=np.float32)
    for start in range(0, step.k, step.tile_k):
        stop = min(start + step.tile_k, step.k)
        acc = acc + np.matmul(a3[:, :, start:stop], b3[:, start:stop, :]).astype(np.float32)
    sizes = dict(zip(batch + m + n, [*_label_sizes(a_term, a.shape, batch + m), *_label_sizes(b_term, b.shape, n)]))
    full = acc.reshape([sizes[x] for x in batch + m + n])
    return np.einsum(f"{''.join(batch + m + n)}->{out_labels}", full).astype(step.dtype)


def _label_sizes(term: str, shape: tuple[int, ...], labels: list[str]) -> list[int]:
    return [shape[term.index(x)] for x in labels]


def _view(step: View, args: list[np.ndarray]) -> np.ndarray:
    if step.how == "select":
        return np.take(args[0], step.index, axis=step.axis)
    if step.how == "embed":
        out = np.zeros(step.shape, dtype=step.dtype)
        index = [slice(None)] * len(step.shape)
        index[step.axis] = step.index
        out[tuple(index)] = args[0]
        return out
    if step.how == "assemble":
        return args[0] + args[1]
    return args[0].reshape(step.shape).astype(step.dtype, copy=False)


def _mod_elementwise(step: ModElementwise, args: list[np.ndarray]) -> np.ndarray:
    values = [np.asarray(a, dtype=np.uint64) for a in args]
    if step.op == "mul":
        return barrett.mulmod(values[0], values[1], barrett.barrett(step.q), np)
    if step.op == "add":
        return barrett.addmod(values[0], values[1], step.q, np)
    if step.op == "sub":
        return barrett.submod(values[0], values[1], step.q, np)
    return barrett.submod(np.zeros_like(values[0]), values[0], step.q, np)


def _combine(step: Combine, acc: np.ndarray, bias: np.ndarray) -> np.ndarray:
    rows = step.block.rows * step.block.k_out
    part = acc[:, step.row_start:step.row_start + rows, :]
    return bat_ops.combine(part, bias[step.row_start:step.row_start + rows], step.block, np).reshape(step.shape)


RUNNERS: dict[type, Callable[..., np.ndarray]] = {
    View: lambda step, args, tiled: _view(step, args),
    Reduce: lambda step, args, tiled: args[0].astype(np.uint64) % np.uint64(step.q),
    Bytes: lambda step, args, tiled: bat_ops.data_bytes(args[0].reshape(step.pre, step.j, step.post), step.k, np),
    Gemm: lambda step, args, tiled: int_gemm(args[0], args[1]),
    Combine: lambda step, args, tiled: _combine(step, args[0], args[1]),
    ModElementwise: lambda step, args, tiled: _mod_elementwise(step, args),
    FloatGemm: lambda step, args, tiled: float_gemm(step, args[0], args[1]),
    Vector: lambda step, args, tiled: np.asarray(evaluate_op(step.op, args, {})),
}




def execute(tiled: TiledProgram, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the tiled program on concrete inputs (in the program's input order)."""
    env: dict[str, np.ndarray] = dict(tiled.consts)
    for (name, _, _), value in zip(tiled.inputs, inputs):
        env[name] = value
    for step in tiled.steps:
        env[step.out] = RUNNERS[type(step)](step, [env[v] for v in step_inputs(step)], tiled)
    return [env[name] for name in tiled.outputs]
