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
    assert str(info.value) == "RAPPORT_CHURN_HORIZON: not a setting; did you mean RAPPORT_CHURN__HORIZON_DAYS?"
    monkeypatch.delenv("RAPPORT_CHURN_HORIZON")
    # The variables the commands and the service read themselves, and one key of a mapping, are fine.
    for name, value in (("RAPPORT_BUNDLE_DIR", "bundle"), ("RAPPORT_SERVING__WORKERS", "2"),
                        ("RAPPORT_RECOMMEND__MODEL__CANDIDATES__ALS", "20")):
        monkeypatch.setenv(name, value)
    assert load_settings().recommend.model.candidates == {"als": 20}
    monkeypatch.setenv("RAPPORT_CHURN__MODEL__NUM_LEAFS", "15")
    with pytest.raises(SettingsError, match="RAPPORT_CHURN__MODEL__NUM_LEAFS: not a setting; did you mean "
                                            "RAPPORT_CHURN__MODEL__NUM_LEAVES"):
        load_settings()
    monkeypatch.delenv("RAPPORT_CHURN__MODEL__NUM_LEAFS")
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
    assert "retailer.toml: churn_horizon: not a setting; did you mean churn.horizon_days?" in message
    assert "identity_sallt: not a setting; did you mean identity_salt?" in message
    assert "do-not-print-me" not in message  # a misspelt secret's value is not shown either


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("RAPPORT_CHURN__HORIZON_DAYS", "thirty", "RAPPORT_CHURN__HORIZON_DAYS: expected a whole number or 'auto', got 'thirty'"),
    ("RAPPORT_CHURN__HORIZON_DAYS", "3", "RAPPORT_CHURN__HORIZON_DAYS: expected a value >= 7 or 'auto', got '3'"),
    # A deprecated flat name is named as the user wrote it.
    ("RAPPORT_CHURN_HORIZON_DAYS", "3", "RAPPORT_CHURN_HORIZON_DAYS: expected a value >= 7 or 'auto', got '3'"),
    ("RAPPORT_CHURN__MODEL__LEARNING_RATE", "2", "RAPPORT_CHURN__MODEL__LEARNING_RATE: expected a value <= 1.0, got '2'"),
    ("RAPPORT_TIME_UNIT", "M", "RAPPORT_TIME_UNIT: expected 'D' or 'W', got 'M'"),
    ("RAPPORT_CHURN__WITH_CLV_FEATURES", "maybe", "RAPPORT_CHURN__WITH_CLV_FEATURES: expected true or false"),
    ("RAPPORT_RECOMMEND__MODEL__CANDIDATES", "als=3", 'RAPPORT_RECOMMEND__MODEL__CANDIDATES: expected JSON such as {"als": 30}'),
    ("RAPPORT_CURRENCY_RATES", "EUR=0.85", 'RAPPORT_CURRENCY_RATES: expected JSON such as {"EUR": 0.85}'),
])
def test_a_bad_value_names_the_variable(settings, monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(expected)


def test_a_secret_value_never_appears_in_the_error(settings, monkeypatch):
    monkeypatch.setenv("RAPPORT_SERVING__API_KEYS", '["key-one-s3cret", 12345678]')
    monkeypatch.setenv("RAPPORT_IDENTITY_SALT", "salt-s3cret")
    monkeypatch.setenv("RAPPORT_DUCKDB_THREADS", "zero")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("2 problems in the settings: ")
    assert "RAPPORT_SERVING__API_KEYS[1]: expected text (the value is secret: not shown)" in message
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


def test_sections_are_read_from_nested_variables_the_toml_file_and_arguments(settings, tmp_path, monkeypatch):
    config = tmp_path / "retailer.toml"
    config.write_text('[churn]\nhorizon_days = 30\nlookback_days = 120\n[churn.model]\nnum_leaves = 15\n'
                      '[recommend.model.candidates]\nals = 20\nknn = 10\n')
    monkeypatch.setenv("RAPPORT_CONFIG", str(config))
    monkeypatch.setenv("RAPPORT_CHURN__LOOKBACK_DAYS", "150")
    monkeypatch.setenv("RAPPORT_CHURN__MODEL__LEARNING_RATE", "0.1")
    s = load_settings(churn={"model": {"min_child_samples": 20}})
    # Each source sets its keys of a section; the others keep theirs: argument > variable > file > default.
    assert (s.churn.horizon_days, s.churn.lookback_days, s.churn.max_cutoffs) == (30, 150, 12)
    assert s.churn.model.model_dump(include={"num_leaves", "learning_rate", "min_child_samples", "n_estimators"}) == \
        {"num_leaves": 15, "learning_rate": 0.1, "min_child_samples": 20, "n_estimators": 500}
    assert s.recommend.model.candidates == {"als": 20, "knn": 10}


def test_the_flat_names_before_sections_still_work_and_are_reported_as_deprecated(settings, tmp_path, monkeypatch,
                                                                                  caplog):
    config = tmp_path / "retailer.toml"
    config.write_text("churn_max_cutoffs = 6\nrecommend_ranker_trees = 90\n")
    monkeypatch.setenv("RAPPORT_CONFIG", str(config))
    monkeypatch.setenv("RAPPORT_CHURN_HORIZON_DAYS", "30")
    monkeypatch.setenv("RAPPORT_RECOMMEND_VALID_DAYS", "28")
    monkeypatch.setenv("RAPPORT_RECOMMEND_CANDIDATES__ALS", "20")
    with caplog.at_level("WARNING", logger="features.settings"):
        s = load_settings(clv_penalizer=0.001)
    assert (s.churn.horizon_days, s.churn.max_cutoffs, s.recommend.label_days) == (30, 6, 28)
    assert s.recommend.model.n_estimators == 90 and s.recommend.model.candidates == {"als": 20}
    assert s.clv.model.penalizer == 0.001
    warned = caplog.text
    assert "RAPPORT_CHURN_HORIZON_DAYS is deprecated: use RAPPORT_CHURN__HORIZON_DAYS" in warned
    assert "RAPPORT_RECOMMEND_VALID_DAYS is deprecated: use RAPPORT_RECOMMEND__LABEL_DAYS" in warned
    assert "RAPPORT_RECOMMEND_CANDIDATES__ALS is deprecated: use RAPPORT_RECOMMEND__MODEL__CANDIDATES__ALS" in warned
    assert "retailer.toml: recommend_ranker_trees is deprecated: write n_estimators under [recommend.model]" in warned
    assert "argument clv_penalizer is deprecated: use clv.model.penalizer" in warned
    # Where both are set, the new name wins over the old one.
    monkeypatch.setenv("RAPPORT_CHURN__HORIZON_DAYS", "60")
    assert load_settings().churn.horizon_days == 60


def test_updated_changes_only_the_keys_given_and_validates(settings):
    s = load_settings(churn={"horizon_days": 30})
    changed = s.updated(churn={"model": {"num_leaves": 15}}, train_search_budget_s=0.0)
    assert (changed.churn.horizon_days, changed.churn.model.num_leaves, changed.train_search_budget_s) == (30, 15, 0.0)
    assert changed.churn.model.n_estimators == s.churn.model.n_estimators and s.churn.model.num_leaves == 31
    with pytest.raises(ValueError, match="num_leaves"):
        s.updated(churn={"model": {"num_leaves": 1}})
    with pytest.raises(ValueError, match="horizn"):
        s.updated(churn={"horizn": 30})


def test_each_model_takes_its_section_by_the_same_names(settings):
    """No renames between layers: a model section's keys are its model's own parameter names and
    defaults, so that ``Model(**section.model_dump())`` builds it and a new setting is one field."""
    import dataclasses

    from training.churn.model import ChurnModel
    from training.clv.model import ClvModel
    from training.recommend.model import RecommenderSettings

    s = load_settings()
    churn, clv = ChurnModel().get_params(), ClvModel().get_params()
    for section, defaults in ((s.churn.model, churn), (s.clv.model, clv)):
        for name, value in section.model_dump().items():
            assert name in defaults and defaults[name] == value, name
    recommender = {f.name: f for f in dataclasses.fields(RecommenderSettings)}
    for name, value in s.recommend.model.model_dump().items():
        assert name in recommender, name
        default = recommender[name].default
        if default is dataclasses.MISSING:
            default = recommender[name].default_factory()  # type: ignore[misc]
            default = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
        assert default == value, name


def test_rapport_config_lists_every_setting_and_the_readme_documents_it(settings):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    names = [name for name, _ in load_settings().leaves()]
    assert "churn.model.num_leaves" in names and "serving.default_lists" in names and "data_dir" in names
    missing = [name for name in names if f"`{name}`" not in readme]
    assert not missing, f"README's configuration section does not name {missing}"
