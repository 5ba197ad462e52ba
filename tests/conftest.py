"""Shared fixtures: an isolated state folder per test, and tiny raw files written by hand."""

from __future__ import annotations

import csv
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from features.settings import Settings, load_settings
from tests.fixtures_serving import serving_bundle, serving_server  # noqa: F401  (session fixtures of the serving tests)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # tests never phone home

#: The "now" every ingest test runs at: no test depends on the wall clock.
NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("RAPPORT_CONFIG", raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("RAPPORT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return load_settings(data_dir=tmp_path / "state")


def write_csv(folder: Path, name: str, header: list[str], rows: list[list[object]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    return path


ORDER_HEADER = ["order_id", "line_id", "timestamp", "account_id", "email", "device_id", "item_id", "quantity",
                "unit_price", "discount", "currency", "channel", "country"]
RECEIPT_HEADER = ["receipt_id", "line_id", "timestamp", "store_id", "loyalty_card", "item_id", "quantity", "unit_price"]
RETURN_HEADER = ["return_id", "order_id", "line_id", "quantity", "refund_amount", "timestamp"]
KEYS_HEADER = ["account_id", "email", "phone", "loyalty_card", "device_id"]
