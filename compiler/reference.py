"""Reference semantics of every op, in numpy: the oracle that all backends are tested against.

float16/bfloat16 einsums accumulate in float32 and round once; integer arithmetic wraps like C;
`zq(q)` arithmetic is exact modulo q (einsums go through Python integers when products could overflow).
"""

from __future__ import annotations

import math

import numpy as np

from . import dtypes as dt
from .errors import IRError, RuntimeFailure
from .functions import lookup
from .ir import Op, Program
from .spec import EinsumSpec


def literal_array(op: Op) -> np.ndarray:
    value = op.attrs["value"]
    if isinstance(value, list):
        value = complex(value[0], value[1])
    return np.asarray(value).astype(op.type.dtype.numpy)


def _modular_einsum(spec: str, arrays: list[np.ndarray], q: int) -> np.ndarray:
    """Exact einsum modulo q: uint64 when no sum of products can overflow, 16-bit limbs (float64 BLAS) for two
    operands, Python integers otherwise."""
    parsed = EinsumSpec.parse(spec)
    sizes = parsed.sizes([a.shape for a in arrays])
    terms_per_output = math.prod(sizes[label] for label in parsed.summed)
    if (q - 1) ** len(arrays) * terms_per_output < 2**64:
        return np.asarray(np.einsum(spec, *arrays, optimize=len(arrays) > 2)) % np.uint64(q)
    if len(arrays) == 2 and terms_per_output * (LIMB - 1) ** 2 < 2**53:
        return _modular_einsum_limbs(spec, arrays[0], arrays[1], q)
    result = np.einsum(spec, *(a.astype(object) for a in arrays), optimize=len(arrays) > 2)
    return (np.asarray(result) % q).astype(np.uint64)


LIMB = 2**16


