"""MLflow tracking and registry: runs stay under the data folder, the data fingerprint identifies the
store, aliases promote versions, and the CLV pyfunc scores exactly like the model it wraps."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

# MLflow decides at import whether to send usage telemetry; tests never use the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from features.discovery import discover  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.settings import Settings, load_settings  # noqa: E402
from features.store import connect  # noqa: E402
from tests.conftest import NOW, ORDER_HEADER, RECEIPT_HEADER, write_csv  # noqa: E402
from training import tracking  # noqa: E402
from training.clv.pyfunc import (  # noqa: E402
    ARTIFACT_KEY,
    CASHFLOWS_COLUMN,
    cashflow_columns,
    flatten_cashflows,
    log_clv_model,
)

pytestmark = pytest.mark.model

MODEL_NAME = "rapport-clv-test"


# --- a stand-in with ClvModel's interface: to_dict / from_dict / predict --------------------------


class StandInClvModel:
    """Predicts ``rate * frequency`` per month for ``months`` months, discounted by ``discount``."""

    def __init__(self, rate: float = 0.5, months: int = 3, discount: float = 0.01) -> None:
        self.rate = rate
        self.months = months
        self.discount = discount

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "stand-in", "rate": self.rate, "months": self.months, "discount": self.discount}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> StandInClvModel:
        if state.get("kind") != "stand-in":
            raise ValueError(f"not a stand-in model: {state!r}")
        return cls(rate=state["rate"], months=state["months"], discount=state["discount"])

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """Indexed like ``features``, as ``ClvModel.predict``."""
        factors = (1 + self.discount) ** -np.arange(1, self.months + 1)
        pairs = zip(features["frequency"], features["monetary_value"], strict=True)
        flows = [self.rate * f * factors * m for f, m in pairs]
        out = pd.DataFrame({"expected_purchases": self.rate * features["frequency"].to_numpy() * self.months},
                           index=features.index)
        out["clv"] = [float(np.sum(f)) for f in flows]
        out[CASHFLOWS_COLUMN] = pd.Series(flows, index=features.index, dtype=object)
        out["segment"] = pd.Categorical(np.where(out["clv"] > 20, "top", "rest"), categories=["rest", "top"])
        return out


def _features(n: int = 6) -> pd.DataFrame:
    """Customer features as ``features.customer.customer_features`` returns them: indexed by customer_id."""
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "frequency": rng.integers(0, 5, n).astype(float),
        "recency": rng.uniform(0, 100, n).round(1),
        "T": np.full(n, 120.0),
        "monetary_value": rng.uniform(5, 50, n).round(2),
    }, index=pd.Index(np.arange(1, n + 1, dtype="int64"), name="customer_id"))


# --- fixtures -------------------------------------------------------------------------------------


def _isolated_settings(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Settings:
    for name in list(os.environ):
        if name.startswith("RAPPORT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(folder)
    return load_settings(data_dir=folder / "state")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One store for the tests that do not need their own: creating an SQLite store takes seconds."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _isolated_settings(monkeypatch, tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(autouse=True)
def _no_run_left_open() -> Iterator[None]:
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


# --- where runs go --------------------------------------------------------------------------------


def test_default_store_lives_under_the_data_dir(settings):
    assert tracking.tracking_uri(settings) == f"sqlite:///{(settings.data_dir / 'mlflow' / 'mlflow.db').resolve()}"
    assert tracking.artifact_location(settings) == (settings.data_dir / "mlflow" / "artifacts").resolve().as_uri()


def test_explicit_uri_wins_and_a_server_chooses_its_artifact_store(settings):
    server = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:5000"})
    assert tracking.tracking_uri(server) == "http://127.0.0.1:5000"
    assert tracking.artifact_location(server) is None
    database = settings.model_copy(update={"mlflow_tracking_uri": "postgresql://u@db/mlflow"})
    assert tracking.artifact_location(database) == tracking.artifact_location(settings)


def test_settings_read_the_tracking_uri_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("RAPPORT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAPPORT_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("RAPPORT_MLFLOW_EXPERIMENT", "retail")
    parsed = load_settings()
    assert parsed.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert parsed.mlflow_experiment == "retail"


def test_configure_twice_is_idempotent_and_writes_only_under_the_data_dir(settings, tmp_path):
    assert not settings.mlflow_dir.exists()  # nothing happens before configure
    first = tracking.configure(settings)
    experiment = first.get_experiment_by_name("rapport")
    second = tracking.configure(settings)
    again = second.get_experiment_by_name("rapport")

    assert experiment is not None and again.experiment_id == experiment.experiment_id
    assert [e.name for e in second.search_experiments()].count("rapport") == 1
    assert experiment.artifact_location == settings.mlflow_artifacts_dir.resolve().as_uri()
    assert settings.mlflow_db_path.is_file()
    assert mlflow.get_tracking_uri() == tracking.tracking_uri(settings)
    # Nothing in the working directory (MLflow's defaults are ./mlruns and ./mlflow.db).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_run_lands_in_the_sqlite_store_with_flat_params_metrics_and_tables(settings, caplog):
    with tracking.start_run(settings, run_name="unit", tags={"step": "test", "n": 3}) as run:
        params = tracking.log_params_flat({
            "model": "bgnbd", "cutoff": datetime(2024, 6, 1), "candidates": ["bgnbd", "pareto"],
            "data": {"lines": 10, "files": {"orders": 1}}, "skipped": None,
        })
        with caplog.at_level(logging.WARNING, logger="training.tracking"):
            metrics = tracking.log_metrics_flat({"mae": 1.5, "holdout": {"rmse": np.float64(2.0), "gap": float("nan")},
                                                 "n": np.int64(4), "missing": None})
        written = tracking.log_table(pd.DataFrame({"k": ["a", "b"], "v": [1.0, 2.0]}).set_index("k"), "holdout_table")
        tracking.set_tags({"gate.eligible": True})
        run_id = run.info.run_id

    assert params == {"model": "bgnbd", "cutoff": "2024-06-01T00:00:00", "candidates": "bgnbd,pareto",
                      "data.lines": "10", "data.files.orders": "1"}
    assert metrics == {"mae": 1.5, "holdout.rmse": 2.0, "n": 4.0}
    assert "holdout.gap" in caplog.text and "missing" in caplog.text and "skipped" not in params

    # Read back through a fresh client on the SQLite file: the run is stored, not just in memory.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{settings.mlflow_db_path}")
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.experiment_id == client.get_experiment_by_name("rapport").experiment_id
    assert stored.data.params == params
    assert stored.data.metrics == metrics
    assert stored.data.tags["step"] == "test" and stored.data.tags["n"] == "3"
    assert stored.data.tags["gate.eligible"] == "True"
    assert stored.data.tags[tracking.CODE_VERSION_TAG] == (tracking.code_version() or "unknown")
    assert written == ["tables/holdout_table.csv", "tables/holdout_table.json"]
    assert sorted(a.path for a in client.list_artifacts(run_id, "tables")) == written
    table_file = Path(stored.info.artifact_uri.removeprefix("file://"), "tables", "holdout_table.json")
    assert table_file.is_relative_to(settings.mlflow_artifacts_dir.resolve())
    assert json.loads(table_file.read_text())["columns"] == ["k", "v"]


def test_a_failing_block_marks_the_run_failed(shared):
    with pytest.raises(ZeroDivisionError), tracking.start_run(shared, run_name="boom") as run:
        1 / 0  # noqa: B018
    assert tracking.configure(shared).get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_nested_runs_are_children_of_the_active_run(shared):
    with tracking.start_run(shared, run_name="parent") as parent:
        with tracking.start_run(shared, run_name="child", nested=True) as child:
            assert mlflow.active_run().info.run_id == child.info.run_id
    stored = tracking.configure(shared).get_run(child.info.run_id)
    assert stored.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_logging_outside_a_run_is_a_clear_error_not_a_stray_run(shared):
    with pytest.raises(RuntimeError, match="start_run"):
        tracking.log_params_flat({"a": 1})
    with pytest.raises(RuntimeError, match="start_run"):
        tracking.log_metrics_flat({"a": 1.0})
    with pytest.raises(RuntimeError, match="log_clv_model needs an active run"):
        log_clv_model(StandInClvModel())
    assert mlflow.active_run() is None


def test_a_metric_that_is_not_a_number_names_the_metric(shared):
    with tracking.start_run(shared, run_name="bad metric"):
        with pytest.raises(TypeError, match="holdout.kind"):
            tracking.log_metrics_flat({"holdout": {"kind": "bgnbd"}})


# --- provenance -----------------------------------------------------------------------------------


def _ingest(settings: Settings, folder: Path):
    con = connect(settings)
    inputs, ignored = discover(folder)
    ingest(con, inputs, settings, now=NOW, ignored_paths=ignored)
    return con


ORDERS = [
    ["1", "1", "2024-01-05T10:00:00", "A1", "jane@example.com", "", "I1", 2, 10.0, 0, "GBP", "web", "UK"],
    ["2", "1", "2024-02-05T09:00:00", "", "bob@example.com", "", "I1", 1, 10.0, "", "", "web", "UK"],
    ["3", "1", "2024-05-20T09:00:00", "A1", "", "", "I2", 1, 4.0, "", "", "app", "UK"],
]


def test_fingerprint_is_stable_and_changes_when_a_file_is_ingested(settings, tmp_path):
    first_batch = tmp_path / "raw1"
    write_csv(first_batch, "orders.csv", ORDER_HEADER, ORDERS)
    con = _ingest(settings, first_batch)
    as_of = datetime(2024, 5, 1)

    before = tracking.data_fingerprint(con, as_of=as_of)
    assert tracking.data_fingerprint(con, as_of=as_of) == before
    assert before["lines"] == 3 and before["lines_before_as_of"] == 2 and before["files"] == 1
    assert before["customers"] == 2 and before["customers_before_as_of"] == 2
    assert before["first_sale"] == "2024-01-05T10:00:00" and before["last_sale"] == "2024-05-20T09:00:00"
    assert before["returns"] == 0 and before["identity_map"] >= 2 and len(before["hash"]) == 64
    # An aware cutoff means the same instant in UTC.
    assert tracking.data_fingerprint(con, as_of=datetime.fromisoformat("2024-05-01T02:00:00+02:00")) == before

    # The same bytes again are skipped by ingestion: same store, same fingerprint.
    con.close()
    con = _ingest(settings, first_batch)
    assert tracking.data_fingerprint(con, as_of=as_of) == before

    second_batch = tmp_path / "raw2"
    write_csv(second_batch, "store_receipts.csv", RECEIPT_HEADER,
              [["R1", "1", "2024-03-01 12:00", "S1", "C9", "I1", 1, 3.0]])
    con.close()
    con = _ingest(settings, second_batch)
    after = tracking.data_fingerprint(con, as_of=as_of)
    assert after["hash"] != before["hash"]
    assert after["files"] == 2 and after["lines"] == 4 and after["lines_before_as_of"] == 3
    con.close()


def test_fingerprint_of_an_empty_store(settings):
    con = connect(settings)
    empty = tracking.data_fingerprint(con, as_of=datetime(2024, 1, 1))
    assert empty["lines"] == 0 and empty["files"] == 0
    assert empty["first_sale"] is None and empty["last_sale"] is None
    con.close()


def test_code_version_is_a_commit_in_a_checkout_and_none_elsewhere(monkeypatch, tmp_path):
    version = tracking.code_version()
    if version is not None:
        assert len(version.removesuffix("-dirty")) == 40
    monkeypatch.setattr(tracking, "_REPOSITORY_ROOT", tmp_path)
    assert tracking.code_version() is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert tracking.code_version() is None


# --- registry -------------------------------------------------------------------------------------


def test_register_alias_and_latest_with_alias(shared):
    client = tracking.configure(shared)
    assert tracking.latest_with_alias(client, "no-such-model", "champion") is None

    with tracking.start_run(shared, run_name="v1") as first:
        log_clv_model(StandInClvModel(rate=0.1), input_example=_features(3))
    v1 = tracking.register_model(client, run_id=first.info.run_id, artifact_name="model", model_name=MODEL_NAME,
                                 tags={"gate_eligible": True})
    assert v1.tags["gate_eligible"] == "True" and v1.run_id == first.info.run_id
    assert tracking.latest_with_alias(client, MODEL_NAME, "champion") is None

    tracking.set_alias(client, MODEL_NAME, "champion", v1.version)
    assert tracking.latest_with_alias(client, MODEL_NAME, "champion").version == v1.version

    with tracking.start_run(shared, run_name="v2") as second:
        info = log_clv_model(StandInClvModel(rate=0.2), registered_model_name=MODEL_NAME, tags={"kind": "stand-in"})
    assert info.registered_model_version is not None
    v2 = client.get_model_version(MODEL_NAME, str(info.registered_model_version))
    assert int(v2.version) == int(v1.version) + 1 and v2.run_id == second.info.run_id
    assert v2.tags["kind"] == "stand-in" and tracking.CODE_VERSION_TAG in v2.tags
    # A new version does not move the alias; set_alias does.
    assert tracking.latest_with_alias(client, MODEL_NAME, "champion").version == v1.version
    tracking.set_alias(client, MODEL_NAME, "champion", v2.version)
    tracking.set_alias(client, MODEL_NAME, "challenger", v1.version)
    assert tracking.latest_with_alias(client, MODEL_NAME, "champion").version == v2.version
    assert tracking.latest_with_alias(client, MODEL_NAME, "challenger").version == v1.version

    champion = mlflow.pyfunc.load_model(tracking.model_uri(MODEL_NAME, "champion"))
    features = _features()
    expected = flatten_cashflows(StandInClvModel(rate=0.2).predict(features))
    pd.testing.assert_frame_equal(champion.predict(features), expected)


def test_register_names_the_run_when_it_logged_no_such_model(shared):
    client = tracking.configure(shared)
    with tracking.start_run(shared, run_name="empty") as run:
        assert run.info.run_id  # nothing logged in it
    with pytest.raises(LookupError, match=run.info.run_id):
        tracking.register_model(client, run_id=run.info.run_id, artifact_name="model", model_name=MODEL_NAME)


def test_load_model_reads_the_version_or_alias_asked_for_and_names_what_is_missing(shared):
    client = tracking.configure(shared)
    name = "rapport-load-test"
    versions = []
    for rate in (0.1, 0.3):
        with tracking.start_run(shared, run_name=f"rate {rate}"):
            info = log_clv_model(StandInClvModel(rate=rate), registered_model_name=name)
        versions.append(tracking.tag_registered_version(client, name, info, gate_eligible=rate > 0.2,
                                                        tags={"rate": rate}))
    first, second = versions
    assert client.get_model_version(name, first).tags["gate_eligible"] == "false"
    assert client.get_model_version(name, second).tags["gate_eligible"] == "true"
    assert client.get_model_version(name, second).tags["rate"] == "0.3"
    tracking.set_alias(client, name, "champion", first)

    assert tracking.load_model(client, name, int(second)).rate == 0.3
    assert tracking.load_model(client, name, first).rate == 0.1
    assert tracking.load_model(client, name, "champion").rate == 0.1
    with pytest.raises(tracking.NoModelError, match=f"{name} has no version 99"):
        tracking.load_model(client, name, 99)
    with pytest.raises(tracking.NoModelError, match="no version with the alias 'challenger'"):
        tracking.load_model(client, name, "challenger")
    assert tracking.tag_registered_version(client, name, object(), gate_eligible=True) is None


# --- the CLV pyfunc -------------------------------------------------------------------------------


def test_flatten_cashflows_spreads_ragged_arrays_into_month_columns():
    frame = pd.DataFrame(
        {"clv": [3.0, 1.0, 0.0], CASHFLOWS_COLUMN: [np.array([1.0, 2.0]), [1.0], None],
         "segment": pd.Categorical(["top", "rest", "rest"])},
        index=pd.Index([7, 8, 9], name="customer_id"),
    )
    flat = flatten_cashflows(frame)
    assert list(flat.columns) == ["clv", *cashflow_columns(2), "segment"]
    np.testing.assert_array_equal(flat[cashflow_columns(2)].to_numpy(), [[1.0, 2.0], [1.0, np.nan], [np.nan, np.nan]])
    assert flat.index.equals(frame.index) and flat["segment"].tolist() == ["top", "rest", "rest"]
    assert flat["segment"].dtype == object


def _model_files(info) -> list[str]:
    local = mlflow.artifacts.download_artifacts(info.model_uri)
    return sorted(str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file())


def test_pyfunc_round_trip_with_the_stand_in(shared):
    model = StandInClvModel(rate=0.3, months=4)
    features = _features()
    with tracking.start_run(shared, run_name="pyfunc"):
        info = log_clv_model(model, name="clv", input_example=features.head(3))

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    scored = loaded.predict(features)
    pd.testing.assert_frame_equal(scored, flatten_cashflows(model.predict(features)))
    assert list(scored.columns) == ["expected_purchases", "clv", *cashflow_columns(4), "segment"]
    assert scored.index.name == "customer_id" and scored["segment"].dtype == object
    # A request has no index: it carries the customer id as a column, which becomes the index.
    pd.testing.assert_frame_equal(loaded.predict(features.reset_index()), scored)
    inputs = {spec.name: spec.required for spec in info.signature.inputs.inputs}
    assert inputs == {"customer_id": False, "frequency": True, "recency": True, "T": True, "monetary_value": True}

    files = _model_files(info)
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    state = json.loads(Path(mlflow.artifacts.download_artifacts(info.model_uri), "artifacts",
                            f"{ARTIFACT_KEY}.json").read_text())
    assert state == model.to_dict()
    assert info.signature is not None and "clv_cashflow_month_4" in info.signature.outputs.input_names()
    assert info.metadata["code_version"] == (tracking.code_version() or "unknown")


def _fitted_clv_model() -> tuple[Any, pd.DataFrame]:
    """A real ClvModel fitted on CDNOW's summary (lifetimes' example data, weeks), indexed by customer_id."""
    model_module = pytest.importorskip("training.clv.model", reason="training/clv/model.py is not written yet")
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    features = load_cdnow_summary_data_with_monetary_value().astype({"frequency": float})
    features["historic_clv"] = features["monetary_value"] * (features["frequency"] + 1)
    model = model_module.ClvModel(kind="bgnbd", time_unit="W", horizon_months=6)
    model.fit(features, cutoff=datetime(1997, 9, 28), currency="USD")
    return model, features


def test_pyfunc_round_trip_with_the_real_clv_model(shared):
    model, features = _fitted_clv_model()
    sample = features.head(40)
    with tracking.start_run(shared, run_name="clv pyfunc"):
        info = log_clv_model(model, input_example=sample.head(5))
    loaded = mlflow.pyfunc.load_model(info.model_uri)

    scored = loaded.predict(sample)
    pd.testing.assert_frame_equal(scored, flatten_cashflows(model.predict(sample)))
    assert scored.index.equals(sample.index)
    np.testing.assert_allclose(scored[cashflow_columns(6)].sum(axis=1), scored["clv"], rtol=1e-12)
    pd.testing.assert_frame_equal(loaded.predict(sample.reset_index()), scored)
    # Scoring one customer through the pyfunc gives the row batch scoring gives.
    pd.testing.assert_frame_equal(loaded.predict(sample.iloc[[7]]), scored.iloc[[7]])


@pytest.mark.model
def test_fingerprint_of_a_store_loaded_from_in_memory_tables(settings):
    import pyarrow as pa

    from features.discovery import RawInput
    from features.ingest import ingest
    from features.store import connect
    from tests.conftest import NOW

    con = connect(settings)
    table = pa.table({"customer_key": ["a"], "timestamp": ["2024-01-01"], "item_id": ["I1"], "quantity": [1],
                      "unit_price": [2.0]})
    ingest(con, [RawInput("transactions", "memory", table=table)], settings, now=NOW)
    first = tracking.data_fingerprint(con, as_of=datetime(2024, 6, 1))
    assert first["files"] == 1 and first["lines"] == 1
    assert tracking.data_fingerprint(con, as_of=datetime(2024, 6, 1))["hash"] == first["hash"]
