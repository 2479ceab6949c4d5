"""podman with the project's settings (deploy/podman/), and one container of a bento image on a loopback port:
shared by tests/test_container.py and deploy/measure-image.

    with running("localhost/cifar10_classifier:<version>", CIFAR10_WORKERS="2") as box:
        box.wait_ready()
        httpx.get(f"{box.url}/metadata")
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.harness import HOST, free_port

HERE = Path(__file__).resolve().parent
PODMAN_ENV = {  # named through the environment, so nothing under /etc changes
    "CONTAINERS_CONF": str(HERE / "podman" / "containers.conf"),
    "CONTAINERS_STORAGE_CONF": str(HERE / "podman" / "storage.conf"),
}


def podman(*args: str, timeout: float = 180, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run podman with the project's settings, output captured; `check` fails with podman's stderr."""
    result = subprocess.run(["podman", *args], env={**os.environ, **PODMAN_ENV}, input=stdin,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} -> {result.returncode}: {result.stderr[-3000:]}")
    return result


def wait_ready(url: str, timeout: float, running: Callable[[], bool], since: float | None = None) -> float:
    """Seconds (from `since`, default now) until GET url/readyz answers 200; RuntimeError once `running()` is False."""
    started = time.monotonic() if since is None else since
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if not running():
            raise RuntimeError(f"{url}: exited before it was ready")
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout:.0f}s")


@dataclass(frozen=True)
class Container:
    """A detached container on the host network, serving on `port`."""

    name: str
    port: int
    started: float = field(default_factory=time.monotonic)  # just before `podman run`

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def state(self, key: str) -> str:
        """A field of `podman inspect`'s State: Running, ExitCode, ..."""
        return podman("inspect", "--format", "{{.State.%s}}" % key, self.name).stdout.strip()

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = 240) -> float:
        """Seconds from `podman run` to /readyz 200; the log tail in the error when it never gets there."""
        try:
            return wait_ready(self.url, timeout, lambda: self.state("Running") == "true", self.started)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}:\n{self.logs()[-3000:]}") from None


def container_name() -> str:
    return f"cifar-serve-{uuid.uuid4().hex[:8]}"


@contextmanager
def running(image: str, **env: str) -> Iterator[Container]:
    """`podman run -d --network=host -e BENTOML_PORT=<free port>`; removed on exit (publishing ports is not
    needed on loopback)."""
    box = Container(container_name(), free_port())
    settings = [f"--env={key}={value}" for key, value in {"BENTOML_PORT": str(box.port), **env}.items()]
    podman("run", "--detach", "--name", box.name, "--network=host", *settings, image)
    try:
        yield box
    finally:
        podman("rm", "--force", "--time", "0", box.name, check=False)
