"""Model control across the workers of one server: a load or unload reaches one worker, but every
worker must serve the same versions, so the wanted state is written to a shared folder and each
worker follows it, acknowledging what it serves. The worker that took the request answers once all
have switched, so every answer after a load returns comes from the new version.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from service.errors import ModelError
from contract.predictor import short_reason
from service.inference.registry import ModelRegistry, ServedModel

logger = logging.getLogger("bentoml.service.cifar10")
POLL_S = 0.2  # how often a worker looks for a new wanted state
ALL_WORKERS_SWITCH_S = 300.0  # longest wait, in a load or unload, for the other workers to follow
CONTROL_DIR_ENV = "CIFAR10_CONTROL_DIR"  # set by the server's main process, inherited by its workers
Wanted = dict[str, "str | None"]  # store name -> version to serve, or None: unloaded
_REPORTED: set[str] = set()


class ControlFolderError(RuntimeError):
    """The shared folder is missing or not private: following it could be steered by someone else."""


class WantedState(BaseModel):
    """wanted.json: the versions every worker should serve, and a generation that grows with each change."""

    generation: int = Field(ge=0)
    models: dict[str, str | None]


class Acknowledged(BaseModel):
    """worker-<n>.json: the generation that worker applied last."""

    generation: int = Field(ge=0)


def create_control_folder() -> Path:
    """In the server's main process, before its workers start: a private folder (0700, a random name)
    removed at exit; its path reaches the workers through the environment they inherit."""
    folder = Path(tempfile.mkdtemp(prefix="cifar10-control-"))
    os.environ[CONTROL_DIR_ENV] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def control_folder() -> Path:
    """The folder this worker shares with the others, refused unless it is a directory (not a link) of
    this user that no one else may read or write."""
    raw = os.environ.get(CONTROL_DIR_ENV, "")
    if not raw:
        raise ControlFolderError(f"{CONTROL_DIR_ENV} is not set: start the server with bentoml serve")
    try:
        info = os.lstat(raw)
    except OSError as error:
        raise ControlFolderError(f"{CONTROL_DIR_ENV}={raw}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ControlFolderError(f"{CONTROL_DIR_ENV}={raw} must be a directory of this user with mode 0700")
    return Path(raw)


def write_json(path: Path, value: Any) -> None:
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)  # readers see the old file or the new one, never half of one


def read_state(path: Path, model: type[BaseModel]) -> Any:
    """The file as `model`, or None if it is absent; a malformed one is logged and read as absent."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as error:
        problem = f"ignoring {path.name}: {' '.join(str(error).split())[:200]}"
        if problem not in _REPORTED:  # once, not every poll
            _REPORTED.add(problem)
            logger.warning(problem)
        return None


class SharedControl:
    def __init__(self, folder: Path, worker: int, workers: int) -> None:
        self.folder = folder
        self.worker = worker
        self.workers = workers
        self.seen = 0  # the generation this worker applied last

    @property
    def wanted_file(self) -> Path:
        return self.folder / "wanted.json"

    def wanted(self) -> tuple[int, Wanted]:
        state = read_state(self.wanted_file, WantedState)
        return (state.generation, dict(state.models)) if state is not None else (0, {})

    def publish(self, name: str, version: str | None) -> int:
        """Record a change (after this worker made it); returns its generation, past any this worker has
        seen (so a change follows even an unreadable file)."""
        generation, models = self.wanted()
        models[name] = version
        generation = max(generation, self.seen) + 1
        write_json(self.wanted_file, WantedState(generation=generation, models=models).model_dump())
        self.acknowledge(generation)
        return generation

    def acknowledge(self, generation: int) -> None:
        self.seen = generation
        write_json(self.folder / f"worker-{self.worker}.json", {"generation": generation})

    def switched(self, generation: int) -> bool:
        acks = [read_state(self.folder / f"worker-{i}.json", Acknowledged) for i in range(1, self.workers + 1)]
        return all(ack is not None and ack.generation >= generation for ack in acks)

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
                except Exception as error:  # keep serving what works; the requesting worker reports the time-out
                    logger.warning("worker %d could not apply model state %d: %s", self.worker, generation,
                                   short_reason(error))
                self.acknowledge(generation)
            await asyncio.sleep(POLL_S)


class ModelControl:
    """Loads and unloads asked of this worker: made in its registry, then published so that every other
    worker follows (`shared`, None with one worker), answered once all serve the same version."""

    def __init__(self, registry: ModelRegistry, shared: SharedControl | None) -> None:
        self.registry = registry
        self.shared = shared

    async def load(self, name: str, version: str | None) -> ServedModel:
        """Load and switch to a version in this worker, then wait until every worker serves it."""
        served = await self.registry.swap(name, version)
        await self._publish(name, served.version)
        return served

    async def unload(self, name: str) -> None:
        await self.registry.unload(name)
        await self._publish(name, None)

    async def follow(self) -> None:
        """Apply what other workers publish (forever; cancelled at shutdown)."""
        if self.shared is not None:
            await self.shared.follow(self._apply)

    async def _apply(self, wanted: Wanted) -> None:
        for name, version in wanted.items():
            served = self.registry.models.get(name)
            if version is None and served is not None:
                await self.registry.unload(name)
            elif version is not None and (served is None or served.version != version):
                await self.registry.swap(name, version)

    async def _publish(self, name: str, version: str | None) -> None:
        if self.shared is None:
            return
        generation = self.shared.publish(name, version)
        if not await self.shared.wait_for_all(generation, ALL_WORKERS_SWITCH_S):
            raise ModelError(f"not every worker switched {name} within {ALL_WORKERS_SWITCH_S:.0f} s; see the log", 409)
