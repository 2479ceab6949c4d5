"""Model control across the workers of one server: a load or unload reaches one worker, but every
worker must serve the same versions, so the wanted state is written to a shared folder and each
worker follows it, acknowledging what it serves. The worker that took the request answers once all
have switched, so every answer after a load returns comes from the new version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("bentoml.service.cifar10")
POLL_S = 0.2  # how often a worker looks for a new wanted state
Wanted = dict[str, "str | None"]  # store name -> version to serve, or None: unloaded


def server_folder() -> Path:
    """One folder per running server: its workers share their parent process (BentoML's arbiter)."""
    return Path(tempfile.gettempdir()) / f"cifar10-serve-{os.getppid()}"


def write_json(path: Path, value: Any) -> None:
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)  # readers see the old file or the new one, never half of one


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class SharedControl:
    def __init__(self, folder: Path, worker: int, workers: int) -> None:
        self.folder = folder
        self.worker = worker
        self.workers = workers
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seen = 0  # the generation this worker applied last

    @property
    def wanted_file(self) -> Path:
        return self.folder / "wanted.json"

    def wanted(self) -> tuple[int, Wanted]:
        state = read_json(self.wanted_file) or {}
        return int(state.get("generation", 0)), dict(state.get("models", {}))

    def publish(self, name: str, version: str | None) -> int:
        """Record a change (after this worker made it); returns its generation."""
        generation, models = self.wanted()
        models[name] = version
        write_json(self.wanted_file, {"generation": generation + 1, "models": models})
        self.acknowledge(generation + 1)
        return generation + 1

    def acknowledge(self, generation: int) -> None:
        self.seen = generation
        write_json(self.folder / f"worker-{self.worker}.json", {"generation": generation})

    def switched(self, generation: int) -> bool:
        acks = [read_json(self.folder / f"worker-{i}.json") or {} for i in range(1, self.workers + 1)]
        return all(ack.get("generation", 0) >= generation for ack in acks)

    async def wait_for_all(self, generation: int, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.switched(generation):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    async def follow(self, apply: Callable[[Wanted], Awaitable[None]]) -> None:
        """Apply every new wanted state (forever; cancelled at shutdown)."""
        while True:
            generation, models = self.wanted()
            if generation > self.seen:
                try:
                    await apply(models)
                except Exception:  # keep serving what works; the requesting worker reports the time-out
                    logger.exception("worker %d could not apply model state %d", self.worker, generation)
                self.acknowledge(generation)
            await asyncio.sleep(POLL_S)
