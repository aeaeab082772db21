"""Einsum specs: parsing numpy's notation into a normalised spec, with errors that point at the fault.

A normalised spec has explicit output, one letter per index, no `...` and no size-1 broadcasting:
`'...ij,...jk'` over shapes (5,2,3), (3,4) becomes `'aij,jk->aik'`; a size-1 dimension that broadcasts
against a larger one gets a letter of its own, summed away (`'ij,ij->ij'` over (3,1), (3,4) becomes
`'ia,ij->ij'`). Backends therefore only ever see exact, consistent index sizes.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from .errors import SpecError

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class EinsumSpec:
    """A normalised einsum: one index string per operand and the output's index string."""

    inputs: tuple[str, ...]
    output: str

    def __str__(self) -> str:
        return ",".join(self.inputs) + "->" + self.output

    @staticmethod
    def parse(text: str) -> EinsumSpec:
        """Parse an already-normalised spec (letters only, explicit `->`), as printed in the IR."""
        if text.count("->") != 1:
            raise SpecError(_point(text, text.find("->") if "->" in text else len(text),
                                   "a normalised spec needs exactly one '->'"))
        lhs, out = text.split("->")
        for col, char in enumerate(text):
            if char not in LETTERS and char not in ",->":
                raise SpecError(_point(text, col, f"unexpected character {char!r}; expected a letter"))
        inputs = tuple(lhs.split(","))
        spec = EinsumSpec(inputs, out)
        spec.check_labels(text)
        return spec

    def check_labels(self, text: str | None = None) -> None:
        """Output labels must be distinct and all appear in some input."""
        text = text or str(self)
        seen: set[str] = set()
        offset = len(",".join(self.inputs)) + 2
        used = set("".join(self.inputs))
        for i, label in enumerate(self.output):
            if label in seen:
                raise SpecError(_point(text, offset + i, f"output label {label!r} appears twice"))
            if label not in used:
                raise SpecError(_point(text, offset + i, f"output label {label!r} does not appear in any input"))
            seen.add(label)

    @property
    def labels(self) -> str:
        """Every label, in order of first appearance."""
        return "".join(dict.fromkeys("".join(self.inputs) + self.output))

    @property
    def summed(self) -> str:
        """Labels that are contracted away (not in the output)."""
        return "".join(label for label in self.labels if label not in self.output)

    def sizes(self, shapes: list[tuple[int, ...]] | tuple[tuple[int, ...], ...]) -> dict[str, int]:
        """Size of each label, checking that every occurrence agrees exactly."""
        if len(shapes) != len(self.inputs):
            raise SpecError(f"einsum '{self}' takes {len(self.inputs)} operands, got {len(shapes)}")
        sizes: dict[str, int] = {}
        where: dict[str, int] = {}
        for k, (term, shape) in enumerate(zip(self.inputs, shapes)):
            if len(term) != len(shape):
                raise SpecError(f"einsum '{self}': operand {k} has {len(shape)} dimensions {tuple(shape)} "
                                f"but its indices '{term}' name {len(term)}")
            for label, size in zip(term, shape):
                if label in sizes and sizes[label] != size:
                    raise SpecError(f"einsum '{self}': index '{label}' has size {size} in operand {k} "
                                    f"but {sizes[label]} in operand {where[label]}")
                sizes.setdefault(label, int(size))
                where.setdefault(label, k)
        return sizes

    def output_shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(sizes[label] for label in self.output)

    def flops(self, sizes: dict[str, int]) -> int:
        """opt_einsum's count: iterations of the full loop nest x (multiplies per term + one add if summing)."""
        volume = math.prod(sizes[label] for label in self.labels)
        factor = max(1, len(self.inputs) - 1) + (1 if self.summed else 0)
        return volume * factor


def _point(text: str, column: int, message: str) -> str:
    """An error message with the spec and a caret under the column at fault."""
    return f"einsum spec {text!r}: {message}\n    {text}\n    {' ' * column}^"


@dataclass(frozen=True)
class ParsedSpec:
    """The result of reading a user's spec against operand shapes."""

    spec: EinsumSpec
    sizes: dict[str, int]


