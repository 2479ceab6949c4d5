"""What the service answers with; shared by the clients, so no tensorflow or bentoml imports here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

TOP_K_MAX = 10


class Prediction(BaseModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class Classification(BaseModel):
    """One image's answer: the best class, its probability, the k best, and the model that answered."""

    label: str
    confidence: float = Field(ge=0.0, le=1.0)
    top_k: list[Prediction]
    model: str = Field(description="name:version of the model in the BentoML store")


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(description="most images in one model call")
    max_latency_ms: int = Field(description="longest wait to fill a batch")
    max_batch_files: int = Field(description="most files in one /classify_batch request")
    workers: int


class Limits(BaseModel):
    max_body_bytes: int
    max_image_pixels: int


class ModelMetadata(BaseModel):
    """Everything needed to know which model answers and how it was trained."""

    tag: str
    name: str
    version: str
    creation_time: datetime
    architecture: str | None = None
    parameters: int | None = None
    class_names: list[str]
    input_shape: list[int]
    input_dtype: str
    preprocessing: str | None = None
    input_scaling: str | None = None
    flip_tta: bool = False
    translate_tta: bool = False
    config: dict[str, Any] = Field(default_factory=dict, description="the full training config")
    metrics: dict[str, Any] = Field(default_factory=dict, description="test accuracy and others")
    per_class: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="test precision, recall, f1 and support of each class"
    )
    plots: dict[str, str] = Field(
        default_factory=dict, description="the run's plots stored with the model (file -> URL on this server)"
    )
    training_time_s: float | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    framework_versions: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    backend: str = Field("tensorflow", description="the Keras backend that runs the model: tensorflow or jax")
    device: str = Field(description="where inference runs, e.g. 'GPU: NVIDIA H100' or 'CPU: ...'")
    device_type: str = Field(description="GPU or CPU")
    batching: BatchingSettings
    limits: Limits


class ModelState(BaseModel):
    """One entry of GET /v2/repository/index, and the answer of a load or unload."""

    name: str
    version: str | None = None
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx answer: one line saying what was wrong (and for a batch, which file)."""

    error: str
    index: int | None = None
