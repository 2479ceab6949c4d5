"""--distribute multi-worker with real processes on loopback: one stored model, --resume, and bad clusters
that end in a one-line error within a bounded time.

Every cluster, and every worker that waits for peers, is a process of its own (a cluster forms once per
process, and the guard against a cluster that never forms kills its process). A TF_CONFIG refused before any
peer is awaited runs `train-cifar` in this process (tests/inprocess.py), and so does reading the store.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest
from inprocess import process_state_kept, stored_model, stored_models, train_cifar

from training.cluster import ClusterError, read_cluster_role

ROOT = Path(__file__).resolve().parents[1]
TREE_ARCHIVE = ROOT / "tests" / "fixtures" / "images-tiny.tar.gz"
TRAIN_CIFAR = [sys.executable, "-c", "from training.cli import main; main()"]
EPOCH_LINE = re.compile(r"^cnn/adam epoch \d+/\d+: .*$", re.MULTILINE)


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "CIFAR_SERVE_CACHE": str(tmp_path / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        "TRAIN_CIFAR_CLUSTER_TIMEOUT": "180",  # a loaded CI machine starts TensorFlow slowly
    }


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def start_workers(args: list[str], env: dict[str, str], count: int = 2) -> list[subprocess.Popen[str]]:
    """`count` workers of one cluster on loopback, started at the same time (output to files: a worker blocked
    on a full pipe would stall the whole cluster)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    return [launch([*TRAIN_CIFAR, *args], {**env, "TF_CONFIG": tf_config(addresses, index)}) for index in range(count)]


LOGS: dict[int, tuple[IO[str], IO[str]]] = {}  # pid -> the files its stdout and stderr go to


def launch(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """A process whose stdout and stderr go to temporary files, read back by `finish`."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=out, stderr=err)
    LOGS[process.pid] = (out, err)
    return process


def finish(workers: list[subprocess.Popen[str]], timeout: float = 420) -> list[tuple[int, str, str]]:
    """Each worker's exit code, stdout and stderr; none may outlive `timeout`."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        try:
            worker.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail("a worker of the cluster hung")
    return [(worker.returncode, *map(read_back, LOGS.pop(worker.pid))) for worker in workers]


def read_back(file: IO[str]) -> str:
    with file:
        file.seek(0)
        return file.read()


def worker_folders(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"train-cifar-worker*-{pid}-*"))


SHARD_PROBE = """
import json, os
import numpy as np
from training import scale
from training.train import to_dataset
from training.cluster import read_cluster_role
strategy = scale.join_cluster(read_cluster_role(os.environ["TF_CONFIG"]))
x = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1) * np.ones((1, 32, 32, 3), np.uint8)
batches = [sorted(strategy.experimental_local_results(images)[0].numpy()[:, 0, 0, 0].tolist())
           for images, _ in strategy.experimental_distribute_dataset(to_dataset(x, np.zeros(40, int), 10, 8, 7))]
print("BATCHES", json.dumps(batches))
scale.leave_cluster()
"""


