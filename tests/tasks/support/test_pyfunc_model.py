"""The registered model's code, loaded as MLflow loads it: from the file, with the bundle artifact."""

from __future__ import annotations

import pandas as pd
from mlflow.pyfunc.model import PythonModelContext

from edgeroute.bundle import load_bundle
from tasks.support import pyfunc_model


def test_the_model_routes_a_text_column_exactly_as_the_bundle_router(tiny_bundle):
    model = pyfunc_model.EdgeRouterModel()
    artifacts = {pyfunc_model.BUNDLE_ARTIFACT: str(tiny_bundle)}
    model.load_context(PythonModelContext(artifacts=artifacts, model_config=pyfunc_model.MODEL_CONFIG))
    texts = ["where is my parcel?", "thank you so much, it works", 42]
    out = model.predict(None, pd.DataFrame({"text": texts}))
    assert list(out.columns) == list(pyfunc_model.OUTPUT_COLUMNS) and len(out) == 3
    expected = load_bundle(tiny_bundle).router().route([str(t) for t in texts])
    assert out["label"].tolist() == [d.label for d in expected]
    assert out["route"].tolist() == [d.route for d in expected]
    assert out["cost"].tolist() == [d.cost for d in expected]
