"""The cluster TF_CONFIG describes, read and checked without TensorFlow: this worker's role, its peers,
and a bounded wait for them, so a bad TF_CONFIG or a missing peer ends the command in one line (exit
code 2) before TensorFlow is even imported, never in a hang inside it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CLUSTER_TIMEOUT_ENV = "TRAIN_CIFAR_CLUSTER_TIMEOUT"
DEFAULT_CLUSTER_TIMEOUT_S = 60.0
CLUSTER_JOBS = ("chief", "worker")  # in TensorFlow's order: the chief (if any) is task 0 of the cluster
TF_CONFIG_SHAPE = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'


class ClusterError(Exception):
    """A TF_CONFIG or cluster problem the user can fix: printed as one line, exit code 2."""


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in the cluster TF_CONFIG describes."""

    task_type: str
    index: int
    tasks: tuple[tuple[str, int, str], ...]  # (job, index, "host:port") of every task, chief first

    @property
    def workers(self) -> int:
        """Processes in the cluster (the chief counts as one)."""
        return len(self.tasks)

    @property
    def name(self) -> str:
        """How messages name this worker: "worker 1"."""
        return f"{self.task_type} {self.index}"

    @property
    def address(self) -> str:
        """This worker's own host:port, where it must listen."""
        return next(address for job, index, address in self.tasks if (job, index) == (self.task_type, self.index))

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the "chief" task, or worker 0 when the cluster has no chief."""
        return self.tasks[0][:2] == (self.task_type, self.index)

    def peers(self) -> list[tuple[str, str]]:
        """(name, address) of every other task."""
        return [(f"{job} {index}", address) for job, index, address in self.tasks
                if (job, index) != (self.task_type, self.index)]


def parse_tf_config(raw: str | None) -> dict[str, Any]:
    """TF_CONFIG as JSON, with a cluster and a task; each problem is one line that says what was expected."""
    if not raw or not raw.strip():
        raise ClusterError(f"--distribute multi-worker needs TF_CONFIG on every worker, e.g. {TF_CONFIG_SHAPE}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({error}); expected {TF_CONFIG_SHAPE}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not config["cluster"]:
        raise ClusterError(f"TF_CONFIG has no cluster; expected {TF_CONFIG_SHAPE}")
    if not isinstance(config.get("task"), dict):
        raise ClusterError(f"TF_CONFIG has no task (this worker's type and index); expected {TF_CONFIG_SHAPE}")
    return config


def split_address(address: object) -> tuple[str, int]:
    """"host:port" -> (host, port), or a ClusterError naming the bad entry."""
    host, _, port = str(address).rpartition(":")
    if not isinstance(address, str) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"TF_CONFIG address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def cluster_tasks(cluster: dict[str, Any]) -> tuple[tuple[str, int, str], ...]:
    """Every task of the cluster, chief first; jobs other than chief and worker are refused."""
    unknown = sorted(set(cluster) - set(CLUSTER_JOBS))
    if unknown:
        raise ClusterError(f"TF_CONFIG cluster has job {unknown[0]!r}: multi-worker training uses only "
                           f"'worker' (and an optional 'chief')")
    tasks = []
    for job in CLUSTER_JOBS:
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list) or (job == "chief" and len(addresses) > 1):
            raise ClusterError(f"TF_CONFIG cluster {job!r} must be a list of host:port addresses"
                               + (" with one entry" if job == "chief" else ""))
        for index, address in enumerate(addresses):
            split_address(address)
            tasks.append((job, index, address))
    if not tasks:
        raise ClusterError(f"TF_CONFIG cluster lists no worker; expected {TF_CONFIG_SHAPE}")
    seen = [address for _, _, address in tasks]
    duplicate = next((address for address in seen if seen.count(address) > 1), None)
    if duplicate:
        raise ClusterError(f"TF_CONFIG cluster lists {duplicate} twice: every worker needs its own port")
    return tuple(tasks)


def read_cluster_role(raw: str | None) -> ClusterRole:
    """This worker's role from TF_CONFIG, checked before TensorFlow sees it (its own errors are tracebacks)."""
    config = parse_tf_config(raw)
    tasks = cluster_tasks(config["cluster"])
    task_type, index = config["task"].get("type"), config["task"].get("index")
    if task_type not in CLUSTER_JOBS or task_type not in config["cluster"]:
        raise ClusterError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
                           f"({', '.join(sorted(config['cluster']))})")
    count = len(config["cluster"][task_type])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ClusterError(f"TF_CONFIG task index {index!r} is out of range: the cluster has {count} "
                           f"{task_type} address{'es' if count > 1 else ''} (index 0 to {count - 1})")
    return ClusterRole(task_type, index, tasks)


