"""The categories a moderation decision fired, as ``moderation_decisions.categories`` holds them.

One text per decision: the names sorted (by code point) and without repeats, joined by commas
(``hate,pii_email``); the empty string when none fired. Sorting makes the text a function of the
set, so a replay that lists the same categories in another order changes nothing in the store.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Between two names in the stored text; a name never holds it.
SEPARATOR = ","


class CategoryError(ValueError):
    """A decision's categories cannot be stored; ``row`` is its position in the batch."""

    def __init__(self, row: int, problem: str) -> None:
        super().__init__(f"row {row}: {problem}")
        self.row = row
        self.problem = problem


def categories_text(lists: pa.Array | pa.ChunkedArray, max_chars: int) -> pa.Array:
    """Each row's list of category names as the stored text: sorted, distinct, comma-joined.

    A null list stays null (not known); an empty one is ``""`` (none fired).

    >>> categories_text(pa.array([["pii_email", "hate", "hate"], [], None]), 512).to_pylist()
    ['hate,pii_email', '', None]

    Args:
        lists: a ``list<string>`` array, one list per decision.
        max_chars: the longest text the column holds (``VARCHAR(512)``: 512).

    Raises:
        CategoryError: a name that is null, empty or holds a comma, or a text over
            ``max_chars`` characters; it names the first such row.
        TypeError: ``lists`` is not a list of strings.
    """
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if not (pa.types.is_list(lists.type) and pa.types.is_string(lists.type.value_type)):
        raise TypeError(f"categories must be a list<string> column; got {lists.type}")
    text = pc.binary_join(_sorted_distinct(lists), SEPARATOR)
    too_long = pc.greater(pc.utf8_length(text), max_chars).to_numpy(zero_copy_only=False)
    if too_long.any():
        first = int(np.flatnonzero(too_long)[0])
        length = len(text[first].as_py())
        raise CategoryError(first, f"categories join to {length} characters; at most {max_chars}")
    return text


def _sorted_distinct(lists: pa.ListArray) -> pa.ListArray:
    """Each list sorted and without repeats (checked first); null lists stay null."""
    names = pc.list_flatten(lists)
    rows = pc.list_parent_indices(lists)
    _check_names(names, rows)
    pairs = pa.table({"row": rows, "name": names}).sort_by([("row", "ascending"), ("name", "ascending")])
    row = pairs.column("row").to_numpy()
    name = pairs.column("name").combine_chunks()
    repeat = np.zeros(len(row), dtype=bool)
    if len(row) > 1:
        same_name = pc.equal(name.slice(1), name.slice(0, len(row) - 1)).to_numpy(zero_copy_only=False)
        repeat[1:] = same_name & (row[1:] == row[:-1])
    kept = ~repeat
    counts = np.bincount(row[kept], minlength=len(lists))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), name.filter(pa.array(kept)), mask=lists.is_null())


def _check_names(names: pa.Array, rows: pa.Array) -> None:
    empty_or_comma = pc.or_(pc.equal(pc.utf8_length(names), 0), pc.match_substring(names, SEPARATOR))
    bad = pc.fill_null(empty_or_comma, True).to_numpy(zero_copy_only=False)  # null: a null name
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        name = names[first].as_py()
        raise CategoryError(
            int(rows[first].as_py()), f"category name {name!r} must be non-empty text without {SEPARATOR!r}"
        )


def categories_of(text: str | None) -> tuple[str, ...]:
    """The names in a stored ``categories`` text; none for ``""`` or NULL (an older row).

    >>> categories_of("hate,pii_email")
    ('hate', 'pii_email')
    >>> categories_of("")
    ()
    """
    return tuple(text.split(SEPARATOR)) if text else ()
