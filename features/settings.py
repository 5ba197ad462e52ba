"""Typed settings, parsed once and passed down.

Precedence (highest first): explicit keyword arguments, ``RAPPORT_*`` environment variables, the
TOML file named by ``RAPPORT_CONFIG`` (or ``./rapport.toml`` when it exists), then the defaults
below. Nothing here touches the file system or any global state at import time: directories are
created by :meth:`Settings.ensure_dirs`, which the commands that write call explicitly.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as _SourceError

from features.errors import RapportError
from features.masking import mask_secrets

logger = logging.getLogger(__name__)

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


SectionT = typing.TypeVar("SectionT", bound="Section")


class Section(BaseModel):
    """A group of settings (``settings.churn``, ``settings.churn.model``...): frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ClvModelSettings(Section):
    """The deployment's settings of :class:`training.clv.model.ClvModel`, by its parameter names."""

    penalizer: float = Field(0.0, ge=0, description="L2 penalizer of the lifetimes fits (0: maximum likelihood).")
    horizon_months: int = Field(12, ge=1, le=120, description="Horizon of the predicted CLV.")
    monthly_discount_rate: float = Field(0.01, ge=0, lt=1, description="Monthly discount rate of the CLV.")


class ClvSettings(Section):
    """``settings.clv``: the CLV step (``RAPPORT_CLV__*``, ``[clv]`` in the TOML file)."""

    candidates: list[ClvCandidate] = Field(
        default_factory=lambda: list(get_args(ClvCandidate)),
        min_length=1,
        description="CLV candidates: purchase models, their blend with the historic rate and the naive historic "
        "rate; the lowest per-customer MAE on a validation split of the calibration period wins (MBG/NBD or "
        "Pareto/NBD within 1 %), the holdout only gates it (failing, the naive rate is served when it is a "
        "candidate).",
    )
    holdout_days: AutoDays = Field("auto", description="Length of the CLV evaluation holdout before the cutoff (auto: a third of the history, 7 to 183 days).")
    model: ClvModelSettings = Field(default_factory=ClvModelSettings)


