"""A decision's categories are stored as one text that depends only on the set of names that fired."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.decision_categories import CategoryError, categories_of, categories_text

names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=","), min_size=1, max_size=12)
lists = st.lists(st.one_of(st.none(), st.lists(names, max_size=6)), max_size=30)


@given(lists)
def test_each_row_is_its_distinct_names_sorted_and_comma_joined(rows: list[list[str] | None]) -> None:
    stored = categories_text(pa.array(rows, pa.list_(pa.string())), max_chars=10_000).to_pylist()
    assert stored == [None if row is None else ",".join(sorted(set(row))) for row in rows]


@given(lists, st.randoms())
def test_the_order_names_fired_in_changes_nothing(rows: list[list[str] | None], rng: random.Random) -> None:
    shuffled = [None if row is None else rng.sample(row, len(row)) for row in rows]
    text = categories_text(pa.array(rows, pa.list_(pa.string())), 10_000)
    assert categories_text(pa.array(shuffled, pa.list_(pa.string())), 10_000).equals(text)


@given(st.lists(names, max_size=6))
def test_the_text_reads_back_as_the_sorted_names(row: list[str]) -> None:
    [text] = categories_text(pa.array([row], pa.list_(pa.string())), 10_000).to_pylist()
    assert categories_of(text) == tuple(sorted(set(row)))


def test_a_batch_split_into_chunks_reads_like_one_array() -> None:
    lists_of_text = pa.list_(pa.string())
    chunked = pa.chunked_array([pa.array([["b", "a"]], lists_of_text), pa.array([[], None], lists_of_text)])
    assert categories_text(chunked, 512).to_pylist() == ["a,b", "", None]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["ok"], ["hate,spam"]], "row 1: category name 'hate,spam' must be non-empty text without ','"),
        ([["ok"], ["a", None]], "row 1: category name None"),
        ([[""]], "row 0: category name ''"),
        ([["a"], ["é" * 6]], "row 1: categories join to 6 characters; at most 5"),
    ],
)
def test_names_the_column_cannot_hold_are_refused_with_their_row(rows: list[list[str]], message: str) -> None:
    with pytest.raises(CategoryError, match=message):
        categories_text(pa.array(rows, pa.list_(pa.string())), max_chars=5)


def test_only_a_list_of_strings_is_taken() -> None:
    with pytest.raises(TypeError, match=r"list<string> column; got string"):
        categories_text(pa.array(["hate,spam"]), 512)