def _modular_einsum_limbs(spec: str, a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """Exact two-operand einsum modulo q < 2^64 from 16-bit limbs: a = sum_i a_i 2^(16 i), likewise b, and
    a.b = sum_k 2^(16 k) sum_(i+j=k) a_i.b_j, each limb product an exact float64 BLAS einsum (terms x 2^32 < 2^53).
    The limb sums are combined by Horner's rule in uint64: r = r * 2^16 + S_k (mod q), the shift in small steps."""
    width = (q - 1).bit_length()
    count = -(-width // 16)
    limbs_a = [((a >> np.uint64(16 * i)) & np.uint64(LIMB - 1)).astype(np.float64) for i in range(count)]
    limbs_b = [((b >> np.uint64(16 * j)) & np.uint64(LIMB - 1)).astype(np.float64) for j in range(count)]
    q64 = np.uint64(q)
    result = None
    for k in range(2 * count - 2, -1, -1):
        partial = None
        for i in range(max(0, k - count + 1), min(k, count - 1) + 1):
            term = np.asarray(np.einsum(spec, limbs_a[i], limbs_b[k - i], optimize=True)).astype(np.uint64) % q64
            partial = term if partial is None else _add_mod(partial, term, q64)
        assert partial is not None
        result = partial if result is None else _add_mod(_shift_mod(result, 16, q), partial, q64)
    assert result is not None
    return np.asarray(result, dtype=np.uint64)


def _add_mod(x: np.ndarray, y: np.ndarray, q64: np.uint64) -> np.ndarray:
    """x + y mod q for x, y < q without overflowing uint64."""
    room = q64 - y
    return np.where(x >= room, x - room, x + y)


def _shift_mod(x: np.ndarray, bits: int, q: int) -> np.ndarray:
    """x * 2^bits mod q for x < q < 2^64, shifting by at most 64 - bitlen(q) bits at a time (doubling when
    q needs all 64 bits), so nothing overflows."""
    step = 64 - (q - 1).bit_length()
    q64 = np.uint64(q)
    while bits > 0:
        shift = min(step, bits)
        x = (x << np.uint64(shift)) % q64 if shift else _add_mod(x, x, q64)
        bits -= max(shift, 1)
    return x


def _modular_binary(opcode: str, a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    if q < 2**32:
        a64, b64, q64 = a.astype(np.uint64), b.astype(np.uint64), np.uint64(q)
        if opcode == "add":
            return (a64 + b64) % q64
        if opcode == "sub":
            return (a64 + (q64 - b64)) % q64
        if opcode == "mul":
            return (a64 * b64) % q64
    ao, bo = a.astype(object), b.astype(object)
    result = {"add": lambda: ao + bo, "sub": lambda: ao - bo, "mul": lambda: ao * bo}[opcode]()
    return (np.asarray(result) % q).astype(np.uint64)


def _float_einsum(spec: str, arrays: list[np.ndarray], out_dtype: np.dtype) -> np.ndarray:
    if out_dtype in (dt.float16.numpy, dt.bfloat16.numpy):
        arrays = [a.astype(np.float32) for a in arrays]
    return np.asarray(np.einsum(spec, *arrays, optimize=len(arrays) > 2)).astype(out_dtype)


def evaluate_op(op: Op, args: list[np.ndarray], weights: dict[str, np.ndarray]) -> np.ndarray:
    """The value of one op given its operands' values."""
    element = op.type.dtype
    storage = element.numpy
    code = op.opcode
    if code == "const":
        name = op.attrs["name"]
        if name not in weights:
            raise RuntimeFailure(f"weight {name!r} has no data: the program was parsed from text without it; "
                                 f"pass weights={{{name!r}: array}}")
        return weights[name]
    if code == "literal":
        return literal_array(op)
    if code == "einsum":
        if element.is_modular:
            return _modular_einsum(op.attrs["spec"], args, element.modulus)
        return _float_einsum(op.attrs["spec"], args, storage)
    if code in ("add", "sub", "mul", "div", "pow"):
        a, b = args
        if element.is_modular:
            return _modular_binary(code, a, b, element.modulus)
        if element.name == "bool":
            return (np.logical_or(a, b) if code == "add" else np.logical_and(a, b)).astype(storage)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if code == "div" and element.is_int:
                return _int_div(a, b)
            fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power}[code]
            return np.asarray(fn(a, b)).astype(storage)
    if code == "neg":
        if element.is_modular:
            return ((np.uint64(element.modulus) - args[0]) % np.uint64(element.modulus)).astype(storage)
        return np.negative(args[0])
    if code == "map":
        fn = lookup(op.attrs["fn"])
        x = args[0]
        if element.is_modular:
            return _modular_poly(x, op, element.modulus)
        wide = x.astype(np.float32) if storage in (dt.float16.numpy, dt.bfloat16.numpy) else x
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            value = fn.reference(wide, op.attrs["coeffs"]) if fn.name == "poly" else fn.reference(wide)
        return np.asarray(value).astype(storage)
    if code == "reshape":
        return args[0].reshape(op.type.shape)
    if code == "cast":
        return _cast(args[0], element)
    raise IRError(f"the reference evaluator has no rule for {code}")


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C-style integer division (truncating); division by zero is an error, not a silent value."""
    if np.any(b == 0):
        raise RuntimeFailure("integer division by zero")
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient).astype(np.result_type(a, b))


def _modular_poly(x: np.ndarray, op: Op, q: int) -> np.ndarray:
    if op.attrs["fn"] == "square":
        return _modular_binary("mul", x, x, q)
    coeffs = op.attrs["coeffs"]
    result = np.zeros_like(x, dtype=np.uint64)
    for c in reversed(coeffs):
        if int(c) != c:
            raise IRError(f"map poly on zq({q}) needs integer coefficients, got {c}")
        result = _modular_binary("add", _modular_binary("mul", result, x, q),
                                 np.full_like(result, int(c) % q), q)
    return result


def _cast(x: np.ndarray, target: dt.DType) -> np.ndarray:
    if target.is_modular:
        if x.dtype.kind == "f" or x.dtype.kind == "c":
            raise RuntimeFailure(f"cannot cast floating values to {target}")
        return (x.astype(object) % target.modulus).astype(np.uint64)
    if x.dtype.kind == "c" and (target.is_float or target.is_int):
        x = x.real  # numpy's astype keeps the real part too, but warns (ComplexWarning); bool looks at both parts
    return x.astype(target.numpy)


def run_program(program: Program, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Evaluate a whole program on concrete inputs (in the order of its input ops)."""
    values: dict[str, np.ndarray] = {}
    for op, array in zip(program.inputs, inputs):
        values[op.result] = array
    for op in program.ops:
        if op.opcode != "input":
            values[op.result] = evaluate_op(op, [values[v] for v in op.operands], program.weights)
    return [values[name] for name in program.outputs]