class ChurnModelSettings(Section):
    """The deployment's settings of :class:`training.churn.model.ChurnModel`, by its parameter names."""

    n_estimators: int = Field(500, ge=10, description="LightGBM: maximum boosting rounds (early stopping on the validation cutoff).")
    learning_rate: float = Field(0.05, gt=0, le=1, description="LightGBM learning rate.")
    num_leaves: int = Field(31, ge=2, description="LightGBM leaves per tree.")
    min_child_samples: int = Field(50, ge=1, description="LightGBM minimum customers per leaf.")
    early_stopping_rounds: int = Field(50, ge=1, description="LightGBM early-stopping patience.")
    calibration: Literal["auto", "isotonic", "interpolated", "sigmoid"] = Field("auto", description="Probability calibration fitted on the validation cutoff; auto: interpolated isotonic or Platt's sigmoid (both keep the ranking) unless isotonic's steps are better calibrated by more than 0.005 ECE out of fold.")
    risk_thresholds: tuple[float, float] | None = Field(
        None, description="Churn probabilities separating low/medium and medium/high risk; default: the 50th and 80th percentiles of the training distribution."
    )

    @field_validator("risk_thresholds")
    @classmethod
    def _ordered_probabilities(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (0 <= value[0] <= value[1] <= 1):  # NaN fails every comparison
            raise ValueError("None or two probabilities (medium from, high from) with 0 <= medium <= high <= 1")
        return value


class ChurnSettings(Section):
    """``settings.churn``: the churn step's windows and data set, and its model."""

    horizon_days: AutoDays = Field("auto", description="H: a customer churns when they make no purchase in the H days after the cutoff (auto: three times the median days between purchases, 14 to 90, at most a fifth of the history).")
    lookback_days: AutoDays = Field("auto", description="Population: customers with a purchase in this many days before the cutoff (auto: four horizons, at most a year, fitted to the history).")
    cutoff_spacing: Annotated[int, Field(ge=1)] | Literal["auto", "monthly"] = Field(
        "auto", description="Days between the stacked cutoffs, or monthly (the first of each month); auto: monthly when it gives at least three training cutoffs, else weekly.")
    max_cutoffs: int = Field(12, ge=3, description="Cutoffs stacked into the data set: the test (latest), the validation (one horizon before) and up to this many minus two training cutoffs (latest first).")
    with_clv_features: bool = Field(True, description="Add BG/NBD probability alive and expected purchases (fitted per cutoff) as features.")
    model: ChurnModelSettings = Field(default_factory=ChurnModelSettings)


class RecommendModelSettings(Section):
    """The deployment's settings of :class:`training.recommend.model.RecommenderSettings`, by its field names."""

    browse_weight: float = Field(0.1, ge=0, description="What one browse event counts next to one purchase.")
    factors: int = Field(64, ge=2, description="ALS latent factors.")
    regularization: float = Field(0.05, ge=0, description="ALS regularisation.")
    iterations: int = Field(15, ge=1, description="ALS iterations.")
    warm_iterations: int = Field(
        5, ge=1, description="ALS iterations of the final candidate models, started from the label period's factors.")
    knn_neighbours: int = Field(100, ge=1, description="Item-KNN: neighbours kept per item (BM25 similarity).")
    candidates: dict[str, int] = Field(
        default_factory=lambda: {"own": 50, "als": 50, "knn": 50, "popular": 30, "tifu": 50},
        description="Candidates per customer from each source (own purchases, ALS, item-KNN, popular, TIFU-KNN) before ranking.",
    )
    max_training_customers: int = Field(20_000, ge=10, description="Customers sampled to train the ranker.")
    n_estimators: int = Field(150, ge=1, description="LightGBM ranker: maximum boosting rounds (early stopping on held-out label-period customers; every tree costs scoring time).")
    repurchasable_categories: tuple[str, ...] = Field(
        default=(),
        description="Categories still recommended after a purchase when already purchased items are excluded (consumables).",
    )
    tifu_neighbours: int = Field(100, ge=1, description="TIFU-KNN: nearest customers whose decayed basket frequencies are blended in (k).")
    tifu_alpha: float = Field(0.7, ge=0, le=1, description="TIFU-KNN: share of the customer's own vector in the blend with the neighbours' (alpha).")
    tifu_group_size: int = Field(7, ge=1, description="TIFU-KNN: baskets per group (m), counted from the latest.")
    tifu_within_decay: float = Field(0.9, gt=0, le=1, description="TIFU-KNN: decay between consecutive baskets of a group (r_b).")
    tifu_across_decay: float = Field(0.7, gt=0, le=1, description="TIFU-KNN: decay between consecutive groups of baskets (r_g).")
    tifu_pool: int = Field(5_000, ge=1, description="TIFU-KNN: the most active customers among whom neighbours are searched.")


class RecommendSettings(Section):
    """``settings.recommend``: the recommender step's windows and its model."""

    test_days: AutoDays = Field("auto", description="Recommender evaluation: the last days of the history held out as the test period (auto: a sixth of the history, 7 to 90 days).")
    label_days: AutoDays = Field("auto", description="Recommender: the label period the ranker learns on (the validation period before the test; auto: a sixth of the history, 7 to 90 days).")
    half_life_days: Annotated[float, Field(gt=0)] | None | Literal["auto"] = Field(
        "auto", description="Recency half-life of the purchases the candidate models learn from (None: no decay; auto: half the history, 7 to 365 days).")
    model: RecommendModelSettings = Field(default_factory=RecommendModelSettings)


class ServingSettings(Section):
    """``settings.serving``: the service and its bundle."""

    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="API keys accepted by the service in the X-API-Key header (customer_scores always needs one; "
        "set them with RAPPORT_SERVING__API_KEYS='[\"key1\", \"key2\"]'). None set: customer_scores refuses every call.",
    )
    recommend_requires_key: bool = Field(
        False, description="Whether recommend and similar_items need an API key too (default: public, for the web shop)."
    )
    max_request_bytes: int = Field(
        262_144, ge=1_024, description="Largest request body the service accepts (larger: 413)."
    )
    default_lists: int = Field(
        20, ge=0, le=100,
        description="Export: every known customer's top-N under the default options (no filter, purchases excluded) "
        "is ranked once into the bundle and served as a lookup (requests with n <= N and no filter); 0: rank every request.",
    )
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="Worker processes of the service (rapport serve start; RAPPORT_SERVING__WORKERS for bentoml "
        "serve). auto: 2 where there are two cores or more, else 1. The workers share the bundle's arrays.",
    )