def parse_subscripts(subscripts: str, shapes: list[tuple[int, ...]]) -> ParsedSpec:
    """Read numpy-style subscripts for operands of the given shapes and normalise them."""
    if not isinstance(subscripts, str):
        raise SpecError(f"einsum subscripts must be a string, got {type(subscripts).__name__}")
    text = subscripts
    arrow = text.find("->")
    if arrow >= 0 and text.find("->", arrow + 2) >= 0:
        raise SpecError(_point(text, text.find("->", arrow + 2), "more than one '->'"))
    lhs_end = arrow if arrow >= 0 else len(text)

    # Split the input side into terms, remembering each term's column for error messages.
    terms: list[tuple[str, int]] = []
    start = 0
    for col in range(lhs_end + 1):
        if col == lhs_end or text[col] == ",":
            terms.append((text[start:col], start))
            start = col + 1
    if len(terms) != len(shapes):
        more = "more" if len(shapes) > len(terms) else "fewer"
        raise SpecError(_point(text, lhs_end, f"{more} operands provided to einstein sum function than "
                                              f"specified in the subscripts string ({len(shapes)} operands, "
                                              f"{len(terms)} terms)"))
    parsed_terms = [_read_term(text, term, col, f"operand {k}") for k, (term, col) in enumerate(terms)]
    used = {label for labels, _, _ in parsed_terms for label, _ in labels}
    out_parsed = _read_term(text, text[arrow + 2:], arrow + 2, "output") if arrow >= 0 else None
    if out_parsed:
        used |= {label for label, _ in out_parsed[0]}
    fresh = (letter for letter in LETTERS if letter not in used)

    def new_letter(col: int) -> str:
        letter = next(fresh, None)
        if letter is None:
            raise SpecError(_point(text, col, "too many indices: einsum has 52 letters a-z, A-Z in all"))
        return letter

    # Expand '...' into fresh letters, right-aligned across operands (numpy broadcasting).
    ellipsis_dims = []
    for k, ((labels, has_ellipsis, _), shape) in enumerate(zip(parsed_terms, shapes)):
        term, col = terms[k]
        if len(labels) > len(shape) or (not has_ellipsis and len(labels) != len(shape)):
            raise SpecError(_point(text, col, f"operand {k} has {len(shape)} dimensions {tuple(shape)} but "
                                              f"'{term}' names {len(labels)}" +
                                              ("" if has_ellipsis else "; use '...' for the rest")))
        ellipsis_dims.append(len(shape) - len(labels) if has_ellipsis else 0)
    n_ellipsis = max(ellipsis_dims, default=0)
    ellipsis_letters = [new_letter(lhs_end) for _ in range(n_ellipsis)]

    occurrences: list[list[tuple[str, int]]] = []  # per operand: (label, column) per dimension
    for (labels, has_ellipsis, ell_col), n_dims in zip(parsed_terms, ellipsis_dims):
        if not has_ellipsis:
            occurrences.append(list(labels))
            continue
        before = [item for item in labels if item[1] < ell_col]
        after = [item for item in labels if item[1] > ell_col]
        middle = [(letter, ell_col) for letter in ellipsis_letters[n_ellipsis - n_dims:]]
        occurrences.append(before + middle + after)

    # Sizes: repeated labels within one operand must match; across operands equal or 1 (broadcast).
    sizes: dict[str, int] = {}
    for k, (occ, shape) in enumerate(zip(occurrences, shapes)):
        local: dict[str, int] = {}
        for (label, col), size in zip(occ, shape):
            if label in local and local[label] != size:
                raise SpecError(_point(text, col, f"dimensions in operand {k} for collapsing index '{label}' "
                                                  f"don't match ({local[label]} != {size})"))
            local[label] = int(size)
            known = sizes.get(label)
            if known is None or known == 1:
                sizes[label] = int(size)  # a size-1 dimension broadcasts against any size, 0 included
            elif size not in (1, known):
                raise SpecError(_point(text, col, f"index '{label}' has size {size} in operand {k} "
                                                  f"but {known} elsewhere; shapes "
                                                  f"{[tuple(s) for s in shapes]} do not match"))

    # Output labels: explicit (checked) or numpy's implicit rule.
    counts: dict[str, int] = {}
    for occ in occurrences:
        for label, _ in occ:
            counts[label] = counts.get(label, 0) + 1
    if out_parsed is not None:
        out_labels, out_has_ellipsis, out_ell_col = out_parsed
        output: list[str] = []
        for label, col in out_labels:
            if label in output:
                raise SpecError(_point(text, col, f"output subscript '{label}' appears more than once"))
            if label not in counts:
                raise SpecError(_point(text, col, f"einstein sum subscripts string included output subscript "
                                                  f"'{label}' which never appeared in an input"))
            output.append(label)
        if out_has_ellipsis:
            position = sum(1 for _, col in out_labels if col < out_ell_col)
            output[position:position] = ellipsis_letters
        elif ellipsis_letters:
            raise SpecError(_point(text, arrow + 2, f"the inputs' '...' stands for {n_ellipsis} dimension(s) but "
                                                    f"the output has no '...' to put them in (numpy rejects this "
                                                    f"too; sum them with an explicit index instead)"))
    else:
        singles = sorted(label for label, n in counts.items() if n == 1 and label not in ellipsis_letters)
        output = ellipsis_letters + singles

    # Give size-1 occurrences of a broadcast label a letter of their own (summed away, a no-op).
    inputs: list[str] = []
    for occ, shape in zip(occurrences, shapes):
        renamed: dict[str, str] = {}
        letters = []
        for (label, col), size in zip(occ, shape):
            if size == 1 and sizes[label] != 1:
                if label not in renamed:
                    renamed[label] = new_letter(col)
                    sizes[renamed[label]] = 1
                label = renamed[label]
            letters.append(label)
        inputs.append("".join(letters))
    spec = EinsumSpec(tuple(inputs), "".join(output))
    return ParsedSpec(spec, {label: sizes[label] for label in spec.labels})


