"""The container tests' image: the suite's tiny model -> `bentoml build` -> `deploy/build-image`, built in a
background thread. conftest.py starts it with the first test of the shared-server group when container tests are
selected: most of its 80-100 s are downloads and podman writing layers to disk, so other tests run meanwhile,
and the container tests run last in their group (conftest's `run_order`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, ModelStore
from deploy.containers import podman

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # this CI reaches the package index through a TLS-inspecting proxy
TOOLS = ("podman", "runc", "mmdebstrap")


def build_image(store: ModelStore) -> str:
    """The bento of `store`'s model as a podman image; returns its reference, `localhost/<bento tag>`."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install -y podman runc mmdebstrap uidmap "
                    "(or deselect the container tests with -m 'not container')", pytrace=False)
    env = store.env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the venv's bentoml
    built = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr[-3000:]
    bento = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    trust = ["--trust-host-ca"] if HOST_CA.is_file() else []
    result = subprocess.run([str(PROJECT_ROOT / "deploy" / "build-image"), *trust, bento], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=1100)
    assert result.returncode == 0, result.stderr[-5000:]
    reference = result.stdout.strip().splitlines()[-1]
    assert reference == f"localhost/{bento}"
    return reference


class ImageBuild:
    """At most one `build_image` of the session, in a thread of its own; `finish` waits for it and removes the image."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="container-image")
        self.future: Future[str] | None = None

    def start(self, store: ModelStore) -> None:
        """Starts the build on a copy of `store` (a store of its own: the build adds a bento); once."""
        if self.future is None:
            self.future = self.pool.submit(build_image, store.copy(self.folder / "bentoml_home"))

    def reference(self, timeout: float = 1200) -> str:
        """The built image's reference; the build's failure, re-raised, if it failed."""
        assert self.future is not None, "start() the build first"
        return self.future.result(timeout=timeout)

    def finish(self) -> None:
        if self.future is not None and self.future.exception() is None:  # waits for a build still running
            podman("rmi", "--force", self.future.result(), check=False)
        self.pool.shutdown()
