"""One virtual environment per serving peer, made and installed without a human, so no peer's pins touch ours.

    python -m benchmarks.peer_venvs mlserver        # make (or reuse) the venv, print its Python and the time

Each venv lives in $CIFAR_SERVE_PEERS_DIR (default ~/.cache/cifar-serve/peers)/<peer>-<version>, and holds
the peer plus what our model code needs (Keras with TensorFlow at our own versions, Pillow at ours, pydantic):
the peer's server module imports `contract/` from the repository through PYTHONPATH. A venv is reused
while its `installed.json` names the same packages; a failed install is tried again on the next run and
its reason (pip's last lines) is what the benchmark's table shows.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

PEERS_DIR_ENV = "CIFAR_SERVE_PEERS_DIR"
INSTALL_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    requirements: tuple[str, ...]  # what pip installs for the peer itself
    module: str  # benchmarks.peer_servers.<module>: its server
    why_pinned: str = ""  # what the requirements pin beyond the peer, and why

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


PEERS = {
    "mlserver": Peer("mlserver", "1.7.1", ("mlserver==1.7.1", "uvloop<0.22"), "mlserver_peer",
                     "uvloop<0.22: uvloop 0.22+ refuses the asyncio.get_event_loop() that MLServer 1.7.1's inference "
                     "workers call before their loop runs (RuntimeError: There is no current event loop)"),
    "kserve": Peer("kserve", "0.21.0", ("kserve==0.21.0",), "kserve_peer"),
    "pytriton": Peer("pytriton", "0.7.0", ("nvidia-pytriton==0.7.0",), "pytriton_peer"),
    "litserve": Peer("litserve", "0.2.19", ("litserve==0.2.19",), "litserve_peer"),
    "ray": Peer("ray", "2.60.0", ("ray[serve]==2.60.0",), "ray_peer"),
}


@dataclass
class Venv:
    peer: Peer
    folder: Path
    python: Path | None = None  # None: not installed (see `reason`)
    install_seconds: float | None = None  # this run's install; None when reused
    reason: str = ""


def model_requirements() -> list[str]:
    """Our model code's packages at the versions this (our) environment runs: the same kernels, the same decoder."""
    return [f"tensorflow-cpu=={version('tensorflow')}", f"keras=={version('keras')}", f"pillow=={version('pillow')}",
            "pydantic>=2.7,<3"]


def peers_dir() -> Path:
    return Path(os.environ.get(PEERS_DIR_ENV) or Path.home() / ".cache" / "cifar-serve" / "peers")


def ensure_venv(peer: Peer, log: Callable[[str], object] = print) -> Venv:
    """The peer's venv, installed now if it is missing or was made for other packages; one process at a time
    (a second one waits for the first's install, then reuses it)."""
    peers_dir().mkdir(parents=True, exist_ok=True)
    with open(peers_dir() / f"{peer.label}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_venv(peer, log)


def _ensure_venv(peer: Peer, log: Callable[[str], object]) -> Venv:
    folder = peers_dir() / peer.label
    venv = Venv(peer, folder)
    wanted = [*peer.requirements, *model_requirements()]
    marker = folder / "installed.json"
    python = folder / "bin" / "python"
    if marker.exists() and python.exists() and json.loads(marker.read_text()).get("packages") == wanted:
        venv.python = python
        return venv
    log(f"[{peer.name}] installing {' '.join(wanted)} into {folder} ...")
    started = time.monotonic()
    try:
        install(folder, wanted)
    except InstallError as error:
        venv.reason = str(error)
        return venv
    venv.install_seconds = round(time.monotonic() - started, 1)
    marker.write_text(json.dumps({"packages": wanted, "install_seconds": venv.install_seconds}) + "\n")
    venv.python = python
    log(f"[{peer.name}] installed in {venv.install_seconds:.0f} s")
    return venv


class InstallError(RuntimeError):
    """The venv could not be made or pip could not install the peer: the reason is pip's last line."""


def install(folder: Path, packages: list[str]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", str(folder)], "venv")
    run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
        "pip install")


def run(command: list[str], what: str) -> None:
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InstallError(f"{what} took over {INSTALL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error")] or lines
        raise InstallError(f"{what} failed: {' '.join(errors[-2:])[:300]}")


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in PEERS]
    if unknown or not argv:
        print(f"usage: python -m benchmarks.peer_venvs {{{','.join(PEERS)}}} ...", file=sys.stderr)
        return 2
    failed = 0
    for name in argv:
        venv = ensure_venv(PEERS[name])
        print(f"{name}: {venv.python or 'NOT INSTALLED: ' + venv.reason}"
              + (f" (installed in {venv.install_seconds:.0f} s)" if venv.install_seconds else ""))
        failed += venv.python is None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
