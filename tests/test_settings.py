"""Settings: defaults, TOML file, environment precedence, validation messages, no side effects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from features.settings import load_settings

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
    with pytest.raises(ValidationError, match="currency must be a 3-letter ISO 4217 code"):
        load_settings(currency="pounds")
    with pytest.raises(ValidationError, match=r"currency_rates\['USD'\] must be positive"):
        load_settings(currency_rates={"USD": 0})
    monkeypatch.setenv("RAPPORT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_settings()


def test_the_salt_is_secret(settings):
    s = load_settings(identity_salt="s3cret")
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert s.salt() == "s3cret"
