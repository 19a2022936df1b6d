"""Router calibration: temperature, each target mode met on held-out data, the artefacts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edgeroute.model import softmax
from edgeroute.privacy import mask
from edgeroute.router import Features, RouterSettings
from tasks.calibrate import (
    CURVE_COLUMNS,
    THRESHOLDS,
    binomial_p_value,
    choose,
    clopper_pearson_lower,
    evaluate,
    expected_calibration_error,
    fit_temperature,
    fixed_sequence,
    sweep,
)
from tasks.support.config import RouterConfig


def overconfident_logits(rng: np.random.Generator, n: int, temperature: float):
    """Logits sharper than the truth by ``temperature``, and labels drawn from the truth."""
    logits = rng.normal(0, 3, size=(n, 3))
    truth = softmax(logits, temperature)
    labels = np.array([rng.choice(3, p=p) for p in truth])
    return logits, labels


def test_the_fitted_temperature_recovers_the_true_one_and_lowers_ece():
    logits, labels = overconfident_logits(np.random.default_rng(0), 4000, temperature=2.5)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.1)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, temperature), labels)
    assert after < before / 2


def test_clopper_pearson_bounds():
    # All n right: the bound solves p^n = delta.
    assert clopper_pearson_lower(np.array([20]), np.array([20]), 0.05)[0] == pytest.approx(0.05 ** (1 / 20))
    assert clopper_pearson_lower(np.array([0]), np.array([10]), 0.05)[0] == 0
    lower = clopper_pearson_lower(np.array([90, 900]), np.array([100, 1000]), 0.05)
    assert lower[0] < lower[1] < 0.9


def synthetic_routing(rng: np.random.Generator, n: int):
    """Edge confidence that means what it says, a cloud that is right 93 % of the time."""
    confidence = rng.beta(5, 1, n) * 0.67 + 0.33
    edge_correct = rng.random(n) < confidence
    cloud_correct = rng.random(n) < 0.93
    features = Features(
        label=np.zeros(n, dtype=int),
        confidence=confidence,
        complexity=rng.random(n) * 0.8,  # a few queries are complex whatever the threshold
        unfamiliar_share=np.zeros(n),
    )
    return features, edge_correct, cloud_correct


def held_out(features, edge_correct, cloud_correct, threshold: float) -> dict[str, float]:
    on_edge = (features.confidence >= threshold) & (features.complexity <= 0.75)
    return {
        "edge_share": on_edge.mean(),
        "system_accuracy": np.where(on_edge, edge_correct, cloud_correct).mean(),
        "edge_accuracy": edge_correct[on_edge].mean(),
        "cloud_accuracy": cloud_correct.mean(),
    }


@pytest.mark.parametrize(
    ("target", "met"),
    [
        (
            {"target": "max_edge_share_within", "tolerance": 0.01},
            lambda r: r["system_accuracy"] >= r["cloud_accuracy"] - 0.01,
        ),
        ({"target": "edge_share", "edge_share": 0.6}, lambda r: abs(r["edge_share"] - 0.6) < 0.02),
        (
            {"target": "edge_accuracy", "edge_accuracy": 0.9, "delta": 0.05},
            lambda r: r["edge_accuracy"] >= 0.9,
        ),
    ],
    ids=lambda v: v["target"] if isinstance(v, dict) else "",
)
def test_each_target_is_met_on_held_out_data(target, met):
    rng = np.random.default_rng(7)
    config = RouterConfig(**target)
    calibration = synthetic_routing(rng, 5000)
    curve = sweep(*calibration, RouterSettings(), config)
    chosen, feasible = choose(curve, config)
    assert feasible
    assert 0.2 < chosen["edge_share"] < 0.95, "a target that is neither trivial nor impossible"
    assert met(held_out(*synthetic_routing(rng, 20000), chosen["min_confidence"]))


def test_fixed_sequence_testing_stops_at_the_first_hypothesis_it_cannot_reject():
    assert fixed_sequence(np.array([0.001, 0.04, 0.2, 0.001]), 0.05) == 1
    assert fixed_sequence(np.array([0.001, 0.001]), 0.05) == 1
    assert fixed_sequence(np.array([0.3, 0.001]), 0.05) is None


def test_the_binomial_p_value_is_the_chance_of_so_few_harms_at_the_tolerance():
    # No harm in n queries: the chance of that when the risk is the tolerance is (1 - tol)^n.
    assert binomial_p_value(np.array([0]), 300, 0.01)[0] == pytest.approx(0.99**300)
    p = binomial_p_value(np.array([0, 1, 3, 10]), 500, 0.01)
    assert np.all(np.diff(p) > 0) and p[-1] > 0.5


def _true_harm(features, threshold: float, cloud_accuracy: float) -> float:
    """The expected share answered on the edge and wrong where the cloud is right."""
    on_edge = (features.confidence >= threshold) & (features.complexity <= 0.75)
    return float(np.mean(on_edge * (1 - features.confidence) * cloud_accuracy))


def test_learn_then_test_holds_its_guarantee_over_the_thresholds_it_searches():
    """Across many calibration splits the chosen threshold's true risk exceeds the tolerance in at
    most about ``delta`` of them, although each split's search looks at every grid threshold."""
    rng = np.random.default_rng(11)
    config = RouterConfig(tolerance=0.02, delta=0.1)
    population = synthetic_routing(rng, 200_000)[0]
    violations, shares = 0, []
    draws = 150
    for _ in range(draws):
        calibration = synthetic_routing(rng, 600)
        chosen, met = choose(sweep(*calibration, RouterSettings(), config), config)
        assert met
        violations += _true_harm(population, chosen["min_confidence"], 0.93) > config.tolerance
        shares.append(chosen["edge_share"])
    # Binomial(150, 0.1) exceeds 25 with probability under 1 %; the search is not trivial either.
    assert violations <= 25
    assert 0.3 < np.mean(shares) < 0.95


