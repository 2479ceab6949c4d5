"""A bound on the work one worker holds at once: request bytes, images and large images, each a budget.

Past a budget a request is refused at once with 503 and `Retry-After` (`Overloaded`), rather than
queued behind work the worker cannot finish soon: a flood costs its senders, not everyone else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import RETRY_AFTER_S, Overloaded, RequestError


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
