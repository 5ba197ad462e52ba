"""Settings: defaults, TOML file, environment precedence, validation messages, no side effects."""

from __future__ import annotations

import pytest

from features.masking import mask_secrets
from features.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_defaults_keep_everything_under_data_and_create_nothing(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert str(s.data_dir) == "data" and s.database_path.as_posix() == "data/rapport.duckdb"
    assert s.quarantine_dir.parent == s.data_dir and s.reports_dir.parent == s.data_dir
    assert not (tmp_path / "data").exists()  # parsing settings has no side effect


def test_toml_file_then_environment_then_arguments(settings, tmp_path, monkeypatch):
    config = tmp_path / "retailer.toml"
    config.write_text('currency = "eur"\ntimezone = "Europe/Paris"\n[currency_rates]\nGBP = 1.17\n')
    monkeypatch.setenv("RAPPORT_CONFIG", str(config))
    s = load_settings()
    assert (s.currency, s.timezone, s.currency_rates) == ("EUR", "Europe/Paris", {"GBP": 1.17})
    monkeypatch.setenv("RAPPORT_TIMEZONE", "UTC")
    assert load_settings().timezone == "UTC"  # the environment beats the file
    assert load_settings(timezone="Asia/Tokyo").timezone == "Asia/Tokyo"  # explicit beats both


def test_rapport_toml_in_the_working_directory_is_read(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rapport.toml").write_text('time_unit = "W"\n')
    assert load_settings().time_unit == "W"


def test_invalid_values_are_named(settings, monkeypatch, tmp_path):
    with pytest.raises(SettingsError, match="currency must be a 3-letter ISO 4217 code"):
        load_settings(currency="pounds")
    with pytest.raises(SettingsError, match=r"currency_rates\['USD'\] must be positive"):
        load_settings(currency_rates={"USD": 0})
    monkeypatch.setenv("RAPPORT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_settings()


def test_the_salt_is_secret(settings):
    s = load_settings(identity_salt="s3cret")
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert s.salt() == "s3cret"


def test_an_unknown_variable_is_refused_with_the_closest_setting(settings, monkeypatch):
    monkeypatch.setenv("RAPPORT_CHURN_HORIZON", "30")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == "RAPPORT_CHURN_HORIZON: not a setting; did you mean RAPPORT_CHURN_HORIZON_DAYS?"
    monkeypatch.delenv("RAPPORT_CHURN_HORIZON")
    # The variables the commands and the service read themselves, and one key of a mapping, are fine.
    for name, value in (("RAPPORT_BUNDLE_DIR", "bundle"), ("RAPPORT_SERVING_WORKERS", "2"),
                        ("RAPPORT_RECOMMEND_CANDIDATES__ALS", "20")):
        monkeypatch.setenv(name, value)
    assert load_settings().recommend.model.candidates == {"als": 20}
    monkeypatch.setenv("RAPPORT_NOTHING_LIKE_IT", "1")
    with pytest.raises(SettingsError, match="RAPPORT_NOTHING_LIKE_IT: not a setting \\(rapport config lists"):
        load_settings()


def test_a_typo_in_the_toml_file_is_refused_the_same_way(settings, tmp_path, monkeypatch):
    config = tmp_path / "retailer.toml"
    config.write_text('churn_horizon = 30\nidentity_sallt = "do-not-print-me"\n')
    monkeypatch.setenv("RAPPORT_CONFIG", str(config))
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "retailer.toml: churn_horizon: not a setting; did you mean churn_horizon_days?" in message
    assert "identity_sallt: not a setting; did you mean identity_salt?" in message
    assert "do-not-print-me" not in message  # a misspelt secret's value is not shown either


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("RAPPORT_CHURN_HORIZON_DAYS", "thirty", "RAPPORT_CHURN_HORIZON_DAYS: expected a whole number or 'auto', got 'thirty'"),
    ("RAPPORT_CHURN_HORIZON_DAYS", "3", "RAPPORT_CHURN_HORIZON_DAYS: expected a value >= 7 or 'auto', got '3'"),
    ("RAPPORT_TIME_UNIT", "M", "RAPPORT_TIME_UNIT: expected 'D' or 'W', got 'M'"),
    ("RAPPORT_CHURN_WITH_CLV_FEATURES", "maybe", "RAPPORT_CHURN_WITH_CLV_FEATURES: expected true or false"),
    ("RAPPORT_CURRENCY_RATES", "EUR=0.85", 'RAPPORT_CURRENCY_RATES: expected JSON such as {"EUR": 0.85}'),
])
def test_a_bad_value_names_the_variable(settings, monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(expected)


def test_a_secret_value_never_appears_in_the_error(settings, monkeypatch):
    monkeypatch.setenv("RAPPORT_SERVING_API_KEYS", '["key-one-s3cret", 12345678]')
    monkeypatch.setenv("RAPPORT_IDENTITY_SALT", "salt-s3cret")
    monkeypatch.setenv("RAPPORT_DUCKDB_THREADS", "zero")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("2 problems in the settings: ")
    assert "RAPPORT_SERVING_API_KEYS[1]: expected text (the value is secret: not shown)" in message
    assert "RAPPORT_DUCKDB_THREADS: expected a whole number" in message
    for secret in ("s3cret", "12345678"):
        assert secret not in message
    # pydantic's own error (which holds the input values) is not chained into a traceback either.
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_credentials_in_uris_are_masked_in_repr_and_by_the_masking_function(settings):
    uri = "https://ana:pa55w0rd@mlflow.example:5000"
    s = load_settings(mlflow_tracking_uri=uri)
    assert s.mlflow_tracking_uri == uri  # the value itself is intact: MLflow needs it
    assert "pa55w0rd" not in repr(s) and "ana:***@mlflow.example" in repr(s)
    cases = {
        uri: "https://ana:***@mlflow.example:5000",
        "postgresql://mlflow:p@ss@db.internal:5432/mlflow": "postgresql://mlflow:***@db.internal:5432/mlflow",
        "mysql://db/mlflow?user=ana&password=pa55": "mysql://db/mlflow?user=ana&password=***",
        "failed to reach 'https://u:pw@host/api'; retrying": "failed to reach 'https://u:***@host/api'; retrying",
        # Nothing to mask: no password, a port, a path, an e-mail-like text.
        "sqlite:////srv/mlflow.db": "sqlite:////srv/mlflow.db",
        "http://host:5000/api/2.0": "http://host:5000/api/2.0",
        "https://ana@host": "https://ana@host",
    }
    for text, masked in cases.items():
        assert mask_secrets(text) == masked