def requirement(model: type[BaseModel], name: str) -> str:
    """What field ``name`` of ``model`` accepts, in words, from its declaration: ``a whole number
    >= 2``, ``a number in (0, 1]``, ``one of auto, isotonic``, ``True or False``.

    Parameters
    ----------
    model
        A pydantic model (a :class:`Section`).
    name
        One of its fields.

    Returns
    -------
    str
        The requirement, to follow "must be".
    """
    info = model.model_fields[name]
    annotation = info.annotation
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(option) for option in get_args(annotation))
    if annotation is bool:
        return "True or False"
    bounds = {key: getattr(item, key) for item in info.metadata for key in ("ge", "gt", "le", "lt")
              if getattr(item, key, None) is not None}
    noun = "a whole number" if annotation is int else "a number"
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low is not None and high is not None:
        return f"{noun} in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low is not None:
        return f"{noun} {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high is not None:
        return f"{noun} {'<=' if high[0] == ']' else '<'} {high[1]}"
    return noun if annotation in (int, float) else f"a {annotation}"


def check_section(model: type[SectionT], values: Mapping[str, Any], owner: str) -> SectionT:
    """``values`` validated by ``model``; a bad value is a ``ValueError`` that names ``owner``'s
    setting, what it must be and the value given (the first problem only).

    Parameters
    ----------
    model
        The section that declares the settings.
    values
        The settings by name; names that are not fields of ``model`` are ignored.
    owner
        The class the settings belong to, for the message (``ChurnModel``).

    Returns
    -------
    Section
        The checked (and coerced) settings.
    """
    known = {name: values[name] for name in model.model_fields if name in values}
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = error.get("loc", ())
        if not loc:  # a check across settings names them itself
            raise ValueError(f"{owner} setting {str(error.get('msg')).removeprefix('Value error, ')}") from None
        name = str(loc[0])
        if name in model.model_fields and error.get("type") != "value_error":
            expected = requirement(model, name)
        else:
            expected = str(error.get("msg", "valid")).removeprefix("Value error, ")
        given = f", got {known[name]!r}" if name in known else ""
        raise ValueError(f"{owner} setting {name} must be {expected}{given}") from None


#: Sections of :class:`Settings`, by attribute name.
SECTIONS: dict[str, type[Section]] = {"clv": ClvSettings, "churn": ChurnSettings, "recommend": RecommendSettings,
                                      "serving": ServingSettings}
