"""The score rows of a bundle as columns (training.score_table): hand-made rows of ``score_rows``
come back as the JSON values ``customer_scores`` answers with, bit for bit, from memory and from the
bundle's memory-mapped files; lookups keep the order asked, answer a duplicate once and name the
customers the table does not hold; broken columns are refused."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.frames import read_columns, write_frame
from training.score_table import CODED, FLOATS, SCORE_COLUMNS, ScoreTable, ScoreTableError, encode

pytestmark = pytest.mark.unit

#: Numbers whose shortest decimal form is long: a rounding anywhere would show.
_TRICKY = (0.1 + 0.2, 1 / 3, 2.0 ** -40, 123456.789e10)


def _rows() -> pd.DataFrame:
    """Three customers, not in id order, as score_rows gives them: one lapsed (no churn probability,
    one reason), one with an infinite bound and a missing next order date."""
    frame = pd.DataFrame({name: [_TRICKY[k % 4] + k, 1.5 + k, math.pi * (k + 1)] for k, name in enumerate(FLOATS)})
    frame.insert(0, "customer_id", np.asarray([30, 10, 20], dtype=np.int64))
    frame.loc[0, "churn_probability"] = np.nan
    frame.loc[0, "percentile"] = np.nan
    frame.loc[2, "clv_upper"] = np.inf
    frame["expected_next_order_date"] = pd.to_datetime(["2026-02-03 17:45", "2026-02-03 08:00", None])
    frame["value_segment"] = ["high", "low", "high"]
    frame["churn_horizon_days"] = pd.array([90, 90, 90], dtype="Int64")
    frame["risk_band"] = pd.Series(["lapsed", "high", None], dtype=object)
    frame["reason_1"] = pd.Series(["no order for 400 days: lapsed", "spend fell by 80 %", None], dtype=object)
    frame["reason_2"] = pd.Series([None, "fewer orders", None], dtype=object)
    frame["reason_3"] = pd.Series([None, None, None], dtype=object)
    frame["clv_model_version"] = "3"
    frame["churn_model_version"] = "7"
    frame["as_of"] = "2026-01-01"
    return frame[list(SCORE_COLUMNS)]


def _expected() -> dict[int, dict]:
    """The answers, by hand."""
    rows = _rows()
    out = {}
    for k, customer in enumerate(rows["customer_id"].tolist()):
        row = {name: float(rows[name].iloc[k]) for name in FLOATS}
        out[customer] = {"customer_id": customer, **{n: (v if math.isfinite(v) else None) for n, v in row.items()},
                         "churn_horizon_days": 90, "clv_model_version": "3", "churn_model_version": "7",
                         "as_of": "2026-01-01"}
    out[30] |= {"expected_next_order_date": "2026-02-03", "value_segment": "high", "risk_band": "lapsed",
                "reason_1": "no order for 400 days: lapsed", "reason_2": None, "reason_3": None}
    out[10] |= {"expected_next_order_date": "2026-02-03", "value_segment": "low", "risk_band": "high",
                "reason_1": "spend fell by 80 %", "reason_2": "fewer orders", "reason_3": None}
    out[20] |= {"expected_next_order_date": None, "value_segment": "high", "risk_band": None, "reason_1": None,
                "reason_2": None, "reason_3": None}
    return out


def _same(got: list[dict], want: list[dict]) -> None:
    # Floats compared by their bits: equal values that print alike are not enough.
    assert [sorted(row) for row in got] == [sorted(row) for row in want]
    for g, w in zip(got, want):
        for name, value in w.items():
            assert type(g[name]) is type(value), (name, g[name], value)
            if isinstance(value, float):
                assert np.float64(g[name]).tobytes() == np.float64(value).tobytes(), name
            else:
                assert g[name] == value, name


@pytest.mark.parametrize("stored", [False, True], ids=["in memory", "memory-mapped files"])
def test_rows_come_back_as_the_values_answered(stored, tmp_path):
    if stored:
        write_frame(encode(_rows()), tmp_path / "scores", index=False)
        table = ScoreTable.from_columns(read_columns(tmp_path / "scores"))
    else:
        table = ScoreTable.from_frame(_rows())
    expected = _expected()
    rows, unknown = table.rows([20, 30, 10])
    assert unknown == []
    _same(table.records(rows), [expected[20], expected[30], expected[10]])


def test_the_stored_form_is_codes_into_the_answered_values(tmp_path):
    stored = encode(_rows())
    assert stored["customer_id"].tolist() == [10, 20, 30]
    # Two timestamps of one day answer alike: one entry of the dictionary.
    assert list(stored["expected_next_order_date"].cat.categories) == ["2026-02-03"]
    assert stored["expected_next_order_date"].cat.codes.tolist() == [0, -1, 0]
    assert list(stored["churn_horizon_days"].cat.categories) == [90]
    write_frame(stored, tmp_path / "scores", index=False)
    columns = read_columns(tmp_path / "scores")
    assert set(columns.categories) == set(CODED)
    for name in SCORE_COLUMNS:
        assert isinstance(columns.arrays[name], np.memmap) and not columns.arrays[name].flags.writeable, name


def test_a_lookup_keeps_the_order_answers_duplicates_once_and_names_the_unknown():
    table = ScoreTable.from_frame(_rows())
    rows, unknown = table.rows([30, 5, 10, 30, 99, 5])
    assert [r["customer_id"] for r in table.records(rows)] == [30, 10]
    assert unknown == [5, 99]
    rows, unknown = table.rows([10**12])
    assert len(rows) == 0 and unknown == [10**12]


def test_broken_rows_and_columns_are_refused():
    with pytest.raises(ScoreTableError, match="appears more than once"):
        encode(pd.concat([_rows(), _rows().iloc[:1]], ignore_index=True))
    with pytest.raises(ScoreTableError, match=r"missing columns \['reason_3'\]"):
        encode(_rows().drop(columns="reason_3"))
    stored = encode(_rows())
    arrays = {name: stored[name].cat.codes.to_numpy() if name in CODED else stored[name].to_numpy()
              for name in SCORE_COLUMNS}
    labels = {name: list(stored[name].cat.categories) for name in CODED}
    with pytest.raises(ScoreTableError, match="codes of risk_band outside its 2 values"):
        ScoreTable({**arrays, "risk_band": np.asarray([0, 1, 2], dtype=np.int8)}, labels)
    with pytest.raises(ScoreTableError, match="not strictly ascending"):
        ScoreTable({**arrays, "customer_id": np.asarray([10, 30, 20], dtype=np.int64)}, labels)
    with pytest.raises(ScoreTableError, match=r"missing \['clv'\]"):
        ScoreTable({name: a for name, a in arrays.items() if name != "clv"}, labels)
