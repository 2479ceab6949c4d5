"""What the service answers with; shared by the clients, so no tensorflow or bentoml imports here
(`contract.card` is plain pydantic)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from contract.card import ModelCard

TOP_K_MAX = 10


class Prediction(BaseModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class Classification(BaseModel):
    """One image's answer: the best class, its calibrated probability, the k best, the model that answered,
    and whether the image looks like the model's training data (None: the model is uncalibrated)."""

    label: str
    confidence: float = Field(ge=0.0, le=1.0)
    top_k: list[Prediction]
    model: str = Field(description="name:version of the model in the BentoML store")
    in_distribution: bool | None = Field(
        None, description="false: probably none of the classes (score under the threshold); null: uncalibrated model"
    )
    in_distribution_score: float | None = Field(
        None, description="the card's out-of-distribution score (higher: more like the training data)"
    )


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(description="most images in one model call")
    max_latency_ms: int = Field(description="longest wait to fill a batch")
    max_batch_files: int = Field(description="most files in one /classify_batch request")
    workers: int


class Limits(BaseModel):
    max_body_bytes: int
    max_image_pixels: int
    large_image_pixels: int | None = Field(None, description="images over this decode one at a time")
    max_large_images: int | None = Field(None, description="large images a worker holds at once")
    max_inflight_bytes: int | None = Field(None, description="request bodies a worker holds at once")
    max_inflight_images: int | None = Field(None, description="images a worker holds at once")


class ModelMetadata(ModelCard):
    """GET /metadata: the served model's card, every field as stored, and what this server adds: which
    entry it is, where its plots are on this server, and how it is served. Clients parse this type."""

    model_config = ConfigDict(extra="ignore")  # a client reads a newer server's answer
    tag: str
    name: str
    version: str
    creation_time: datetime
    plots: dict[str, str] = Field(  # type: ignore[assignment]  # the card's file names, as URLs here
        default_factory=dict, description="the run's plots stored with the model (file -> URL on this server)"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    backend: str = Field("tensorflow", description="the Keras backend that runs the model: tensorflow or jax")
    device: str = Field(description="where inference runs, e.g. 'GPU: NVIDIA H100' or 'CPU: ...'")
    device_type: str = Field(description="GPU or CPU")
    batching: BatchingSettings
    limits: Limits
    calibrated: bool = Field(False, description="the card holds a calibration: probabilities are calibrated, "
                             "answers carry in_distribution")
    ood_threshold: float | None = Field(
        None, description="the in-distribution threshold this server applies: CIFAR10_OOD_THRESHOLD, else the card's"
    )


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
