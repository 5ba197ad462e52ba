"""The recommender's training step on UCI Online Retail II with no setting changed: the champion is
chosen on validation and, on the test period, reaches 1.05 x personal top frequency's recall@20 and
beats popularity and ALS on new items — or is the baseline itself, and the run says so."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from features.discovery import RawInput
from features.ingest import ingest
from features.loaders import load_online_retail_ii
from features.settings import load_settings
from features.store import connect

pytestmark = [pytest.mark.data, pytest.mark.slow]

RETAIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail_ii" / "online_retail_ii.csv.gz"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.skipif(not RETAIL.exists(), reason="the shared Online Retail II file is not beside the project")
def test_the_champion_on_online_retail_ii_is_never_worse_than_personal_top_frequency(tmp_path):
    from training.recommend.evaluation import ALS, POPULAR, RECALL, RECALL_NEW, TOP_FREQUENCY
    from training.recommend.pipeline import train_recommender

    settings = load_settings(data_dir=tmp_path).model_copy(update={"train_search_budget_s": 0.0})
    con = connect(settings)
    tables = load_online_retail_ii(RETAIL, settings)
    ingest(con, [RawInput(source, source, table=tables[source]) for source in tables], settings, now=NOW)
    result = train_recommender(con, settings)
    table, champion = result.table, result.gate.champion
    assert result.search is not None and result.search.champion == champion
    if champion == TOP_FREQUENCY:
        assert any("is the champion" in reason for reason in result.gate.reasons)
    else:
        assert table.loc[champion, RECALL] >= 1.05 * table.loc[TOP_FREQUENCY, RECALL], table
        assert table.loc[champion, RECALL_NEW] > max(table.loc[POPULAR, RECALL_NEW], table.loc[ALS, RECALL_NEW]), table
        assert result.gate.ratio_to_top_frequency >= 1.05
    assert result.gate.eligible, result.gate.reasons
    # What is registered is the configuration chosen on validation.
    assert result.model.settings_.ranker == result.search.settings.ranker
