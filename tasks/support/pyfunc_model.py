"""The registered model, as MLflow's "models from code": the bundle's router behind pyfunc.

MLflow copies this file into every registered version and runs it on load (no pickle), so
``mlflow.pyfunc.load_model("models:/edgeroute@champion").predict(["..."])`` routes texts
exactly as the service does. It imports only the runtime, MLflow and pandas.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from edgeroute.bundle import load_bundle

BUNDLE_ARTIFACT = "bundle"
OUTPUT_COLUMNS = ("label", "confidence", "route", "reason", "cost")


def decisions_frame(router, texts: list[str]) -> pd.DataFrame:
    """The routed decisions for ``texts``, one row each, in the model's output columns."""
    return pd.DataFrame([{k: getattr(d, k) for k in OUTPUT_COLUMNS} for d in router.route(texts)])


class EdgeRouterModel(mlflow.pyfunc.PythonModel):
    """Texts (a ``text`` column) in; label, confidence, route, reason and cost out."""

    def load_context(self, context) -> None:
        self.router = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT])).router()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return decisions_frame(self.router, [str(t) for t in model_input["text"]])


mlflow.models.set_model(EdgeRouterModel())
