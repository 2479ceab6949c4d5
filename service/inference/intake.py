"""What one worker takes in: budgets that bound its work, and image files -> one uint8 batch, off the
event loop, with every file's cost known before it is decoded.

A budget (request bytes, images, large images) is taken before the work starts and given back after it;
past a budget a request is refused at once with 503 and `Retry-After` (`Overloaded`), rather than queued
behind work the worker cannot finish soon: a flood costs its senders, not everyone else.

Headers are read first (cheap): a file over the pixel limit, or a bomb, is refused before any pixel is
decoded. Small images (phone JPEGs decode at a reduced draft scale) go to the main decode threads;
large ones to a lane of their own with a bounded number of places, so a flood of large images waits
in its own line, or is refused with a quick 503, and never in front of everyone's small photos.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from contract.images import ImageError, OpenedImage, decode_opened, open_image
from service.errors import RETRY_AFTER_S, Overloaded, RequestError
from service.settings import Settings

Result = TypeVar("Result")


class Budget:
    """A count (bytes, images) that holders take from and give back; thread-safe, never waits."""

    def __init__(self, limit: int, unit: str) -> None:
        self.limit = limit
        self.unit = unit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, amount: int) -> None:
        """Hold `amount`, or raise `Overloaded` (or a 413 when one request alone is over the limit)."""
        if amount > self.limit:
            raise RequestError(f"this request needs {amount} {self.unit} at once, over the limit of {self.limit}", 413)
        with self._lock:
            if self.held + amount > self.limit:
                raise Overloaded(f"the server is busy ({self.held} {self.unit} in flight); retry in {RETRY_AFTER_S} s")
            self.held += amount

    def give_back(self, amount: int) -> None:
        with self._lock:
            self.held -= amount

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        self.take(amount)
        try:
            yield
        finally:
            self.give_back(amount)


class FileError(ImageError):
    """A bad file, named by the request's field and, in a batch, its index (0-based)."""

    def __init__(self, error: ImageError, field: str, index: int | None) -> None:
        where = field if index is None else f"{field}[{index}]"
        super().__init__(f"{where}: {error}", error.status_code)
        self.index = index


class Decoder:
    def __init__(self, threads: int, max_pixels: int, large_pixels: int, large_places: int) -> None:
        self.max_pixels = max_pixels
        self.large_pixels = large_pixels  # above this (after JPEG's draft scale) an image is large
        self.large_places = Budget(large_places, "large images")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="cifar10-decode")
        self._large_pool = ThreadPoolExecutor(1, thread_name_prefix="cifar10-decode-large")

    @classmethod
    def from_settings(cls, settings: Settings) -> Decoder:
        return cls(settings.decode_threads, settings.max_image_pixels, settings.large_image_pixels,
                   settings.max_large_images)

    async def decode(self, files: list[bytes], field: str | None = None, indexed: bool = False) -> np.ndarray:
        """All files, as (n, 32, 32, 3) uint8. The first bad file raises its `ImageError`, or with a
        `field`, a `FileError` that names the field (and the file's index when `indexed`)."""
        loop = asyncio.get_running_loop()
        opened = await each([loop.run_in_executor(self._pool, open_image, data, self.max_pixels) for data in files],
                            field, indexed)
        large = sum(image.pixels > self.large_pixels for image in opened)
        try:
            self.large_places.take(large)
        except RequestError:
            for image in opened:
                image.image.close()
            raise
        try:  # each image is closed by its decode
            arrays = await each([self._decode_one(image) for image in opened], field, indexed)
        finally:
            self.large_places.give_back(large)
        return np.stack(arrays)

    async def _decode_one(self, image: OpenedImage) -> np.ndarray:
        pool = self._large_pool if image.pixels > self.large_pixels else self._pool
        return await asyncio.get_running_loop().run_in_executor(pool, decode_opened, image)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._large_pool.shutdown(wait=False, cancel_futures=True)


async def each(calls: list[Awaitable[Result]], field: str | None, indexed: bool) -> list[Result]:
    """Await every call; the first error raises once all have ended, so none is left running, and
    images the others opened are closed."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = next(((i, r) for i, r in enumerate(results) if isinstance(r, BaseException)), None)
    if failed is None:
        return results  # type: ignore[return-value]
    for result in results:
        if isinstance(result, OpenedImage):
            result.image.close()
    index, error = failed
    if isinstance(error, ImageError) and field is not None:
        raise FileError(error, field, index if indexed else None) from None
    raise error
