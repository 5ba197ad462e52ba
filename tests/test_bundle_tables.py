"""The bundle's tables as folders of .npy columns (training.frames): what is written is read back
with its dtypes, index and categories, memory-mapped read-only, and a broken folder is refused
naming the file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training.frames import FrameFileError, read_columns, read_frame, write_frame

pytestmark = pytest.mark.unit


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 200
    return pd.DataFrame({
        "frequency": rng.integers(0, 30, n),
        "monetary": rng.gamma(2.0, 20.0, n),
        "last_order": pd.date_range("2024-01-01", periods=n, freq="h").as_unit("us"),
        "active": rng.random(n) < 0.5,
        "segment": pd.Categorical(rng.choice(["high", "low", "mid"], n)),
        "channel": rng.choice(["web", "store"], n).astype(object),
        "price [eur]": rng.random(n),
    }, index=pd.Index(np.arange(1_000, 1_000 + n, dtype=np.int64), name="customer_id"))


def test_a_frame_comes_back_as_written(tmp_path):
    frame = _frame()
    frame.loc[frame.index[3], "monetary"] = np.nan
    write_frame(frame, tmp_path / "t")
    back = read_frame(tmp_path / "t")
    # Text comes back as a categorical with the same values; everything else as it was.
    expected = frame.assign(channel=frame["channel"].astype("category"))
    pd.testing.assert_frame_equal(back, expected)
    # A column whose name is not a plain word gets a file of its own name-free kind.
    header = json.loads((tmp_path / "t" / "columns.json").read_text())
    assert [c["file"] for c in header["columns"]][-1] == "column_6.npy"


def test_columns_are_memory_mapped_read_only_without_pandas_objects(tmp_path):
    write_frame(_frame(), tmp_path / "t")
    table = read_columns(tmp_path / "t")
    assert len(table) == 200 and table.index_name == "customer_id"
    for name in ("frequency", "monetary", "segment"):
        array = table.arrays[name]
        assert isinstance(array, np.memmap) and not array.flags.writeable, name
    assert table.categories["segment"] == ["high", "low", "mid"]


def test_rewriting_a_table_replaces_its_files(tmp_path):
    write_frame(_frame(), tmp_path / "t")
    write_frame(_frame()[["monetary"]].iloc[:10], tmp_path / "t", index=False)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["columns.json", "monetary.npy"]
    assert read_columns(tmp_path / "t").index is None and len(read_frame(tmp_path / "t")) == 10


def test_a_broken_table_is_refused_naming_the_file(tmp_path):
    write_frame(_frame(), tmp_path / "t")
    short = tmp_path / "t" / "monetary.npy"
    np.save(short, np.zeros(10), allow_pickle=False)
    with pytest.raises(FrameFileError, match=r"monetary.npy: float64 x \(10,\), the header records <f8 x \(200,\)"):
        read_columns(tmp_path / "t")
    (tmp_path / "t" / "columns.json").unlink()
    with pytest.raises(FrameFileError, match=r"columns.json is missing"):
        read_columns(tmp_path / "t")
    write_frame(_frame(), tmp_path / "u")
    codes = tmp_path / "u" / "segment.npy"
    np.save(codes, np.full(200, 7, dtype=np.int8), allow_pickle=False)
    with pytest.raises(FrameFileError, match=r"segment.npy: codes outside the 3 categories of column 'segment'"):
        read_columns(tmp_path / "u")


def test_python_objects_are_refused_at_write(tmp_path):
    frame = pd.DataFrame({"x": [1, 2]}, index=pd.Index([(1, 2), (3, 4)], tupleize_cols=False))
    with pytest.raises(FrameFileError, match=r"the index holds Python objects"):
        write_frame(frame, tmp_path / "t")
