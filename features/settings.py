"""Typed settings, parsed once and passed down.

Precedence (highest first): explicit keyword arguments, ``RAPPORT_*`` environment variables, the
TOML file named by ``RAPPORT_CONFIG`` (or ``./rapport.toml`` when it exists), then the defaults
below. Nothing here touches the file system or any global state at import time: directories are
created by :meth:`Settings.ensure_dirs`, which the commands that write call explicitly.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as _SourceError

from features.errors import RapportError
from features.masking import mask_secrets

#: Development salt. Fine for synthetic data; a real deployment sets RAPPORT_IDENTITY_SALT.
DEFAULT_SALT = "rapport-development-salt"

TimeUnit = Literal["D", "W"]
#: The CLV candidates, in the order they are compared (see training.clv.pipeline).
ClvCandidate = Literal["bgnbd", "mbgnbd", "paretonbd", "blend", "naive"]
#: A window in whole days, or ``auto``: chosen from the history by features.windows.
AutoDays = Annotated[int, Field(ge=7)] | Literal["auto"]


def _config_file() -> Path | None:
    explicit = os.environ.get("RAPPORT_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"RAPPORT_CONFIG points to {path}, which is not a file")
        return path
    local = Path("rapport.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Every knob of the project. See the README's configuration section for each one."""

    model_config = SettingsConfigDict(
        env_prefix="RAPPORT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Field(Path("data"), description="Root of all state: database, quarantine, reports, MLflow.")
    currency: str = Field("GBP", description="Currency of all amounts after ingestion (ISO 4217).")
    currency_rates: dict[str, float] = Field(
        default_factory=dict,
        description="Rates that convert other currencies into `currency`: amount * rate. Rows in a currency "
        "without a rate are quarantined.",
    )
    timezone: str = Field("UTC", description="Zone of timestamps that carry no offset; stored times are UTC.")
    time_unit: TimeUnit = Field("D", description="Period of the lifetimes frequency/recency/T convention: D or W.")
    identity_salt: SecretStr = Field(SecretStr(DEFAULT_SALT), description="Salt of the personal-identifier hashes.")
    default_phone_country_code: str = Field("44", description="Calling code added to national phone numbers.")
    default_channel: Literal["web", "app", "store", "marketplace"] = Field(
        "web", description="Channel of generic transactions that carry none."
    )
    future_tolerance_hours: float = Field(
        24.0, ge=0, description="A timestamp later than now + this tolerance is quarantined as in the future."
    )
    earliest_timestamp: date = Field(
        date(1990, 1, 1),
        description="Timestamps before this day (like 1970-01-01 or year 1, what a null date becomes in many "
        "exports) are quarantined as outside the plausible range.",
    )
    max_quarantine_share: float = Field(
        0.2, ge=0, le=1,
        description="A file in which one column and reason would quarantine a larger share of the rows (and at "
        "least 10 rows) is refused, nothing written, unless --accept-quarantine: a wrong mapping or format.",
    )
    negative_quantity_returns: bool = Field(
        True,
        description="Generic transactions: a negative quantity is a return of the customer's most recent earlier "
        "sale of the item (quarantined when there is none); false: quarantined as a zero or negative quantity.",
    )
    distant_history_days: int = Field(
        365, ge=0,
        description="An ingest whose sales are this many days or more away from the stored history (before or "
        "after) is refused unless --append-distant-history: two unrelated histories would be mixed.",
    )
    store_busy_timeout_seconds: float = Field(
        30.0, ge=0, description="How long a command waits for a store another process holds, before it says which one."
    )
    non_product_items: list[str] = Field(
        default_factory=lambda: [
            "POST", "DOT", "M", "C2", "D", "S", "B", "CRUK", "BANK CHARGES", "AMAZONFEE", "ADJUST",
            "ADJUST2", "PADS", "TEST001", "TEST002", "GIFT",
        ],
        description="Item ids that are fees, postage or adjustments, never products (case-insensitive).",
    )
    duckdb_memory_limit: str = Field("3GB", description="DuckDB's memory limit (spills to disk beyond it).")
    duckdb_threads: int = Field(2, ge=1, description="DuckDB worker threads.")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking (and registry) URI. None: the embedded SQLite store "
        "sqlite:///<data_dir>/mlflow/mlflow.db with artifacts under <data_dir>/mlflow/artifacts.",
    )
    mlflow_experiment: str = Field("rapport", min_length=1, description="MLflow experiment of every training run.")
    clv_candidates: list[ClvCandidate] = Field(
        default_factory=lambda: list(get_args(ClvCandidate)),
        min_length=1,
        description="CLV candidates: purchase models, their blend with the historic rate and the naive historic "
        "rate; the lowest per-customer MAE on a validation split of the calibration period wins (MBG/NBD or "
        "Pareto/NBD within 1 %), the holdout only gates it (failing, the naive rate is served when it is a "
        "candidate).",
    )
    clv_holdout_days: AutoDays = Field("auto", description="Length of the CLV evaluation holdout before the cutoff (auto: a third of the history, 7 to 183 days).")
    clv_penalizer: float = Field(0.0, ge=0, description="L2 penalizer of the lifetimes fits (0: maximum likelihood).")
    clv_horizon_months: int = Field(12, ge=1, le=120, description="Horizon of the predicted CLV.")
    clv_monthly_discount_rate: float = Field(0.01, ge=0, lt=1, description="Monthly discount rate of the CLV.")
    churn_horizon_days: AutoDays = Field("auto", description="H: a customer churns when they make no purchase in the H days after the cutoff (auto: three times the median days between purchases, 14 to 90, at most a fifth of the history).")
    churn_lookback_days: AutoDays = Field("auto", description="Population: customers with a purchase in this many days before the cutoff (auto: four horizons, at most a year, fitted to the history).")
    churn_cutoff_spacing: Annotated[int, Field(ge=1)] | Literal["auto", "monthly"] = Field(
        "auto", description="Days between the stacked cutoffs, or monthly (the first of each month); auto: monthly when it gives at least three training cutoffs, else weekly.")
    churn_max_cutoffs: int = Field(12, ge=3, description="Cutoffs stacked into the data set: the test (latest), the validation (one horizon before) and up to this many minus two training cutoffs (latest first).")
    churn_with_clv_features: bool = Field(True, description="Add BG/NBD probability alive and expected purchases (fitted per cutoff) as features.")
    churn_n_estimators: int = Field(500, ge=10, description="LightGBM: maximum boosting rounds (early stopping on the validation cutoff).")
    churn_learning_rate: float = Field(0.05, gt=0, le=1, description="LightGBM learning rate.")
    churn_num_leaves: int = Field(31, ge=2, description="LightGBM leaves per tree.")
    churn_min_child_samples: int = Field(50, ge=1, description="LightGBM minimum customers per leaf.")
    churn_early_stopping_rounds: int = Field(50, ge=1, description="LightGBM early-stopping patience.")
    churn_calibration: Literal["auto", "isotonic", "interpolated", "sigmoid"] = Field("auto", description="Probability calibration fitted on the validation cutoff; auto: interpolated isotonic or Platt's sigmoid (both keep the ranking) unless isotonic's steps are better calibrated by more than 0.005 ECE out of fold.")
    churn_risk_thresholds: tuple[float, float] | None = Field(
        None, description="Churn probabilities separating low/medium and medium/high risk; default: the 50th and 80th percentiles of the training distribution."
    )
    recommend_test_days: AutoDays = Field("auto", description="Recommender evaluation: the last days of the history held out as the test period (auto: a sixth of the history, 7 to 90 days).")
    recommend_valid_days: AutoDays = Field("auto", description="Recommender: the label period the ranker learns on (the validation period before the test; auto: a sixth of the history, 7 to 90 days).")
    recommend_half_life_days: Annotated[float, Field(gt=0)] | None | Literal["auto"] = Field(
        "auto", description="Recency half-life of the purchases the candidate models learn from (None: no decay; auto: half the history, 7 to 365 days).")
    recommend_browse_weight: float = Field(0.1, ge=0, description="What one browse event counts next to one purchase.")
    recommend_factors: int = Field(64, ge=2, description="ALS latent factors.")
    recommend_regularization: float = Field(0.05, ge=0, description="ALS regularisation.")
    recommend_iterations: int = Field(15, ge=1, description="ALS iterations.")
    recommend_warm_iterations: int = Field(
        5, ge=1, description="ALS iterations of the final candidate models, started from the label period's factors.")
    recommend_neighbours: int = Field(100, ge=1, description="Item-KNN: neighbours kept per item (BM25 similarity).")
    recommend_candidates: dict[str, int] = Field(
        default_factory=lambda: {"own": 50, "als": 50, "knn": 50, "popular": 30, "tifu": 50},
        description="Candidates per customer from each source (own purchases, ALS, item-KNN, popular, TIFU-KNN) before ranking.",
    )
    recommend_max_training_customers: int = Field(20_000, ge=10, description="Customers sampled to train the ranker.")
    recommend_ranker_trees: int = Field(150, ge=1, description="LightGBM ranker: maximum boosting rounds (early stopping on held-out label-period customers; every tree costs scoring time).")
    recommend_repurchasable_categories: list[str] = Field(
        default_factory=list,
        description="Categories still recommended after a purchase when already purchased items are excluded (consumables).",
    )
    recommend_tifu_neighbours: int = Field(100, ge=1, description="TIFU-KNN: nearest customers whose decayed basket frequencies are blended in (k).")
    recommend_tifu_alpha: float = Field(0.7, ge=0, le=1, description="TIFU-KNN: share of the customer's own vector in the blend with the neighbours' (alpha).")
    recommend_tifu_group_size: int = Field(7, ge=1, description="TIFU-KNN: baskets per group (m), counted from the latest.")
    recommend_tifu_within_decay: float = Field(0.9, gt=0, le=1, description="TIFU-KNN: decay between consecutive baskets of a group (r_b).")
    recommend_tifu_across_decay: float = Field(0.7, gt=0, le=1, description="TIFU-KNN: decay between consecutive groups of baskets (r_g).")
    recommend_tifu_pool: int = Field(5_000, ge=1, description="TIFU-KNN: the most active customers among whom neighbours are searched.")
    train_search_budget_s: float = Field(
        40.0, ge=0, description="Seconds each training step may spend searching its hyper-parameters on the validation period (0: no search, the settings as given).")
    promotion_tolerance: float = Field(0.01, ge=0, lt=1, description="A new version becomes champion only if no key metric is worse than the champion's by more than this share.")
    model_threads: int = Field(2, ge=1, description="Threads of LightGBM and BLAS in training and scoring.")
    serving_api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="API keys accepted by the service in the X-API-Key header (customer_scores always needs one; "
        "set them with RAPPORT_SERVING_API_KEYS='[\"key1\", \"key2\"]'). None set: customer_scores refuses every call.",
    )
    serving_recommend_requires_key: bool = Field(
        False, description="Whether recommend and similar_items need an API key too (default: public, for the web shop)."
    )
    serving_max_request_bytes: int = Field(
        262_144, ge=1_024, description="Largest request body the service accepts (larger: 413)."
    )
    serving_default_lists: int = Field(
        20, ge=0, le=100,
        description="Export: every known customer's top-N under the default options (no filter, purchases excluded) "
        "is ranked once into the bundle and served as a lookup (requests with n <= N and no filter); 0: rank every request.",
    )
    serving_workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="Worker processes of the service (rapport serve start; RAPPORT_SERVING_WORKERS for bentoml "
        "serve). auto: 2 where there are two cores or more, else 1. The workers share the bundle's arrays.",
    )

    @field_validator("currency")
    @classmethod
    def _upper_currency(cls, value: str) -> str:
        if len(value) != 3 or not value.isalpha():
            raise ValueError(f"currency must be a 3-letter ISO 4217 code, got {value!r}")
        return value.upper()

    @field_validator("currency_rates")
    @classmethod
    def _positive_rates(cls, value: dict[str, float]) -> dict[str, float]:
        for code, rate in value.items():
            if rate <= 0:
                raise ValueError(f"currency_rates[{code!r}] must be positive, got {rate}")
        return {code.upper(): rate for code, rate in value.items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _config_file()
        if config is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        return tuple(sources)

    # Paths derived from data_dir: one place decides the layout of the state folder.
    @property
    def database_path(self) -> Path:
        return self.data_dir / "rapport.duckdb"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    @property
    def mlflow_db_path(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.mlflow_dir / "artifacts"

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.quarantine_dir, self.reports_dir):
            path.mkdir(parents=True, exist_ok=True)

    def salt(self) -> str:
        return self.identity_salt.get_secret_value()

    def __repr_args__(self):  # noqa: ANN204 - pydantic's signature
        # A tracking URI with a password must not reach a log line through repr(settings).
        for name, value in super().__repr_args__():
            yield name, mask_secrets(value) if isinstance(value, str) else value


#: Prefix of every environment variable of the project.
ENV_PREFIX = "RAPPORT_"
#: ``RAPPORT_*`` variables that are not settings: read by the commands and the service themselves.
OTHER_VARIABLES = frozenset({"RAPPORT_CONFIG", "RAPPORT_BUNDLE_DIR", "RAPPORT_SERVING_WORKERS",
                             "RAPPORT_SERVING_TRACING"})


class SettingsError(RapportError, ValueError):
    """Settings that cannot be used: each problem names the variable, file key or argument it came
    from and what was expected; a secret's value is never part of the message."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        text = problems[0] if len(problems) == 1 else f"{len(problems)} problems in the settings: " + "; ".join(problems)
        super().__init__(text)


def load_settings(**overrides: Any) -> Settings:
    """Parse the settings once (environment, TOML file, defaults) with optional explicit overrides.

    Raises :class:`SettingsError` for an unknown ``RAPPORT_*`` variable (a typo must not be silently
    ignored while the same typo in the TOML file is refused), an unknown TOML key, or a bad value.
    """
    problems = unknown_variables(os.environ)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems += _describe_all(exc.errors(include_url=False), overrides)
    except _SourceError as exc:
        # pydantic-settings' own error when a variable's JSON does not parse; it names the field only.
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
        problems.append(f"{_origin(field, overrides)}: expected JSON such as {_json_example(field)}")
    if problems:
        raise SettingsError(problems)
    return settings


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One problem per ``RAPPORT_*`` variable that names no setting, with the closest setting's name."""
    fields = list(Settings.model_fields)
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES:
            continue
        field = upper[len(ENV_PREFIX):].split("__")[0].lower()  # FIELD__KEY sets one key of a mapping
        if field in fields:
            continue
        problems.append(f"{name}: not a setting{_suggestion(field, fields, variable=True)}")
    return problems


def _suggestion(name: str, fields: list[str], *, variable: bool) -> str:
    close = difflib.get_close_matches(name.lower(), fields, n=1, cutoff=0.6)
    if not close:
        return " (rapport config lists the settings)"
    return f"; did you mean {ENV_PREFIX + close[0].upper() if variable else close[0]}?"


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is not None and "SecretStr" in str(info.annotation)


def _origin(field: str, overrides: Mapping[str, Any]) -> str:
    """Where a setting's value came from, in precedence order: argument, variable, TOML file."""
    if field in overrides:
        return f"{field} (argument)"
    for name in sorted(os.environ):
        upper = name.upper()
        if upper == ENV_PREFIX + field.upper() or upper.startswith(ENV_PREFIX + field.upper() + "__"):
            return name
    config = _config_file()
    return f"{config}: {field}" if config is not None else field


#: What was expected, by pydantic error type; the others keep pydantic's own wording.
_EXPECTED = {
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "int_type": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list",
    "dict_type": "expected a table (mapping)",
    "tuple_type": "expected a list",
}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
           "less_than": ("<", "lt")}


