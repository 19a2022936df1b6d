"""The serve config: YAML and `--set`, validated, one default for every user of a setting."""

from __future__ import annotations

import pytest
import yaml

from edgeroute.cloud import CircuitBreaker, HttpCloud
from edgeroute.config import ConfigError, ServeConfig, Thresholds, load_serve_config, to_yaml
from tasks.monitoring import RetrainPolicy


def test_a_file_and_overrides_make_the_config(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(
        yaml.safe_dump({"port": 9000, "limits": {"max_batch": 32}, "monitor": {"min_accuracy": 0.9}})
    )
    config = load_serve_config(path, ["limits.max_batch=16", "cloud.url=http://10.0.0.2:8001"])
    assert (config.port, config.limits.max_batch, config.limits.max_text_chars) == (9000, 16, 4000)
    assert config.monitor.min_accuracy == 0.9 and config.cloud.url == "http://10.0.0.2:8001"
    assert load_serve_config() == ServeConfig()
    (tmp_path / "round.yaml").write_text(to_yaml(config))
    assert load_serve_config(tmp_path / "round.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["role=router"], "role: Input should be 'edge' or 'cloud'"),
        (["batching.workers=0"], "batching.workers: Input should be greater than or equal to 1"),
        (["monitor.min_edge_share=1.5"], "monitor.min_edge_share: Input should be less than or equal to 1"),
        (["limits.colour=red"], "limits.colour: unknown field"),
    ],
)
def test_bad_values_name_the_dotted_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_serve_config(None, overrides)


def test_a_missing_or_non_mapping_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="serve config file not found"):
        load_serve_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="must hold a mapping, not list"):
        load_serve_config(tmp_path / "list.yaml")


def test_the_runtime_and_the_monitor_flow_share_the_defaults():
    config = ServeConfig()
    breaker, cloud = CircuitBreaker(), HttpCloud("http://127.0.0.1:1")
    assert (breaker.failure_threshold, breaker.reset_after_s) == (
        config.breaker.failures,
        config.breaker.reset_s,
    )
    assert (cloud.timeout_s, cloud.max_retries) == (config.cloud.timeout_s, config.cloud.max_retries)
    policy = RetrainPolicy()
    assert (policy.min_accuracy, policy.min_edge_share) == (
        Thresholds().min_accuracy,
        Thresholds().min_edge_share,
    )
    stricter = RetrainPolicy.from_thresholds(Thresholds(min_accuracy=0.95))
    assert stricter.min_accuracy == 0.95