def listen_on_own_address(role: ClusterRole) -> socket.socket:
    """A listening socket on this worker's address: it proves the port is free and on this machine, and
    answers the peers' knocks until TensorFlow's own server takes the port over."""
    host, port = split_address(role.address)
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror:
        host = ""  # a name not resolvable yet (a new pod's DNS entry): TensorFlow listens on every interface
    beacon = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    beacon.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        beacon.bind((host, port))
        beacon.listen(64)
    except OSError as error:
        beacon.close()
        reason = ("it is not an address of this machine" if error.errno == errno.EADDRNOTAVAIL
                  else error.strerror or str(error))
        raise ClusterError(f"cannot listen on this worker's address {role.address} ({role.name} in "
                           f"TF_CONFIG): {reason}") from None
    threading.Thread(target=answer_knocks, args=(beacon,), daemon=True).start()
    return beacon


def answer_knocks(beacon: socket.socket) -> None:
    """Accept every knock until the socket is shut (unaccepted knocks would fill the backlog), and let the
    peer close first: a closed connection's TIME_WAIT then stays on its side, not on the port TensorFlow
    binds next."""
    with contextlib.suppress(OSError):
        while True:
            connection, _ = beacon.accept()
            with connection, contextlib.suppress(OSError):
                connection.settimeout(1.0)
                connection.recv(1)


def answers(address: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection(split_address(address), timeout=timeout_s):
            return True
    except OSError:
        return False


def cluster_timeout_s() -> float:
    """TRAIN_CIFAR_CLUSTER_TIMEOUT seconds, default 60."""
    raw = os.environ.get(CLUSTER_TIMEOUT_ENV, "")
    try:
        timeout = float(raw) if raw.strip() else DEFAULT_CLUSTER_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < 1e6:
        raise ClusterError(f"{CLUSTER_TIMEOUT_ENV} must be a number of seconds above 0, not {raw!r}")
    return timeout


def wait_for_peers(role: ClusterRole, timeout_s: float) -> None:
    """Knock on every peer's port until all answer (their knock listener, or TensorFlow's server once they are
    past this point), or say who is missing: TensorFlow itself would wait for a missing peer forever."""
    beacon = listen_on_own_address(role)
    deadline = time.monotonic() + timeout_s
    missing = role.peers()
    try:
        while missing and time.monotonic() < deadline:
            missing = [(name, address) for name, address in missing if not answers(address)]
            if missing:
                time.sleep(0.2)
    finally:
        with contextlib.suppress(OSError):
            beacon.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread: only then is the port free
        beacon.close()
    if missing:
        names = ", ".join(f"{name} at {address}" for name, address in missing)
        raise ClusterError(f"the cluster of {role.workers} workers did not form within {timeout_s:g} s: no answer "
                           f"from {names} (is it started, with its own TF_CONFIG?); {CLUSTER_TIMEOUT_ENV} "
                           f"sets the wait")


# Runs beside a worker while TensorFlow forms the cluster: that call holds the GIL, so no Python thread of
# the worker can end a wait that never finishes (a peer that died after answering, or that was given
# another cluster). It gets the worker's pid, the seconds and the message; closing its stdin stops it.
GUARD = """
import os, select, signal, sys
if not select.select([sys.stdin], [], [], float(sys.argv[2]))[0]:
    os.write(2, sys.argv[3].encode())
    os.kill(int(sys.argv[1]), signal.SIGKILL)
"""


@contextlib.contextmanager
def formation_guard(role: ClusterRole, timeout_s: float) -> Iterator[None]:
    """Kill this worker, with a one-line message, if TensorFlow has not formed the cluster in `timeout_s`."""
    message = (f"train-cifar: error: every peer answered but TensorFlow did not form the cluster of {role.workers} "
               f"workers within {timeout_s:g} s: check that all workers have the same cluster in TF_CONFIG "
               f"and that none of them stopped\n")
    guard = subprocess.Popen([sys.executable, "-c", GUARD, str(os.getpid()), str(timeout_s), message],
                             stdin=subprocess.PIPE)
    try:
        yield
    finally:
        assert guard.stdin is not None
        guard.stdin.close()
        guard.wait()
