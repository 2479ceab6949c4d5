"""One real `bentoml serve` subprocess on loopback, shared by the tests and the benchmarks.

    server = ServerProcess.start("service.service:CIFAR10Classifier", server_env(), Path("serve.log"))
    try:
        server.require_running()
        httpx.get(f"{server.url}/metadata")
    finally:
        server.stop()

The server runs in its own process group (its workers too), so stop() ends all of it and nothing
else; its output goes to a log file the caller reads when something went wrong.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE_IMPORT = "service.service:CIFAR10Classifier"
HOST = "127.0.0.1"  # loopback only: nothing a test or benchmark starts is reachable from outside


def free_port() -> int:
    """A loopback port that was free a moment ago: each server gets its own, tests run side by side."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) plus quiet TensorFlow, no telemetry and the project importable."""
    env = {**(os.environ if base is None else base), "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


STARTS_FILE_ENV = "CIFAR_SERVE_SERVER_STARTS"  # tests/conftest.py sets it: every start is counted


def record_start(target: str, env: Mapping[str, str]) -> None:
    """One line per server start in the file $CIFAR_SERVE_SERVER_STARTS names (if any), with the test that
    caused it: benchmark scripts the tests run inherit the variable, so their servers count too."""
    path = env.get(STARTS_FILE_ENV) or os.environ.get(STARTS_FILE_ENV)
    if path:
        test = env.get("PYTEST_CURRENT_TEST") or os.environ.get("PYTEST_CURRENT_TEST", "-")
        with open(path, "a", encoding="utf-8") as handle:  # one short append: whole lines, even from two processes
            handle.write(f"{test.rsplit(' (', 1)[0]}\t{target}\n")


@dataclass
class ServerProcess:
    """`bentoml serve TARGET --host 127.0.0.1 --port PORT`, leader of its own process group."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    command: list[str]
    started_at: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None  # from spawn to /readyz 200 (None: not ready, or not waited for)

    @classmethod
    def spawn(cls, target: str, env: Mapping[str, str], log: Path, cwd: Path = PROJECT_ROOT) -> ServerProcess:
        """Start the server without waiting: callers that measure or signal start-up themselves."""
        port = free_port()
        command = [sys.executable, "-m", "bentoml", "serve", target, "--host", HOST, "--port", str(port)]
        record_start(target, env)
        with log.open("wb") as handle:  # the child keeps its own descriptor
            process = subprocess.Popen(
                command, cwd=cwd, env=dict(env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(process, port, log, command)

    @classmethod
    def start(
        cls, target: str, env: Mapping[str, str], log: Path, *, timeout: float = 120.0, cwd: Path = PROJECT_ROOT
    ) -> ServerProcess:
        """Spawn and wait for /readyz; a server that died at start-up is returned so its log can be read."""
        server = cls.spawn(target, env, log, cwd)
        try:
            server.wait_ready(timeout)
        except BaseException:  # not ready in time, or interrupted: leave no server behind
            server.stop()
            raise
        return server

    @property
    def url(self) -> str:
        """Base URL of the server, for httpx and the clients."""
        return f"http://{HOST}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """Exit status of the server's main process, None while it runs."""
        return self.process.poll()

    def wait_ready(self, timeout: float, interval: float = 0.25) -> bool:
        """True once /readyz answers 200, False as soon as the process exits; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.ready_seconds = time.monotonic() - self.started_at
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(interval)
        raise TimeoutError(f"server not ready in {timeout:.0f}s:\n{self.log_tail()}")

    def require_running(self, name: str = "server") -> None:
        """Raise RuntimeError with the log tail when the server has exited (a failed start-up)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {self.process.returncode}:\n{self.log_tail()}")

    def log_text(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log: enough for an error message, short enough for a report."""
        return self.log_text()[-chars:]

    def rss_bytes(self) -> int:
        """Resident memory of the server's main process and all its workers (0 once it has exited)."""
        if self.process.poll() is not None:  # its pid may already belong to another process
            return 0
        return tree_rss(self.process.pid)

    def worker_processes(self) -> list[psutil.Process]:
        """The service's worker processes (BentoML's `worker.service` children; none once it has exited)."""
        return [] if self.process.poll() is not None else worker_processes(self.process.pid)

    def worker_rss_bytes(self) -> int:
        """Resident memory of the workers alone, where images are decoded and models run (0: none)."""
        return total_rss([worker.pid for worker in self.worker_processes()])

    def metrics_text(self) -> str:
        return metrics_text(self.url)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the process group (a graceful drain), SIGKILL after `timeout`; the exit status."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
        return self.process.wait()

    def _signal_group(self, signum: int) -> None:
        """Signal the server and its workers: our own group, made by start_new_session."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:  # the group ended in the meantime
            pass


@dataclass
class RunningServer:
    """A server the benchmark did not start (deployed, or a test's own): its URL and, when known, its main
    process and log, so memory, CPU and tracebacks can still be read. Never stopped from here."""

    url: str
    pid: int | None = None
    log: Path | None = None

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 80)

    @property
    def command(self) -> list[str]:
        try:
            return psutil.Process(self.pid).cmdline() if self.pid else [self.url]
        except psutil.Error:
            return [self.url]

    def require_running(self, name: str = "server") -> None:
        if self.pid is not None and not psutil.pid_exists(self.pid):
            raise RuntimeError(f"{name} (pid {self.pid}) is not running")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def rss_bytes(self) -> int:
        return tree_rss(self.pid) if self.pid else 0

    def worker_processes(self) -> list[psutil.Process]:
        return worker_processes(self.pid) if self.pid else []

    def worker_rss_bytes(self) -> int:
        return total_rss([worker.pid for worker in self.worker_processes()])

    def metrics_text(self) -> str:
        return metrics_text(self.url)

    def stop(self) -> None:
        """Someone else's server: left running."""


Server = ServerProcess | RunningServer  # what a benchmark drives: one it started, or one already running


def worker_processes(pid: int) -> list[psutil.Process]:
    """A BentoML server's worker processes: the descendants of its main process `pid` named `worker`."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    workers = []
    for child in children:
        try:
            if any("worker" in part for part in child.cmdline()):
                workers.append(child)
        except psutil.Error:  # ended between the listing and the reading
            pass
    return workers


def metrics_text(url: str) -> str:
    """The Prometheus text of the server's /metrics, or '' when it does not answer."""
    try:
        return httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants (0 once it has ended)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    return total_rss([process.pid for process in processes])


def total_rss(pids: list[int]) -> int:
    """Resident memory of these processes together; one that has ended counts 0."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def machine() -> dict[str, object]:
    """What a benchmark ran on: the CPU by name, how many cores it may use, memory, OS and Python."""
    from contract.machine import cpu_model  # reads /proc/cpuinfo: no TensorFlow, no BentoML

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
