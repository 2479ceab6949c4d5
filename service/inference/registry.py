"""The models one worker serves, each with its own micro-batcher, swapped without downtime.

A swap loads and warms the new version beside the old one, then replaces it in one assignment on
the event loop: a request picks its model and queues its images in one step, so every request runs
whole on one version, and the old version's batcher drains what was queued before it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.calibration import Calibrated, calibrated_predict, unpacked
from contract.card import ModelCard
from contract.predictor import Predictor, UntrustedModel, load_predictor, short_reason
from service.inference.batching import MicroBatcher
from service.errors import ModelError

logger = logging.getLogger("bentoml.service.cifar10")
CLOSE_OLD_AFTER_S = 30.0  # longest drain of a replaced version's queue


@dataclass
class ServedModel:
    predictor: Predictor
    batcher: MicroBatcher  # runs the forward pass with the card's calibration (contract.calibration)
    ood_threshold: float | None = None  # CIFAR10_OOD_THRESHOLD: overrides the card's threshold

    @property
    def calibrated(self) -> bool:
        return self.predictor.card.calibration is not None

    @property
    def threshold(self) -> float | None:
        """The in-distribution threshold this server applies (None: uncalibrated, no flag)."""
        calibration = self.predictor.card.calibration
        if calibration is None:
            return None
        return calibration.threshold if self.ood_threshold is None else self.ood_threshold

    @property
    def creation_time(self) -> Any:
        return self.predictor.creation_time

    @property
    def tag(self) -> str:
        return self.predictor.tag

    @property
    def name(self) -> str:
        return self.tag.split(":", 1)[0]

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]

    async def predict(self, images: np.ndarray) -> Calibrated:
        """Calibrated probabilities, and the in-distribution scores and flags if the card has a calibration."""
        return unpacked(await self.batcher.predict(images), self.calibrated)


class ModelRegistry:
    """Store name -> the version served now; the first model given is the default."""

    def __init__(self, max_batch_size: int, max_latency_ms: int, trust_model_code: bool,
                 observe_batch: Callable[[int], Any] | None = None, ood_threshold: float | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.trust_model_code = trust_model_code
        self.ood_threshold = ood_threshold
        self.observe_batch = observe_batch
        self.models: dict[str, ServedModel] = {}
        self.default_name: str | None = None
        self.unloaded: set[str] = set()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="cifar10-model-load")
        self._swap_lock: asyncio.Lock | None = None

    def load(self, tag: str, entry: tuple[Any, ModelCard] | None = None) -> ServedModel:
        """Load a store entry (its `entry` and card if already read), trace and warm it at every batch
        size, give it a batcher that also applies the card's calibration (blocking)."""
        predictor = load_predictor(tag, self.trust_model_code, entry)
        predict = calibrated_predict(predictor.logits, predictor.card.calibration, self.ood_threshold)
        for size in range(1, self.max_batch_size + 1):  # no real request pays for tracing
            predict(np.zeros((size, 32, 32, 3), dtype=np.uint8))
        batcher = MicroBatcher(predict, self.max_batch_size, self.max_latency_ms, self.observe_batch)
        return ServedModel(predictor, batcher, self.ood_threshold)

    def add(self, served: ServedModel) -> None:
        self.models[served.name] = served
        self.unloaded.discard(served.name)
        self.default_name = self.default_name or served.name

    def get(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The served model of that name (default: the first), at that version if one is given."""
        name = name or self.default_name
        served = self.models.get(name or "")
        if served is None:
            state = "was unloaded" if name in self.unloaded else "is not served here"
            raise ModelError(f"model {name!r} {state}; served: {', '.join(self.models) or 'none'}")
        if version is not None and version != served.version:
            raise ModelError(f"version {version!r} of model {name!r} is not loaded; serving {served.version!r}")
        return served

    async def swap(self, name: str, version: str | None = None) -> ServedModel:
        """Load `name:version` (newest if None) beside the running one, then switch to it atomically."""
        tag = checked_tag(name, version)
        self._swap_lock = self._swap_lock or asyncio.Lock()
        async with self._swap_lock:  # one load at a time per worker
            loop = asyncio.get_running_loop()
            served = await loop.run_in_executor(self._loader, self.load_for_swap, tag)
            old = self.models.get(name)
            self.add(served)
        if old is not None and old.tag != served.tag:
            loop.create_task(old.batcher.close(timeout=CLOSE_OLD_AFTER_S))
        logger.info("now serving %s (was %s)", served.tag, old.tag if old else "none")
        return served

    def load_for_swap(self, tag: str) -> ServedModel:
        """`load`, with every failure a `ModelError`: a failed load leaves the running version serving."""
        import bentoml

        try:
            return self.load(tag)
        except bentoml.exceptions.NotFound:
            raise ModelError(f"model {tag!r} is not in the model store") from None
        except UntrustedModel as error:
            raise ModelError(str(error), 400) from None
        except Exception as error:  # a broken entry: the file's fault, not the server's
            logger.warning("loading %s failed: %s", tag, short_reason(error))
            raise ModelError(f"model {tag!r} could not be loaded: {short_reason(error)}", 400) from None

    async def unload(self, name: str) -> None:
        served = self.get(name)
        del self.models[name]
        self.unloaded.add(name)
        await served.batcher.close(timeout=CLOSE_OLD_AFTER_S)

    async def close(self, timeout: float) -> None:
        await asyncio.gather(*(served.batcher.close(timeout=timeout) for served in self.models.values()))
        self._loader.shutdown(wait=False, cancel_futures=True)


def checked_tag(name: str, version: str | None) -> str:
    """`name:version` (newest if None) as a valid store tag; anything else (`../..`) is a 400 here,
    before the store is asked."""
    import bentoml

    try:
        return str(bentoml.Tag(name, version or "latest"))
    except ValueError as error:
        raise ModelError(str(error), 400) from None