def _describe_all(errors: list[Any], overrides: Mapping[str, Any]) -> list[str]:
    """One problem per setting: pydantic reports a value that fits no member of a union such as
    ``int | "auto"`` once per member (``loc`` = field, member tag); those become one line that lists
    what each member expects (``expected a whole number or 'auto', got 'thirty'``)."""
    merged: dict[tuple[str, str], list[str]] = {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if len(loc) >= 2 and _is_union(str(loc[0])):
            error = {**error, "loc": (loc[0], *loc[2:])}
        where, _, rest = _describe(error, overrides).partition(": ")
        expected, got = rest.split(", got ", 1) if ", got " in rest else (rest, "")
        merged.setdefault((where, got), []).append(expected)
    return [f"{where}: {' or '.join(dict.fromkeys(e.removeprefix('expected ') if i else e for i, e in enumerate(expected)))}"
            + (f", got {got}" if got else "") for (where, got), expected in merged.items()]


def _is_union(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is not None and typing.get_origin(info.annotation) in (typing.Union, types.UnionType)


def _describe(error: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    field = loc[0] if loc else ""
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind == "extra_forbidden":
        # An unknown key's value is never shown: it may be a secret under a misspelt name.
        fields = list(Settings.model_fields)
        where = f"{_config_file()}: {field}" if field not in overrides else f"{field} (argument)"
        return f"{where}: not a setting{_suggestion(field, fields, variable=False)}"
    where = _origin(field, overrides) + "".join(f"[{part}]" for part in loc[1:])
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind in _BOUNDS:
        sign, key = _BOUNDS[kind]
        expected = f"expected a value {sign} {ctx.get(key)}"
    elif kind == "literal_error":
        expected = f"expected {ctx.get('expected')}"
    elif kind in ("too_short", "string_too_short"):
        expected = f"expected at least {ctx.get('min_length')} {'item' if kind == 'too_short' else 'character'}(s)"
    else:
        message = str(error.get("msg", "invalid value"))
        expected = message.removeprefix("Value error, ")
        expected = expected[:1].lower() + expected[1:]
    if _is_secret(field):
        return f"{where}: {expected} (the value is secret: not shown)"
    if "input" in error and kind not in ("value_error", "missing") and not isinstance(error["input"], Mapping | list):
        shown = mask_secrets(repr(error["input"]))
        return f"{where}: {expected}, got {shown[:60]}"
    return f"{where}: {expected}"


def _json_example(field: str) -> str:
    info = Settings.model_fields.get(field)
    annotation = str(info.annotation) if info is not None else ""
    return '{"EUR": 0.85}' if annotation.startswith("dict") else '["a", "b"]'
