"""Request and response bodies of the service (serving-only types; the OpenAPI page documents them).

Every request model forbids unknown fields, so a misspelt filter is a 400 that names it instead of
a silently ignored option. Limits (n 1..100, batches up to 1,000 customers, list and string lengths)
keep every request small and cheap to answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from features.schema import KeyType

#: Largest batch of ``customer_scores``.
MAX_BATCH = 1_000
#: Largest list of items or categories in a filter.
MAX_FILTER = 1_000
#: Largest ``recent_items`` list (fold-in of an unknown customer).
MAX_RECENT = 100


def _whole_number(value: Any) -> Any:
    # JSON has one kind of number: 37.0 is the integer 37 (as JSON Schema says), 37.5 and "37" are not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
CustomerId = Annotated[int, Field(ge=0, le=2**62), BeforeValidator(_whole_number)]


class _Request(BaseModel):
    # Strict: a number sent as a string, or a boolean as 0/1, is refused like the OpenAPI document says.
    model_config = ConfigDict(extra="forbid", strict=True)


class RawKey(_Request):
    """A customer key as a channel knows it (account id, e-mail, phone, loyalty card, device id); it is
    hashed with the deployment's salt and looked up in the identity map, never stored or logged."""

    type: KeyType
    value: Annotated[str, StringConstraints(min_length=1, max_length=320)]


class ItemFilters(_Request):
    categories: Annotated[list[Text], Field(max_length=MAX_FILTER)] | None = Field(
        None, description="Only items of these categories (case-insensitive).")
    exclude_categories: Annotated[list[Text], Field(max_length=MAX_FILTER)] | None = Field(
        None, description="No item of these categories.")
    exclude_items: Annotated[list[Text], Field(max_length=MAX_FILTER)] | None = Field(
        None, description="Never these items (e.g. what is in the basket).")


class RecommendRequest(ItemFilters):
    """Either ``customer_id`` or ``key``, the number of items and optional filters."""

    customer_id: CustomerId | None = Field(None, description="Rapport customer id.")
    key: RawKey | None = Field(None, description="A raw customer key, resolved through the identity map.")
    n: WholeNumber = Field(10, ge=1, le=100, description="Number of items (1..100).")
    exclude_purchased: bool = Field(True, description="Leave out what the customer bought (except repurchasable categories).")
    channel: Literal["web", "app", "store", "marketplace"] | None = Field(
        None, description="Channel of the request: chooses the popular list of an unknown customer.")
    country: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None, description="Country of the request: chooses the popular list of an unknown customer.")
    recent_items: Annotated[list[Text], Field(max_length=MAX_RECENT)] | None = Field(
        None, description="Items an unknown customer just viewed or bought: folded into the model.")

    @model_validator(mode="before")
    @classmethod
    def _one_customer(cls, data: Any) -> Any:
        # Exactly one of the two, and not null (the OpenAPI document's oneOf).
        if isinstance(data, dict):
            given = [name for name in ("customer_id", "key") if data.get(name) is not None]
            if len(given) != 1 or any(name in data and data[name] is None for name in ("customer_id", "key")):
                raise ValueError("give exactly one of customer_id or key (not null)")
        return data


class SimilarItemsRequest(ItemFilters):
    item_id: Text = Field(description="The item of the product page.")
    n: WholeNumber = Field(10, ge=1, le=100, description="Number of items (1..100).")


class CustomerScoresRequest(_Request):
    customer_ids: Annotated[list[CustomerId], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description="1 to 1,000 customer ids (duplicates are answered once).")


class EchoRequest(_Request):
    message: Annotated[str, StringConstraints(max_length=200)] = ""


class Metadata(BaseModel):
    """In every answer: which models answered and the date of the customer snapshot."""

    model_versions: dict[str, str]
    snapshot_date: str


class RecommendedItem(BaseModel):
    rank: int
    item_id: str
    score: float
    source: str = Field(description="repurchase, model or popularity")
    reason: str | None


class RecommendResponse(BaseModel):
    customer_id: int | None = Field(description="The customer the key resolved to; null when unknown.")
    known: bool = Field(description="Whether the recommender knows the customer's history.")
    fallback: bool = Field(description="True when the popular list was served (unknown customer, no usable recent items).")
    items: list[RecommendedItem]
    metadata: Metadata


class SimilarItem(BaseModel):
    rank: int
    item_id: str
    score: float
    source: str = Field(description="co-purchase or model")


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[SimilarItem]
    metadata: Metadata


class CustomerScore(BaseModel):
    """One row of ``rapport score`` (training.scoring.SCORE_COLUMNS); null where a value is empty."""

    customer_id: int
    expected_purchases_30d: float | None
    expected_purchases_90d: float | None
    expected_purchases_365d: float | None
    probability_alive: float | None
    expected_order_value: float | None
    clv: float | None
    clv_lower: float | None
    clv_upper: float | None
    expected_next_order_date: str | None
    value_segment: str | None
    churn_probability: float | None
    churn_horizon_days: int | None = Field(
        None, description="H of the churn probability: the chance of no order in the next H days (null: not known).")
    risk_band: str | None
    percentile: float | None
    reason_1: str | None
    reason_2: str | None
    reason_3: str | None
    clv_model_version: str
    churn_model_version: str
    as_of: str


class CustomerScoresResponse(BaseModel):
    scores: list[CustomerScore]
    metadata: Metadata


class InfoResponse(BaseModel):
    models: dict[str, dict[str, str]]
    snapshot_date: str
    bundle_created: str | None
    counts: dict[str, int]
    process_id: int = Field(description="The worker process that answered (tells the workers apart, e.g. after a "
                                        "restart).")
    metadata: Metadata


class EchoResponse(BaseModel):
    message: str
    metadata: Metadata


class ErrorDetail(BaseModel):
    loc: list[str] = Field(description="The field: its path in the body (or the header), e.g. [\"key\", \"type\"].")
    msg: str = Field(description="What is wrong and what was expected (never the value sent).")
    type: str | None = Field(None, description="The kind of error (pydantic's error type), for a program.")


class ErrorResponse(BaseModel):
    """The body of every answer but a 200: 4xx (the request's fault, ``detail`` names the field) and 5xx."""

    error: str
    detail: list[ErrorDetail] = []
    unknown_customer_ids: list[int] | None = None
    metadata: Metadata | None = None
