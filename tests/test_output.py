"""Files written for the retailer: Parquet or CSV by extension, complete or absent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.errors import ArgumentError, NoDataError
from features.output import check_table_path, write_frames

pytestmark = pytest.mark.unit


def _chunks() -> list[pd.DataFrame]:
    return [pd.DataFrame({"customer_id": [1, 2], "score": [0.5, 0.25]}),
            pd.DataFrame({"customer_id": [3], "score": [0.125]})]


@pytest.mark.parametrize("name", ["scores.parquet", "scores.PARQUET", "scores.csv", "scores.CSV"])
def test_every_chunk_is_written_in_order_whatever_the_extension_case(tmp_path: Path, name: str):
    output = tmp_path / "out" / name
    seen: list[int] = []
    rows = write_frames(_chunks(), output, written=lambda frame: seen.append(len(frame)))
    back = pd.read_csv(output) if name.lower().endswith(".csv") else pd.read_parquet(output)
    assert rows == 3 and seen == [2, 1]
    assert back["customer_id"].tolist() == [1, 2, 3] and back["score"].tolist() == [0.5, 0.25, 0.125]
    assert list(tmp_path.joinpath("out").iterdir()) == [output]


@pytest.mark.parametrize("name", ["scores.parquet", "scores.csv"])
def test_a_failure_midway_leaves_neither_the_file_nor_a_partial_one(tmp_path: Path, name: str):
    output = tmp_path / name
    output_before = b"the previous file"
    output.write_bytes(output_before)

    def failing():
        yield _chunks()[0]
        raise RuntimeError("the scoring failed")

    with pytest.raises(RuntimeError, match="the scoring failed"):
        write_frames(failing(), output)
    assert output.read_bytes() == output_before  # the old file stays until a complete one replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_the_index_is_kept_when_asked(tmp_path: Path):
    frame = pd.DataFrame({"frequency": [2.0, 0.0]}, index=pd.Index([10, 11], name="customer_id"))
    write_frames([frame], tmp_path / "f.parquet", index=True)
    write_frames([frame], tmp_path / "f.csv", index=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f.parquet"), frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "f.csv", index_col="customer_id"), frame)


def test_other_extensions_and_nothing_to_write_are_refused_by_name(tmp_path: Path):
    with pytest.raises(ArgumentError, match=r"expected a \.parquet or \.csv file, got 'scores\.xlsx'"):
        check_table_path(tmp_path / "scores.xlsx")
    with pytest.raises(ArgumentError):
        write_frames(_chunks(), tmp_path / "scores.txt")
    with pytest.raises(NoDataError, match="nothing to write"):
        write_frames([], tmp_path / "scores.parquet")
    assert list(tmp_path.iterdir()) == []
