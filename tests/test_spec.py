"""Reading numpy einsum subscripts: normalisation of ellipsis, broadcasting and implicit output; errors with a caret
under the column at fault; numpy's interleaved sublist form."""

from __future__ import annotations

import numpy as np
import pytest

from einfold import SpecError
from einfold.spec import LETTERS, EinsumSpec, parse_subscripts, sublists_to_subscripts


@pytest.mark.parametrize("subscripts, shapes, normalised, sizes", [
    ("ij,jk->ik", [(2, 3), (3, 4)], "ij,jk->ik", {"i": 2, "j": 3, "k": 4}),
    # implicit output: the labels seen once, sorted (upper case before lower case, as numpy's ASCII order)
    ("ij,jk", [(2, 3), (3, 4)], "ij,jk->ik", {"i": 2, "j": 3, "k": 4}),
    ("ba", [(2, 3)], "ba->ab", {"b": 2, "a": 3}),
    ("ii", [(3, 3)], "ii->", {"i": 3}),
    ("Ab,ba", [(2, 3), (3, 4)], "Ab,ba->Aa", {"A": 2, "b": 3, "a": 4}),
    ("ii->i", [(3, 3)], "ii->i", {"i": 3}),
    # ellipsis: fresh letters, right-aligned across operands; implicit output puts them first
    ("...ij,...jk", [(5, 2, 3), (3, 4)], "aij,jk->aik", {"a": 5, "i": 2, "j": 3, "k": 4}),
    ("...ij,...jk->...ik", [(5, 1, 2, 3), (4, 3, 2)], "acij,bjk->abik",
     {"a": 5, "b": 4, "c": 1, "i": 2, "j": 3, "k": 2}),
    ("b...a->...", [(2, 3, 4, 5)], "bcda->cd", {"b": 2, "c": 3, "d": 4, "a": 5}),
    ("i...->i...", [(3,)], "i->i", {"i": 3}),
    ("ij->...ij", [(2, 3)], "ij->ij", {"i": 2, "j": 3}),
    # size-1 broadcasting: the size-1 occurrence gets a letter of its own, summed away
    ("ij,ij->ij", [(3, 1), (3, 4)], "ia,ij->ij", {"i": 3, "a": 1, "j": 4}),
    ("...,...", [(2, 1), (3,)], "ac,b->ab", {"a": 2, "c": 1, "b": 3}),
    ("ii,i->i", [(1, 1), (3,)], "aa,i->i", {"a": 1, "i": 3}),
    # zero-size dimensions broadcast against size 1 and keep size 0
    ("i,i", [(0,), (1,)], "i,a->", {"i": 0, "a": 1}),
    ("i,i->i", [(1,), (0,)], "a,i->i", {"a": 1, "i": 0}),
    # spaces are ignored, as numpy ignores them
    (" i j , j k -> i k ", [(2, 3), (3, 4)], "ij,jk->ik", {"i": 2, "j": 3, "k": 4}),
    (",ij->", [(), (2, 3)], ",ij->", {"i": 2, "j": 3}),
])
def test_normalisation(subscripts, shapes, normalised, sizes):
    parsed = parse_subscripts(subscripts, shapes)
    assert str(parsed.spec) == normalised
    assert parsed.sizes == sizes
    operands = [np.arange(1, 1 + int(np.prod(s)), dtype=np.float64).reshape(s) for s in shapes]
    np.testing.assert_array_equal(np.einsum(normalised, *operands), np.einsum(subscripts, *operands))


def caret_column(message: str) -> int:
    """The column the caret points at, in the spec line printed above it."""
    spec_line, caret_line = message.splitlines()[-2:]
    assert spec_line.startswith("    ") and caret_line.strip() == "^"
    return len(caret_line) - 1 - 4