def test_each_worker_trains_its_own_part_of_every_batch(env: dict[str, str]) -> None:
    """The training input: a global batch of 8 is 4 images on each of 2 workers, never the same ones."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    probes = [launch([sys.executable, "-c", SHARD_PROBE], {**env, "TF_CONFIG": tf_config(addresses, index)})
              for index in range(2)]
    parts = []
    for rc, stdout, stderr in finish(probes):
        assert rc == 0, stderr[-3000:]
        parts.append(json.loads(stdout.split("BATCHES ")[1]))
    assert [len(batch) for part in parts for batch in part] == [4] * 10
    assert sorted(image for part in parts for batch in part for image in batch) == list(range(40))  # once each


def wait_for_state(state_file: Path, workers: list[subprocess.Popen[str]], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(w.poll() is None for w in workers):
        try:
            if json.loads(state_file.read_text())["epoch"] >= 0:
                return
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    pytest.fail("the cluster did not finish an epoch")


def test_a_killed_cluster_resumes_from_the_chiefs_checkpoint(tmp_path: Path, env: dict[str, str]) -> None:
    """Two workers on loopback train, are killed, resume, and store one model that records the cluster."""
    run = tmp_path / "run"
    workers = start_workers(["--data", str(TREE_ARCHIVE), "--epochs", "4", "--batch-size", "4",
                             "--early-stopping-patience", "0", "--distribute", "multi-worker", "--output", str(run)],
                            env)
    wait_for_state(run / "checkpoints" / "state.json", workers)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    done = json.loads((run / "checkpoints" / "state.json").read_text())["epoch"]
    assert done < 3, "the run finished before it was killed"
    assert not stored_models(tmp_path / "bentoml")

    resumed = start_workers(["--resume", str(run)], env)
    (chief_rc, chief_out, chief_err), (other_rc, other_out, other_err) = finish(resumed)
    assert chief_rc == 0, chief_err[-3000:]
    assert other_rc == 0, other_err[-3000:]
    assert "Traceback" not in chief_err + other_err
    for output in (chief_out, other_out):
        assert f"epoch {done + 2}/4" in output and "epoch 1/4:" not in output
    # synchronous training: both workers saw the same (all-reduced) numbers every epoch
    assert EPOCH_LINE.findall(chief_out)[-1].split(", elapsed_s")[0] == \
        EPOCH_LINE.findall(other_out)[-1].split(", elapsed_s")[0]
    assert "saved to the model store as" in chief_out and "saved to the model store" not in other_out

    models = stored_models(tmp_path / "bentoml")
    assert len(models) == 1, models  # two processes, one stored model
    card = stored_model(models[0]["tag"], tmp_path / "bentoml")["metadata"]
    assert card["distribute"] == "multi-worker" and card["workers"] == 2
    assert card["metrics"]["epochs_run"] == 4 and card["run_dir"] == str(run.resolve())
    report = json.loads((run / "report.json").read_text())
    assert report["workers"] == 2 and report["devices"][0].startswith("/job:worker/replica:0/task:0/")
    assert (run / "model.keras").exists() and (run / "checkpoints" / "checkpoint.keras").exists()
    assert any((run / "tensorboard").rglob("*.v2"))
    # the other worker wrote only to its temporary folder, and removed it
    assert not worker_folders(resumed[1].pid)


# --- bad clusters: one line, exit code 2, bounded time ---------------------------------------------------


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("train-cifar: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "needs TF_CONFIG on every worker"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no cluster"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
         "TF_CONFIG task index 1 is out of range"),
        # TEST-NET-1 (RFC 5737): never an address of this machine
        ('{"cluster": {"worker": ["192.0.2.1:2222", "127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}',
         "cannot listen on this worker's address 192.0.2.1:2222 (worker 0 in TF_CONFIG): it is not an address "
         "of this machine"),
    ],
    ids=["missing", "not-json", "no-cluster", "index-out-of-range", "not-this-machine"],
)
def test_a_bad_tf_config_is_one_line_and_exit_2(config: str | None, message: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: each is refused before a peer is awaited or a cluster formed (the last when it binds
    its own address)."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if config is not None:
        monkeypatch.setenv("TF_CONFIG", config)
    monkeypatch.setenv("TRAIN_CIFAR_CLUSTER_TIMEOUT", "180")
    monkeypatch.setenv("CIFAR_SERVE_CPU_SPEEDUPS", "none")  # TensorFlow's gradients and allocator stay as they are
    started = time.monotonic()
    with process_state_kept():
        result = train_cifar("--data", str(TREE_ARCHIVE), "--distribute", "multi-worker", "--output",
                             str(tmp_path / "run"), home=tmp_path / "bentoml")
    assert result.returncode == 2
    assert message in one_error_line(result.stderr)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("index", [1], ids=["worker-alone"])  # the chief runs the same wait (10 s a case)
def test_an_unreachable_peer_is_one_line_and_exit_2_in_bounded_time(index: int, tmp_path: Path,
                                                                     env: dict[str, str]) -> None:
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    env = {**env, "TF_CONFIG": tf_config(addresses, index), "TRAIN_CIFAR_CLUSTER_TIMEOUT": "5"}
    started = time.monotonic()
    result = subprocess.run([*TRAIN_CIFAR, "--data", str(TREE_ARCHIVE), "--distribute", "multi-worker",
                             "--output", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert "did not form within 5 s" in line and f"worker {1 - index} at {addresses[1 - index]}" in line
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


def test_a_peer_port_that_is_not_tensorflow_cannot_hang_a_worker(tmp_path: Path, env: dict[str, str]) -> None:
    """Every peer answers (here: a plain socket), but no cluster can form: the guard ends the worker."""
    impostor = socket.create_server(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{free_ports(1)[0]}", f"127.0.0.1:{impostor.getsockname()[1]}"]
    env = {**env, "TF_CONFIG": tf_config(addresses, 0), "TRAIN_CIFAR_CLUSTER_TIMEOUT": "5"}
    started = time.monotonic()
    with impostor:
        result = subprocess.run([*TRAIN_CIFAR, "--data", str(TREE_ARCHIVE), "--distribute", "multi-worker",
                                 "--output", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
    assert result.returncode in (2, -signal.SIGKILL), result.stderr[-3000:]
    assert "cluster" in one_error_line(result.stderr)
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"cluster": {"ps": ["a:1"], "worker": ["a:2"]}, "task": {"type": "worker", "index": 0}}', "job 'ps'"),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}', "lists a:1 twice"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "'a' is not host:port"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "task type 'chief'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "task index '0'"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG has no task"),
        ("[]", "TF_CONFIG has no cluster"),
    ],
)
def test_tf_config_is_checked_before_tensorflow_sees_it(config: str, message: str) -> None:
    with pytest.raises(ClusterError, match=re.escape(message)):
        read_cluster_role(config)


def test_the_chief_is_the_chief_task_or_worker_0() -> None:
    with_chief = '{"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 0}}'
    role = read_cluster_role(with_chief)
    assert role.workers == 3 and not role.is_chief and role.address == "b:1"
    assert [name for name, _ in role.peers()] == ["chief 0", "worker 1"]
    assert read_cluster_role(with_chief.replace('"type": "worker"', '"type": "chief"')).is_chief
    assert read_cluster_role(tf_config(["a:1", "b:2"], 0)).is_chief


def test_the_kubernetes_example_of_the_docs_is_valid_and_builds_each_pods_tf_config() -> None:
    yaml = pytest.importorskip("yaml")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    block = re.search(r"```yaml\n(.*?)```", (ROOT / "docs" / "cluster.md").read_text(), re.S)
    assert block is not None
    resources = list(yaml.safe_load_all(block[1]))
    for resource in resources:
        kubernetes_validate.validate(resource, "1.30.0", strict=True)
    job = next(r for r in resources if r["kind"] == "Job")
    entrypoint = job["spec"]["template"]["spec"]["containers"][0]["args"][0].splitlines()[0]
    for index in (0, 1):
        shown = subprocess.run(["/bin/sh", "-c", f'{entrypoint}; printf %s "$TF_CONFIG"'], capture_output=True,
                               text=True, env={"JOB_COMPLETION_INDEX": str(index), "PATH": os.environ["PATH"]})
        role = read_cluster_role(shown.stdout)
        assert role.index == index and role.is_chief == (index == 0)
        assert role.address == f"cifar-train-{index}.cifar-train:2222" and role.workers == job["spec"]["completions"]