def _read_term(text: str, term: str, col: int, what: str) -> tuple[list[tuple[str, int]], bool, int]:
    """Labels of one term with their columns, whether it has '...', and where the '...' stands."""
    labels: list[tuple[str, int]] = []
    ellipsis_col = -1
    i = 0
    while i < len(term):
        char = term[i]
        if char == ".":
            if term[i:i + 3] != "...":
                raise SpecError(_point(text, col + i, f"invalid '.' in {what}; an ellipsis is written '...'"))
            if ellipsis_col >= 0:
                raise SpecError(_point(text, col + i, f"{what} has more than one '...'"))
            ellipsis_col = col + i
            i += 3
            continue
        if char == " ":
            i += 1
            continue
        if char not in LETTERS:
            expected = "a letter a-z or A-Z, ',', '->' or '...'"
            raise SpecError(_point(text, col + i, f"invalid subscript {char!r} in {what}; expected {expected}"))
        labels.append((char, col + i))
        i += 1
    return labels, ellipsis_col >= 0, ellipsis_col


class SublistTypeError(SpecError, TypeError):
    """A sublist, or an item of one, that is not an integer or Ellipsis (a TypeError, as in numpy)."""


def sublists_to_subscripts(args: tuple) -> tuple[str, list]:
    """numpy's interleaved form `einsum(a, [0,1], b, [1,2], [0,2])` -> ('ab,bc->ac', [a, b])."""
    has_output = len(args) % 2 == 1
    body = args[:-1] if has_output else args
    operands, sublists = list(body[0::2]), list(body[1::2])
    output = args[-1] if has_output else None

    def to_letters(sublist: object, where: str) -> str:
        if isinstance(sublist, (str, bytes)) or not hasattr(sublist, "__iter__"):
            raise SublistTypeError(f"einsum sublist for {where} must be a list of integers or Ellipsis, "
                                   f"got {sublist!r}")
        out = []
        for item in sublist:  # type: ignore[attr-defined]
            if item is Ellipsis:
                out.append("...")
                continue
            if isinstance(item, (bool, np.bool_)) or not hasattr(item, "__index__"):
                raise SublistTypeError(f"einsum sublist for {where} has {item!r}; each subscript must be "
                                       f"an integer or Ellipsis")
            if not 0 <= operator.index(item) < len(LETTERS):
                raise SpecError(f"einsum sublist for {where} has {item!r}; subscripts must lie in "
                                f"[0, {len(LETTERS)})")
            out.append(LETTERS[operator.index(item)])
        return "".join(out)

    terms = [to_letters(s, f"operand {k}") for k, s in enumerate(sublists)]
    subscripts = ",".join(terms)
    if output is not None:
        subscripts += "->" + to_letters(output, "the output")
    return subscripts, operands
