"""The registered model, as MLflow's "models from code": the bundle's router behind pyfunc.

MLflow copies this file into every registered version and runs it on load (no pickle), so
``mlflow.pyfunc.load_model("models:/edgeroute@champion").predict(["..."])`` routes texts
exactly as the service does. It imports only the runtime, MLflow and pandas.

The serve config's sections (``cloud``, ``privacy``, ``breaker``, ``min_confidence``) come from
MLflow's ``model_config`` at load: ``mlflow.pyfunc.load_model(uri, model_config={"cloud":
{"backend": "openai", "url": ..., "model": ...}})`` escalates to an LLM (a section given
replaces that section's defaults).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from edgeroute.bundle import edge_cloud_router, load_bundle
from edgeroute.cloud import CircuitBreaker
from edgeroute.config import ServeConfig, validate

BUNDLE_ARTIFACT = "bundle"
OUTPUT_COLUMNS = ("label", "confidence", "route", "reason", "cost")
# The serve-config fields a load may set (MLflow accepts only the model_config keys logged with
# the model), at their defaults.
MODEL_CONFIG = {
    key: value
    for key, value in ServeConfig().model_dump(mode="json").items()
    if key in ("cloud", "privacy", "breaker", "min_confidence")
}


def decisions_frame(router, texts: list[str]) -> pd.DataFrame:
    """The routed decisions for ``texts``, one row each, in the model's output columns."""
    return pd.DataFrame([{k: getattr(d, k) for k in OUTPUT_COLUMNS} for d in router.route(texts)])


class EdgeRouterModel(mlflow.pyfunc.PythonModel):
    """Texts (a ``text`` column) in; label, confidence, route, reason and cost out."""

    def load_context(self, context) -> None:
        serving = validate(ServeConfig, dict(context.model_config or {}), "model_config")
        bundle = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))
        self.router = edge_cloud_router(
            bundle, serving, CircuitBreaker(serving.breaker.failures, serving.breaker.reset_s)
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return decisions_frame(self.router, [str(t) for t in model_input["text"]])


mlflow.models.set_model(EdgeRouterModel())
