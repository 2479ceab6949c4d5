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

import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
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
    ready_path: str = "/readyz"

    @classmethod
    def spawn(cls, target: str, env: Mapping[str, str], log: Path, cwd: Path = PROJECT_ROOT) -> ServerProcess:
        """Start the server without waiting: callers that measure or signal start-up themselves."""
        port = free_port()
        command = [sys.executable, "-m", "bentoml", "serve", target, "--host", HOST, "--port", str(port)]
        return cls.launch(command, port, target, env, log, cwd)

    @classmethod
    def launch(cls, command: list[str], port: int, target: str, env: Mapping[str, str], log: Path,
               cwd: Path = PROJECT_ROOT, ready_path: str = "/readyz") -> ServerProcess:
        """Any server command that listens on `port` and answers 200 on `ready_path` once ready (the peers)."""
        record_start(target, env)
        with log.open("wb") as handle:  # the child keeps its own descriptor
            process = subprocess.Popen(
                command, cwd=cwd, env=dict(env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(process, port, log, command, ready_path=ready_path)

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
        """True once `ready_path` answers 200, False as soon as the process exits; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
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


# ------------------------------------------------------------------------------------------------
# load generator (benchmarks/serve.py, benchmarks/peers.py)


@dataclass
class LoadResult:
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0  # connection errors, timeouts, unexpected answers
    non_2xx: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        value = percentile(self.latencies_ms, q)
        return float("nan") if value is None else value

    def summary(self) -> dict[str, Any]:
        ok = max(1, self.requests)
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "max_ms": round(max(self.latencies_ms, default=float("nan")), 2),
            "errors": self.errors,
            "non_2xx": self.non_2xx,
            "statuses": self.statuses,
            "error_kinds": self.error_kinds,
            "client_cpu_ms_per_request": round(1000 * self.client_cpu_s / ok, 3),
            "server_cpu_ms_per_request": None if self.server_cpu_s is None else round(1000 * self.server_cpu_s / ok, 3),
        }


class HttpxSender:
    def __init__(self, concurrency: int, timeout: float) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=timeout,
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        response = await self.client.post(url, content=body, headers=headers)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpSender:
    def __init__(self, concurrency: int, timeout: float) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=timeout),
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.session.post(url, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def close(self) -> None:
        await self.session.close()


SENDERS = {"aiohttp": AiohttpSender, "httpx": HttpxSender}


@dataclass
class Tally:
    """What the recorded requests of a run gave: counts, statuses, failures by kind, latencies."""

    result: LoadResult = field(default_factory=LoadResult)
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    accept: Callable[[bytes], bool] = field(default=lambda answer: answer.startswith(b'{"label"'))  # /classify's

    def add(self, milliseconds: float, status: int | None, answer: bytes, failure: str | None) -> None:
        result = self.result
        result.requests += 1
        result.latencies_ms.append(milliseconds)
        if failure is not None:
            result.errors += 1
            self.kinds[failure] += 1
        elif not 200 <= status < 300:  # type: ignore[operator]
            self.statuses[str(status)] += 1
            result.non_2xx += 1
            result.errors += 1
        else:
            self.statuses[str(status)] += 1
            if not self.accept(answer):
                result.errors += 1
                self.kinds["unexpected body"] += 1


async def send_one_after_another(sender: Any, url: str, bodies: list[bytes], headers: dict[str, str], first: int,
                                 step: int, until: float, tally: Tally | None) -> float:
    """One client: bodies `first`, `first + step`, ... until `until`; recorded in `tally` unless None.
    Returns when its last answer came."""
    last, k = time.perf_counter(), first
    while time.perf_counter() < until:
        body = bodies[k % len(bodies)]
        k += step
        started = time.perf_counter()
        status, answer, failure = None, b"", None
        try:
            status, answer = await sender.post(url, body, headers)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
            failure = type(exc).__name__
        last = time.perf_counter()
        if tally is not None:
            tally.add(1000 * (last - started), status, answer, failure)
    return last


async def drive(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    timeout: float,
    client: str,
    server_pid: int | None = None,
    headers: dict[str, str] | None = None,
    accept: Callable[[bytes], bool] | None = None,
) -> LoadResult:
    """N clients, each sending one request after the other: `warmup` seconds unrecorded, then `duration`.
    A 2xx answer counts as an error unless `accept` (default: a /classify answer) takes it."""
    sender = SENDERS[client](concurrency, timeout)
    headers = headers or {}
    tally = Tally() if accept is None else Tally(accept=accept)

    def clients(until: float, into: Tally | None) -> Any:
        return asyncio.gather(*(send_one_after_another(sender, url, bodies, headers, i, concurrency, until, into)
                                for i in range(concurrency)))

    try:
        if warmup > 0:
            await clients(time.perf_counter() + warmup, None)
        server_before, client_before = tree_cpu(server_pid), time.process_time()
        started = time.perf_counter()
        ends = await clients(started + duration, tally)
        tally.result.seconds = max(ends) - started
        tally.result.client_cpu_s = time.process_time() - client_before
        server_after = tree_cpu(server_pid)
        if server_before is not None and server_after is not None:
            tally.result.server_cpu_s = server_after - server_before
    finally:
        await sender.close()
    tally.result.statuses, tally.result.error_kinds = dict(tally.statuses), dict(tally.kinds)
    return tally.result


def tree_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process and its children (the server and its workers)."""
    if pid is None:
        return None
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None