@pytest.mark.parametrize("subscripts, shapes, column, words", [
    ("ij,j#->i", [(2, 3), (3,)], 4, "invalid subscript '#' in operand 1"),
    ("ij->j->i", [(2, 3)], 5, "more than one '->'"),
    ("ij", [(2, 3), (3,)], 2, "more operands provided"),
    ("ij,jk", [(2, 3)], 5, "fewer operands provided"),
    ("ij->ik", [(2, 3)], 5, "output subscript 'k' which never appeared in an input"),
    ("ij->ii", [(2, 3)], 5, "output subscript 'i' appears more than once"),
    ("ij,jk", [(2, 3), (4, 5)], 3, "index 'j' has size 4 in operand 1 but 3 elsewhere"),
    ("i,i", [(0,), (3,)], 2, "index 'i' has size 3 in operand 1 but 0 elsewhere"),
    ("ii", [(2, 3)], 1, "collapsing index 'i' don't match (2 != 3)"),
    ("ijk", [(2, 3)], 0, "operand 0 has 2 dimensions (2, 3) but 'ijk' names 3"),
    ("i.j", [(2, 3)], 1, "invalid '.' in operand 0"),
    ("...i...", [(2, 3)], 4, "operand 0 has more than one '...'"),
    ("ij->i,j", [(2, 3)], 5, "invalid subscript ',' in output"),
    ("...i->i", [(2, 3)], 6, "the output has no '...'"),
])
def test_errors_point_at_the_fault(subscripts, shapes, column, words):
    with pytest.raises(SpecError) as info:
        parse_subscripts(subscripts, shapes)
    message = str(info.value)
    assert words in message
    assert message.splitlines()[-2] == "    " + subscripts
    assert caret_column(message) == column
    with pytest.raises(ValueError):  # numpy rejects every one of these too, with a ValueError
        np.einsum(subscripts, *(np.ones(s) for s in shapes))


def test_too_many_letters():
    """The normalised form names every dimension with a letter, so 52 is the limit (numpy's own limit is 64
    dimensions per operand, with '...' dimensions unnamed)."""
    subscripts = LETTERS + "..."
    with pytest.raises(SpecError) as info:
        parse_subscripts(subscripts, [(1,) * 53])
    assert "too many indices" in str(info.value)
    assert caret_column(str(info.value)) == len(LETTERS) + 3


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
    with pytest.raises(SpecError, match="must be a string"):
        parse_subscripts(["ij"], [(2, 3)])


def test_normalised_specs_parse_back():
    parsed = parse_subscripts("...ij,...jk", [(5, 1, 2, 3), (4, 3, 2)])
    again = EinsumSpec.parse(str(parsed.spec))
    assert again == parsed.spec
    assert again.sizes([(5, 1, 2, 3), (4, 3, 2)]) == parsed.sizes


def test_sublists():
    a, b = np.ones((2, 3)), np.ones((3, 4))
    assert sublists_to_subscripts((a, [0, 1], b, [1, 2], [0, 2])) == ("ab,bc->ac", [a, b])
    assert sublists_to_subscripts((a, [0, 1], b, [1, 2])) == ("ab,bc", [a, b])
    assert sublists_to_subscripts((a, (Ellipsis, 1), [Ellipsis])) == ("...b->...", [a])
    assert sublists_to_subscripts((a, [np.int64(26), np.uint8(51)])) == ("AZ", [a])
    assert sublists_to_subscripts((a, np.array([0, 1]))) == ("ab", [a])


@pytest.mark.parametrize("args, numpy_error", [
    ((np.ones((2, 3)), [0, 52]), ValueError),
    ((np.ones((2, 3)), [-1, 0]), ValueError),
    ((np.ones((2, 3)), [True, 0]), TypeError),
    ((np.ones((2, 3)), [1.0, 0]), TypeError),
    ((np.ones((2, 3)), "ab"), TypeError),
    ((np.ones((2, 3)), 5), TypeError),
])
def test_sublist_errors_have_numpy_types(args, numpy_error):
    with pytest.raises(numpy_error):
        np.einsum(*args)
    with pytest.raises(SpecError) as info:
        sublists_to_subscripts(args)
    assert isinstance(info.value, numpy_error)
    assert "sublist for operand 0" in str(info.value)
