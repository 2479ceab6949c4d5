"""The model card: everything a store entry records, written by training and import, read by serving.

One typed model, so a renamed or missing key fails loudly at the writer or the reader instead of
silently falling back to a default. Entries written before the card existed (no `schema_version`)
are read through `ModelCard.from_metadata`, which fills what they lack. Schema 2 adds `calibration`
(the temperature and the out-of-distribution threshold); older cards have none and serve uncalibrated.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 2

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
INPUT_SHAPE: list[int] = [32, 32, 3]

ModelFormat = Literal["keras", "tf-keras-h5", "tf-keras-savedmodel"]
# In-distribution scores computable from a model's logits or penultimate features (contract/calibration.py);
# higher means more like the training data.
ScoreName = Literal["max_probability", "margin", "neg_entropy", "energy", "logit_energy", "feature_norm"]
RELIABILITY_PLOT = "reliability.png"
InputScaling = Literal["uint8", "0-1", "-1-1"]

# The file (or folder) inside the store entry for each format; "keras" is Keras 3, the others tf-keras.
FORMAT_FILES: dict[str, str] = {
    "keras": "model.keras",
    "tf-keras-h5": "model.h5",
    "tf-keras-savedmodel": "saved_model",
}
# How the stored network expects its input, as (scale, offset) applied to uint8 pixels.
INPUT_SCALINGS: dict[str, tuple[float, float]] = {
    "uint8": (1.0, 0.0),
    "0-1": (1 / 255.0, 0.0),
    "-1-1": (1 / 127.5, -1.0),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metrics(Strict):
    """Test metrics (with test-time augmentation where the card says so) and training facts."""

    test_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy_single_view: float | None = Field(None, description="one view per image, no TTA")
    train_accuracy: float | None = None
    train_loss: float | None = None
    best_val_accuracy: float | None = None
    epochs_run: int | None = None


class ClassScores(Strict):
    precision: float
    recall: float
    f1: float
    support: int


class DataInfo(Strict):
    source: str
    train_size: int
    val_size: int
    test_size: int


class CalibrationTest(Strict):
    """Calibration measured on the test split: expected calibration error (15 equal-width bins) and
    negative log-likelihood before and after the temperature, and the share of test images flagged."""

    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    flag_rate: float
    size: int = Field(ge=0)


class Calibration(Strict):
    """One temperature fitted on the validation split (minimum NLL), and the out-of-distribution rule:
    an image is in distribution when its `score` is at least `threshold`."""

    temperature: float = Field(gt=0)
    score: ScoreName
    threshold: float
    flag_rate: float = Field(ge=0, le=1, description="requested share of in-distribution validation images flagged")
    val_flag_rate: float = Field(ge=0, le=1, description="share actually flagged on the validation split")
    val_size: int = Field(ge=0)
    test: CalibrationTest | None = None


class ModelCard(Strict):
    """What a stored CIFAR-10 model is, how to feed it, and how it was made."""

    schema_version: int = SCHEMA_VERSION
    format: ModelFormat = "keras"
    model_file: str = Field("", description="file or folder inside the store entry (set from the format)")
    input_shape: list[int] = Field(default_factory=lambda: list(INPUT_SHAPE))
    input_dtype: Literal["uint8"] = "uint8"
    input_scaling: InputScaling = Field("uint8", description="uint8: the network scales its input itself")
    class_names: list[str] = Field(min_length=2)
    architecture: str
    parameters: int = Field(ge=0)
    preprocessing: str
    flip_tta: bool = False
    translate_tta: bool = False
    config: dict[str, Any] = Field(default_factory=dict, description="the resolved training config, or import facts")
    optimizer: dict[str, Any] = Field(default_factory=dict, description="the Keras optimizer's own config")
    metrics: Metrics = Field(default_factory=Metrics)
    per_class: dict[str, ClassScores] = Field(default_factory=dict)
    training_time_s: float | None = None
    precision_policy: str | None = None
    distribute: str | None = None
    workers: int | None = Field(None, ge=1, description="processes that trained together: 1 unless multi-worker")
    data: DataInfo | None = None
    run_dir: str | None = None
    framework_versions: dict[str, str] = Field(default_factory=dict)
    trusted_code: bool = Field(False, description="imported with --trust-model-code: loading it may run its code")
    plots: list[str] = Field(default_factory=list, description="PNG files stored in the entry beside the model")
    calibration: Calibration | None = Field(None, description="None: uncalibrated (every card before schema 2)")

    @model_validator(mode="after")
    def _model_file_follows_format(self) -> ModelCard:
        if not self.model_file:
            self.model_file = FORMAT_FILES[self.format]
        return self

    @property
    def needs_trust(self) -> bool:
        """Loading this entry could run code from the model file: only Keras 3 files load in safe mode."""
        return self.trusted_code or self.format != "keras"

    def to_metadata(self) -> dict[str, Any]:
        """JSON-safe metadata for `bentoml.models.create` (which accepts no None values)."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ModelCard:
        """Read a store entry's metadata; entries written before schema 1 are upgraded on the fly."""
        values = dict(metadata)
        if "schema_version" not in values:
            values = upgrade_unversioned(values)
        return cls.model_validate(values)


def upgrade_unversioned(values: dict[str, Any]) -> dict[str, Any]:
    """Entries stored before the card (schema 0): same keys, but some optional or shaped differently."""
    values["schema_version"] = 0
    values.setdefault("format", "keras")
    values.setdefault("class_names", CIFAR10_CLASSES)
    values.setdefault("architecture", "unknown")
    values.setdefault("parameters", 0)
    values.setdefault("preprocessing", "")
    if not values.get("data"):  # imports without test data stored {}
        values.pop("data", None)
    values["framework_versions"] = {k: str(v) for k, v in values.get("framework_versions", {}).items()}
    return values
