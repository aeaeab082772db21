"""Parsing the textual IR back into a Program (`einfold.parse_ir`); the inverse of printer.py."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lark
import numpy as np

from . import dtypes as dt
from .errors import IRError, SourceError
from .ir import Program, weight_hash
from .ops import TensorType
from .printer import PRIMARY_ATTR


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark((Path(__file__).parent / "ir.lark").read_text(), parser="lalr", propagate_positions=True)


class _Values(lark.Transformer):
    def string(self, items):
        return json.loads(items[0])

    def number(self, items):
        text = str(items[0])
        return float(text) if any(c in text for c in ".eE") else int(text)

    def true(self, _):
        return True

    def false(self, _):
        return False

    def null(self, _):
        return None

    def nan(self, _):
        return float("nan")

    def inf(self, _):
        return float("inf")

    def neginf(self, _):
        return float("-inf")

    def list(self, items):
        return [] if items == [None] else list(items)

    def pair(self, items):
        return (json.loads(items[0]), items[1])

    def dict(self, items):
        return {} if items == [None] else dict(items)


def parse_ir(text: str, weights: Mapping[str, np.ndarray] | None = None, filename: str = "<ir>") -> Program:
    """Parse IR text. Weights are printed by hash only: pass their arrays to run the program."""
    lines = text.splitlines()
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as error:
        line, column = error.line, error.column
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        expected = sorted(getattr(error, "expected", []) or getattr(error, "allowed", []) or [])
        hint = f"; expected one of {', '.join(expected[:8])}" if expected else ""
        raise SourceError(f"syntax error in IR{hint}", filename, line, column, source) from None
    tree = _Values().transform(tree)
    name_token, *op_trees, ret = tree.children
    program = Program(str(name_token))
    for op_tree in op_trees:
        line = op_tree.meta.line
        try:
            _add_op(program, op_tree, weights or {})
        except IRError as error:
            raise SourceError(str(error), filename, line, op_tree.meta.column, lines[line - 1]) from None
    try:
        program.set_outputs(*(str(t) for t in ret.children))
        program.verify()
    except IRError as error:
        raise SourceError(str(error), filename, ret.meta.line, ret.meta.column, lines[ret.meta.line - 1]) from None
    return program


def _add_op(program: Program, op_tree: lark.Tree, weights: Mapping[str, np.ndarray]) -> None:
    result, opcode, *rest = op_tree.children
    opcode = str(opcode)
    attrs: dict[str, Any] = {}
    operands: list[str] = []
    type_tree = rest.pop()
    for item in rest:
        if isinstance(item, lark.Tree) and item.data == "operands":
            operands = [str(t) for t in item.children if t is not None]
        elif isinstance(item, lark.Tree) and item.data == "attrs":
            attrs.update((str(a.children[0]), a.children[1]) for a in item.children if a is not None)
        else:
            if opcode not in PRIMARY_ATTR:
                raise IRError(f"{opcode} takes no leading value")
            attrs[PRIMARY_ATTR[opcode]] = item
    dtype_token, *dims = type_tree.children
    declared = TensorType(tuple(int(d) for d in dims if d is not None), dt.dtype(str(dtype_token)))
    if opcode == "const":
        weight_name = attrs.get("name")
        data = weights.get(weight_name) if isinstance(weight_name, str) else None
        if data is not None:
            data = np.asarray(data)
            if "sha" in attrs and weight_hash(data) != attrs["sha"]:
                raise IRError(f"weight {weight_name!r} does not match the hash {attrs['sha']} in the IR")
            program.weights[weight_name] = data
    program.append(opcode, operands, attrs, declared, str(result))
