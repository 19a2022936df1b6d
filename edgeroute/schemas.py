"""The HTTP API's bodies (`edgeroute.server`): requests, responses and problems, as the
OpenAPI description declares them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClassifyRequest(BaseModel):
    """One text (``text``) or a batch (``texts``)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (one message) or 'texts' (a batch)")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class Result(BaseModel):
    request_id: str
    model_version: str = Field(description="the model that answered: the champion's, or the canary's")
    label: str
    confidence: float | None
    route: str
    reason: str
    cost: float
    complexity: float


class ClassifyResponse(BaseModel):
    model_version: str = Field(description="the champion's version")
    results: list[Result]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=200)


class FeedbackResponse(BaseModel):
    request_id: str
    source: str = Field(description="the source it is recorded under: its key's name, or the client address")
    correct: bool | None = Field(description="whether the answer was right; None once it left the window")
    recorded: bool = Field(description="False when the same label was already recorded")


class WindowMetrics(BaseModel):
    requests: int
    edge_share: float | None
    cost_per_query: float | None
    p95_latency_ms: float | None
    avg_complexity: float | None
    accuracy: float | None
    labelled: int
    feedback_sources: dict[str, int] = Field(description="labelled requests by feedback source")


class Drift(BaseModel):
    method: str = Field(description="psi: the population stability index of each feature")
    features: dict[str, float]
    max_psi: float
    threshold: float
    samples: int


class CostEstimate(BaseModel):
    requests_per_day: float
    monthly_cost: float
    monthly_cloud_only_cost: float


class Canary(BaseModel):
    model_version: str
    share: float


class HealthReport(BaseModel):
    score: int
    status: str
    window_s: float
    metrics: WindowMetrics
    versions: dict[str, WindowMetrics] = Field(
        description="the window's metrics of each version that answered"
    )
    drift: Drift | None = Field(description="None without a reference profile or enough requests")
    alerts: list[str]
    trends: dict[str, str]
    recommendations: list[str]
    cost_estimate: CostEstimate
    thresholds: dict[str, float]
    role: str
    model_version: str = Field(description="the champion's version")
    canary: Canary | None


class AuditState(BaseModel):
    state: str = Field(
        description="written; spooling (a Postgres trail away, rows waiting in the local spool); "
        "full (the spool at its bound, refusing requests); unavailable (a SQLite trail locked or full)"
    )
    spooled_rows: int
    spooled_bytes: int
    dropped_rows: int = Field(description="spooled rows dropped past the bound (audit.on_full=drop_oldest)")


class Readiness(BaseModel):
    status: str
    role: str
    model_version: str = Field(description="the champion's version")
    canary: Canary | None
    cloud: str | None = Field(description="the cloud circuit's state; None without a cloud tier")
    cloud_constraint: str | None = Field(
        None, description="the form that keeps an LLM cloud's answers to the labels, once probed"
    )
    audit: AuditState


class Problem(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    detail: str | list[FieldProblem]
