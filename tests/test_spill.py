"""Spilled tables read back whole, and single values read back by where their rows were spilled."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from connectors.spill import PLACE_AT, PLACE_FILE, Spill


def test_values_are_read_back_from_where_their_rows_were_spilled(tmp_path: Path) -> None:
    spill = Spill(str(tmp_path))
    # Several tables in one file (the second starts past the first batch), one of several batches,
    # an empty batch between them, and a second file.
    first = pa.table({"raw": [b"a0", b"a1"], "n": [0, 1]})
    second = pa.Table.from_batches(
        [
            pa.record_batch({"raw": [b"b0", b"b1", b"b2"], "n": [2, 3, 4]}),
            pa.record_batch({"raw": pa.array([], pa.binary()), "n": pa.array([], pa.int64())}),
            pa.record_batch({"raw": [b"b3"], "n": [5]}),
        ]
    )
    refs = spill.put_many("step", [first, second]) + spill.put_many(
        "step", [pa.table({"raw": [b"c0"], "n": [6]})]
    )
    assert refs[1][1] == 1 and refs[1][2] == 3  # the second table starts at the file's second batch

    placed = spill.load_placed(refs)
    assert [t.drop_columns([PLACE_FILE, PLACE_AT]).to_pylist() for t in placed] == [
        t.to_pylist() for t in spill.load(refs)
    ]
    everything = pa.concat_tables(placed)
    assert not Path(everything.column(PLACE_FILE)[0].as_py()).is_absolute()  # under the folder

    # Rows picked in any order, some twice, read back from the files without the column.
    picked = everything.drop_columns(["raw"]).take(pa.array([6, 3, 0, 5, 3, 1, 4, 2]))
    assert spill.values_at("raw", picked).to_pylist() == [
        b"c0", b"b1", b"a0", b"b3", b"b1", b"a1", b"b2", b"b0",
    ]  # fmt: skip
    assert spill.values_at("raw", picked.slice(0, 0)).to_pylist() == []