#: Flat names of the settings before they were grouped into sections, read for one more release and
#: reported as deprecated, where the new name is not the section's prefix plus the field's name.
RENAMED: dict[str, tuple[str, ...]] = {
    "recommend_valid_days": ("recommend", "label_days"),
    "recommend_neighbours": ("recommend", "model", "knn_neighbours"),
    "recommend_ranker_trees": ("recommend", "model", "n_estimators"),
}


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
    clv: ClvSettings = Field(default_factory=ClvSettings)
    churn: ChurnSettings = Field(default_factory=ChurnSettings)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)
    train_search_budget_s: float = Field(
        40.0, ge=0, description="Seconds each training step may spend searching its hyper-parameters on the validation period (0: no search, the settings as given).")
    promotion_tolerance: float = Field(0.01, ge=0, lt=1, description="A new version becomes champion only if no key metric is worse than the champion's by more than this share.")
    model_threads: int = Field(2, ge=1, description="Threads of LightGBM and BLAS in training and scoring.")
    serving: ServingSettings = Field(default_factory=ServingSettings)

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
        # The flat names of the settings before sections are read after the new ones (which win).
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _FlatEnvSource(settings_cls)]
        config = _config_file()
        if config is not None:
            sources.append(_TomlSource(settings_cls, toml_file=config))
        return tuple(sources)

    def leaves(self) -> list[tuple[str, Any]]:
        """Every setting as (dotted name, value), sections flattened (``churn.model.num_leaves``), in
        declaration order; what ``rapport config`` prints.

        Returns
        -------
        list of (str, object)
            The names and values; secrets stay :class:`~pydantic.SecretStr` (shown masked).
        """
        out: list[tuple[str, Any]] = []
        for path, _ in _leaves(type(self)):
            value: Any = self
            for part in path:
                value = getattr(value, part)
            out.append((".".join(path), value))
        return out

    def updated(self, **changes: Any) -> Settings:
        """A validated copy with ``changes``; a section takes a mapping of the keys it changes
        (``settings.updated(churn={"model": {"num_leaves": 15}})``), the others keep their values.

        Parameters
        ----------
        **changes
            Top-level settings by name, sections as (nested) mappings.

        Returns
        -------
        Settings
            The new settings; ``pydantic.ValidationError`` names an unknown or bad value.
        """
        return type(self).model_validate(_deep_merge(self.model_dump(), changes))

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
OTHER_VARIABLES = frozenset({"RAPPORT_CONFIG", "RAPPORT_BUNDLE_DIR", "RAPPORT_SERVING_TRACING"})


class SettingsError(RapportError, ValueError):
    """Settings that cannot be used: each problem names the variable, file key or argument it came
    from and what was expected; a secret's value is never part of the message."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        text = problems[0] if len(problems) == 1 else f"{len(problems)} problems in the settings: " + "; ".join(problems)
        super().__init__(text)


def load_settings(**overrides: Any) -> Settings:
    """Parse the settings once (environment, TOML file, defaults) with optional explicit overrides.

    Parameters
    ----------
    **overrides
        Settings by name, sections as mappings (``churn={"horizon_days": 30}``); they win over every
        other source.

    Returns
    -------
    Settings
        The settings. :class:`SettingsError` lists every problem: an unknown ``RAPPORT_*`` variable
        (a typo must not be silently ignored while the same typo in the TOML file is refused), an
        unknown TOML key, or a bad value. A flat name of the settings before they had sections
        (``RAPPORT_CHURN_HORIZON_DAYS``, ``churn_horizon_days = 30``) is still read, and reported as
        deprecated in a warning that gives the new name.
    """
    problems = unknown_variables(os.environ)
    try:
        settings = Settings(**nest_flat_names(overrides))
    except ValidationError as exc:
        problems += _describe_all(exc.errors(include_url=False), overrides)
    except _SourceError as exc:
        # pydantic-settings' own error when a variable's JSON does not parse; it names the field only.
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
        where = _origin((field,), overrides)
        name = (_deprecated_variable(where) or (where,))[0]
        path = tuple(name[len(ENV_PREFIX):].lower().split("__")) if name.startswith(ENV_PREFIX) else (field,)
        problems.append(f"{where}: expected JSON such as {_json_example(path)}")
    if problems:
        raise SettingsError(problems)
    for message in deprecated_names(os.environ, overrides):
        if message not in _REPORTED:
            _REPORTED.add(message)
            logger.warning("%s", message)
    return settings


_REPORTED: set[str] = set()


# --- sections and the flat names before them --------------------------------------------------------


def _section_of(info: FieldInfo) -> type[Section] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    for name, info in model.model_fields.items():
        section = _section_of(info)
        if section is None:
            yield (*prefix, name), info
        else:
            yield from _leaves(section, (*prefix, name))


def _field(path: Sequence[str]) -> tuple[tuple[str, ...], FieldInfo | None]:
    """The longest prefix of ``path`` that names settings fields, and the last field's info."""
    model: type[BaseModel] | None = Settings
    found: tuple[str, ...] = ()
    info = None
    for part in path:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            break
        info = model.model_fields[part]
        found = (*found, part)
        model = _section_of(info)
    return found, info


