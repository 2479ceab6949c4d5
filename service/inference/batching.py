"""An asyncio micro-batcher: concurrent requests share one model call.

BentoML batches only requests that arrive at a batchable HTTP endpoint; a same-process call
bypasses its dispatcher, so each worker runs this small batcher in front of the model instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import Unavailable

logger = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


class BatcherClosed(Unavailable):
    """predict() after close() began: the worker is shutting down (503, retry elsewhere)."""


_STOP = object()  # queued by close(): everything queued before it still runs


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future[np.ndarray] = field(repr=False)


def power_of_two_sizes(maximum: int) -> list[int]:
    """1, 2, 4, ... up to maximum, and maximum itself: the batch sizes warm-up and buckets use."""
    sizes = [1]
    while sizes[-1] * 2 < maximum:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != maximum:
        sizes.append(maximum)
    return sizes


class MicroBatcher:
    """Queue of (images, future); one consumer task groups them into calls of at most max_batch_size.

    The model runs in one dedicated thread so the event loop keeps accepting and decoding requests.
    `observe_batch(n)` is called with each model-call batch size (for the Prometheus histogram).
    """

    def __init__(
        self,
        predict: Predict,
        max_batch_size: int,
        max_latency_ms: float,
        observe_batch: Callable[[int], Any] | None = None,
    ) -> None:
        self.predict_fn = predict
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000.0
        self.observe_batch = observe_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifar10-inference")
        self._queue: asyncio.Queue[Any] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._closing = False

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """The model's output rows for images (n, 32, 32, 3); large requests are split into full batches."""
        if self._closing:
            raise BatcherClosed("the server is shutting down; retry on another replica")
        if self._consumer is None or self._consumer.done():
            self._queue = asyncio.Queue()
            self._consumer = asyncio.get_running_loop().create_task(self._consume())
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(images), self.max_batch_size):
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait(_Item(images[start : start + self.max_batch_size], future))
            futures.append(future)
        parts = await asyncio.gather(*futures)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _consume(self) -> None:
        assert self._queue is not None
        queue = self._queue
        carry: _Item | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else await queue.get()
            carry = None
            if first is _STOP:
                return
            batch, count = [first], len(first.images)
            deadline = asyncio.get_running_loop().time() + self.max_latency_s
            while count < self.max_batch_size:
                try:
                    item = queue.get_nowait()  # whatever is already waiting joins at once
                except asyncio.QueueEmpty:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is _STOP:  # run what was gathered, then end
                    stop = True
                    break
                if count + len(item.images) > self.max_batch_size:
                    carry = item  # starts the next batch
                    break
                batch.append(item)
                count += len(item.images)
            await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # drop cancelled requests
        if not live:
            return
        images = live[0].images if len(live) == 1 else np.concatenate([i.images for i in live])
        try:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, self.predict_fn, images)
            if self.observe_batch is not None:
                self.observe_batch(len(images))
        except Exception as exc:  # every waiting request gets the error, the consumer keeps going
            logger.exception("inference failed for a batch of %d images", len(images))
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in live:
            end = start + len(item.images)
            if not item.future.done():
                item.future.set_result(outputs[start:end])
            start = end

    async def close(self, timeout: float = 30.0) -> None:
        """Drain, then stop (server shutdown): new calls get BatcherClosed, queued ones still run.

        Requests waiting after `timeout` seconds get BatcherClosed instead of hanging.
        """
        self._closing = True
        consumer = self._consumer
        if consumer is not None and not consumer.done():
            assert self._queue is not None
            self._queue.put_nowait(_STOP)
            try:
                await asyncio.wait_for(asyncio.shield(consumer), timeout)
            except TimeoutError:
                logger.warning("micro-batcher did not drain in %.0f s; failing what is left", timeout)
                consumer.cancel()
            except Exception:
                pass
            self._fail_pending()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _fail_pending(self) -> None:
        if self._queue is None:
            return
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _STOP and not item.future.done():
                item.future.set_exception(BatcherClosed("the server shut down before this request ran"))