def test_the_grid_is_fixed_before_the_data_and_fine_near_one():
    assert THRESHOLDS[0] == 0 and THRESHOLDS[-1] == 1 and np.all(np.diff(THRESHOLDS) > 0)
    assert (THRESHOLDS > 0.999).sum() >= 10


def test_the_curve_is_monotone_and_costs_follow_the_edge_share():
    calibration = synthetic_routing(np.random.default_rng(1), 2000)
    settings = RouterSettings()
    curve = sweep(*calibration, settings, RouterConfig())
    assert list(curve.columns) == list(CURVE_COLUMNS)
    assert curve["edge_share"].is_monotonic_decreasing
    expected = settings.costs.edge + (1 - curve["edge_share"]) * settings.costs.cloud
    np.testing.assert_allclose(curve["cost_per_query"], expected)


def test_an_impossible_target_sends_what_it_can_to_the_cloud():
    calibration = synthetic_routing(np.random.default_rng(2), 1000)
    config = RouterConfig(target="edge_accuracy", edge_accuracy=0.999)
    curve = sweep(*calibration, RouterSettings(), config)
    chosen, feasible = choose(curve, config)
    assert not feasible
    assert chosen["min_confidence"] == 1.0 and chosen["edge_share"] == curve["edge_share"].min()


def test_calibration_writes_router_json_and_the_curve(tiny_calibration):
    directory = tiny_calibration.directory
    assert RouterSettings.load(tiny_calibration.router_json) == tiny_calibration.settings
    curve = pd.read_csv(directory / "router_curve.csv")
    assert list(curve.columns) == list(CURVE_COLUMNS) and len(curve) > 10
    assert (directory / "router_curve.png").stat().st_size > 10_000
    metrics = tiny_calibration.metrics
    assert metrics["temperature"] > 0 and metrics["nll_after"] <= metrics["nll_before"]
    assert tiny_calibration.settings.calibration["target"] == "max_edge_share_within"
    # The chosen point honours the target on the calibration split itself.
    assert metrics["calibration_system_accuracy"] >= metrics["calibration_cloud_only_accuracy"] - 0.01


def test_the_calibrated_router_is_evaluated_against_both_tiers(tiny_bundle, tiny_prepared):
    from edgeroute.bundle import load_bundle

    router = load_bundle(tiny_bundle).router()
    test = tiny_prepared[1].frame("test")
    report = evaluate(router, test)
    costs = router.settings.costs
    assert report["queries"] == len(test)
    assert report["cost_per_query"] == pytest.approx(costs.edge + (1 - report["edge_share"]) * costs.cloud)
    assert report["savings_vs_cloud_only"] == pytest.approx(1 - report["cost_per_query"] / costs.cloud)
    assert sum(v for k, v in report.items() if k.startswith("reason.")) == len(test)
    assert 0 <= report["edge_only_accuracy"] <= 1 and 0 <= report["cloud_only_accuracy"] <= 1


def test_few_shot_examples_are_masked_training_messages_fixed_by_the_seed_one_label_in_turn(tiny_prepared):
    from tasks.calibrate import few_shot_examples

    config, data = tiny_prepared
    llm = config.model_copy(
        update={"cloud": config.cloud.model_copy(update={"backend": "openai", "examples_per_label": 2})}
    )
    examples = few_shot_examples(llm, data)
    assert [label for _, label in examples] == sorted(data.labels) * 2
    train = data.frame("train")
    masked = {mask(text): label for text, label in zip(train["text"], train["label"], strict=True)}
    assert all(masked.get(text) == label for text, label in examples)
    assert few_shot_examples(llm, data) == examples
    reseeded = llm.model_copy(update={"seed": llm.seed + 1})
    assert few_shot_examples(reseeded, data) != examples
    assert few_shot_examples(config, data) == []  # the local cloud is no LLM: no examples