@functools.cache
def flat_names() -> dict[str, tuple[str, ...]]:
    """The deprecated flat name of every setting in a section (``churn_num_leaves``) -> its path
    (``("churn", "model", "num_leaves")``): the section's name, ``_`` and the field's name, or
    :data:`RENAMED`."""
    names = {f"{path[0]}_{path[-1]}": path for path, _ in _leaves(Settings) if len(path) > 1}
    for old, path in RENAMED.items():
        names.pop(f"{path[0]}_{path[-1]}", None)  # the automatic name of a renamed setting never existed
        names[old] = path
    return names


def nest_flat_names(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every deprecated flat name moved to its section (a section's own key wins)."""
    nested: dict[str, Any] = {key: value for key, value in values.items() if key not in flat_names()}
    for key, value in values.items():
        path = flat_names().get(key)
        if path is None:
            continue
        target = nested
        for part in path[:-1]:
            inner = target.get(part)
            target[part] = inner = dict(inner) if isinstance(inner, Mapping) else {}
            target = inner
        target.setdefault(path[-1], value)
    return nested


def _deep_merge(base: Mapping[str, Any], changes: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``base`` updated by ``changes``, section by section (a mapping-valued setting is replaced whole)."""
    merged = dict(base)
    for key, value in changes.items():
        info = _field((*path, key))[1]
        section = info is not None and _section_of(info) is not None
        if section and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value, (*path, key))
        else:
            merged[key] = value
    return merged


def variable(path: Sequence[str]) -> str:
    """The environment variable of a setting: ``("churn", "horizon_days")`` -> ``RAPPORT_CHURN__HORIZON_DAYS``."""
    return ENV_PREFIX + "__".join(path).upper()


def _deprecated_variable(name: str) -> tuple[str, str] | None:
    """(the new variable, the flat name) of a variable under a deprecated flat name, else None."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES:
        return None
    base, sep, key = upper[len(ENV_PREFIX):].lower().partition("__")
    path = flat_names().get(base)
    if path is None:
        return None
    return variable(path) + (f"__{key.upper()}" if sep else ""), base


def deprecated_names(environ: Mapping[str, str], overrides: Mapping[str, Any] = types.MappingProxyType({})) -> list[str]:
    """One warning per deprecated flat name in use: variables, keys of the TOML file, arguments."""
    messages = []
    for name in sorted(environ):
        found = _deprecated_variable(name)
        if found is not None:
            messages.append(f"{name} is deprecated: use {found[0]} (the flat names are read until the next release)")
    config = _config_file()
    if config is not None:
        for key in _read_toml(config):
            if key in flat_names():
                *section, leaf = flat_names()[key]
                messages.append(f"{config}: {key} is deprecated: write {leaf} under [{'.'.join(section)}]")
    for key in overrides:
        if key in flat_names():
            messages.append(f"argument {key} is deprecated: use {'.'.join(flat_names()[key])}")
    return messages


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


class _FlatEnvSource(EnvSettingsSource):
    """The variables under the flat names of the settings before sections, read as their new names."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        found: dict[str, str | None] = {}
        for name, value in os.environ.items():
            hit = _deprecated_variable(name)
            if hit is not None:
                found[hit[0].lower()] = value
        return found


class _TomlSource(TomlConfigSettingsSource):
    """The TOML file, its deprecated flat keys moved to their sections."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        return nest_flat_names(super()._read_file(file_path))


# --- messages ------------------------------------------------------------------------------------


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One problem per ``RAPPORT_*`` variable that names no setting, with the closest setting's name.

    Parameters
    ----------
    environ
        The environment (``os.environ``).

    Returns
    -------
    list of str
        ``"RAPPORT_CHURN_HORIZON: not a setting; did you mean RAPPORT_CHURN__HORIZON_DAYS?"`` per
        unknown variable, sorted by name.
    """
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES or _deprecated_variable(name):
            continue
        parts = upper[len(ENV_PREFIX):].lower().split("__")
        found, info = _field(parts)
        rest = parts[len(found):]
        if info is not None and (not rest or (len(rest) == 1 and _is_mapping(info))):
            continue  # a setting, a section as JSON, or FIELD__KEY: one key of a mapping
        problems.append(f"{name}: not a setting{_suggestion(upper[len(ENV_PREFIX):], as_variable=True)}")
    return problems


def _is_mapping(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) is dict


def _suggestion(name: str, *, as_variable: bool) -> str:
    """``; did you mean X?`` with the closest setting, as a variable or as a dotted TOML key."""
    paths = {path: path for path, _ in _leaves(Settings)}
    keys: dict[str, tuple[str, ...]] = {"_".join(path): path for path in paths}
    keys.update({"__".join(path): path for path in paths})
    keys.update(flat_names())
    close = difflib.get_close_matches(name.lower(), list(keys), n=1, cutoff=0.6)
    if not close:
        return " (rapport config lists the settings)"
    path = keys[close[0]]
    return f"; did you mean {variable(path) if as_variable else '.'.join(path)}?"


def _is_secret(path: Sequence[str]) -> bool:
    info = _field(path)[1]
    return info is not None and "SecretStr" in str(info.annotation)


def _origin(path: Sequence[str], overrides: Mapping[str, Any]) -> str:
    """Where a setting's value came from, in precedence order: argument, variable, TOML file."""
    dotted = ".".join(path)
    flat = next((old for old, target in flat_names().items() if target == tuple(path)), None)
    if path and (path[0] in overrides or flat in overrides):
        return f"{flat if flat in overrides else dotted} (argument)"
    names = [variable(path[:i]) for i in range(len(path), 0, -1)]
    if flat is not None:
        names.append(ENV_PREFIX + flat.upper())
    for wanted in names:
        for name in sorted(os.environ):
            upper = name.upper()
            if upper == wanted or upper.startswith(wanted + "__"):
                return name
    config = _config_file()
    if config is None:
        return dotted
    return f"{config}: {flat if flat is not None and flat in _read_toml(config) else dotted}"


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
        if error.get("type") == "extra_forbidden" and variable([str(part) for part in loc]) in map(str.upper, os.environ):
            continue  # an unknown variable: unknown_variables named it with the closest setting
        path, info = _field(loc)
        if info is not None and len(loc) > len(path) and _is_union(info):
            error = {**error, "loc": (*path, *loc[len(path) + 1:])}
        where, expected, got = _describe(error, overrides)
        merged.setdefault((where, got), []).append(expected)
    return [f"{where}: {' or '.join(dict.fromkeys(e.removeprefix('expected ') if i else e for i, e in enumerate(expected)))}"
            + (f", got {got}" if got else "") for (where, got), expected in merged.items()]


def _is_union(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) in (typing.Union, types.UnionType)


def _describe(error: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[str, str, str]:
    """(where the value came from, what was expected, the value shown or "")."""
    loc = [part for part in error.get("loc", ())]
    path, _ = _field(loc)
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind == "extra_forbidden":
        # An unknown key's value is never shown: it may be a secret under a misspelt name.
        key = ".".join(str(part) for part in loc)
        config = _config_file()
        where = f"{key} (argument)" if loc and loc[0] in overrides or config is None else f"{config}: {key}"
        return where, f"not a setting{_suggestion(key.replace('.', '_'), as_variable=False)}", ""
    where = _origin(path, overrides) + "".join(f"[{part}]" for part in loc[len(path):])
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
    if _is_secret(path):
        return where, f"{expected} (the value is secret: not shown)", ""
    if "input" in error and kind not in ("value_error", "missing") and not isinstance(error["input"], Mapping | list):
        shown = mask_secrets(repr(error["input"]))
        return where, expected, shown[:60]
    return where, expected, ""


def _json_example(path: Sequence[str]) -> str:
    info = _field(path)[1]
    annotation = str(info.annotation) if info is not None else ""
    if annotation.startswith("dict"):
        return "{\"EUR\": 0.85}" if path[-1] == "currency_rates" else "{\"als\": 30}"
    return "[\"a\", \"b\"]"
