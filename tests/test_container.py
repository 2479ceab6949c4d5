"""The bento as a container image, built and run with podman: `deploy/build-image` (one build, started in the
background with the shared-server group's first test: tests/container_image.py), the container against the host
server, a graceful `podman stop`, a bad setting, and the Kubernetes Deployment run with `podman kube play`.

Needs podman, runc, mmdebstrap and uidmap (the README's test command installs them), root, and the package
index reachable from inside the build. Deselect with `-m "not container"`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.harness import HOST, free_port
from conftest import PROJECT_ROOT, ModelStore, assert_same_answer, metadata_json
from container_image import ImageBuild
from deploy.containers import container_name, podman, running, wait_ready

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

PHOTOS = sorted((PROJECT_ROOT / "tests" / "fixtures" / "images-tiny" / "test").rglob("*.jpg"))
KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def image(container_image: ImageBuild, cifar_model_store: ModelStore) -> str:
    """The session's one image, most likely built in the background already (tests/container_image.py)."""
    container_image.start(cifar_model_store)
    return container_image.reference()


def classify(url: str, photo: Path, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"image": (photo.name, photo.read_bytes())}, data={"top_k": "10"},
                      headers=headers, timeout=60)


def test_the_container_answers_as_the_host_server(image: str, cifar_server, cifar_model_store: ModelStore) -> None:
    assert len(PHOTOS) >= 10
    with running(image) as box:
        box.wait_ready()
        for photo in PHOTOS:
            got, expected = classify(box.url, photo), classify(cifar_server.url, photo)
            assert got.status_code == expected.status_code == 200, (photo, got.text, expected.text)
            assert_same_answer(got.json(), expected.json(), tolerance=1e-5)
        metadata = httpx.get(f"{box.url}/metadata", timeout=30).json()
        assert metadata["tag"] == metadata_json(cifar_server)["tag"] == cifar_model_store.tag
        assert metadata["backend"] == "tensorflow"
        uid = podman("exec", box.name, "id", "-u").stdout.strip()
        assert uid.isdigit() and uid != "0"


def manifest_grace_s() -> int:
    deployment = yaml.safe_load((KUBERNETES / "cpu" / "deployment.yaml").read_text())
    return int(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def test_podman_stop_lets_an_in_flight_batch_finish(image: str) -> None:
    grace = manifest_grace_s()  # what Kubernetes would give the pod before SIGKILL
    files = [("images", (photo.name, photo.read_bytes())) for photo in PHOTOS[:4]]
    with running(image, CIFAR10_MAX_LATENCY_MS="3000") as box:  # the batcher holds a request ~3 s
        box.wait_ready()
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, f"{box.url}/classify_batch", files=files, timeout=60)
            time.sleep(1.0)  # sent, and waiting in the batcher
            started = time.monotonic()
            podman("stop", "--time", str(grace), box.name, timeout=grace + 30)  # SIGTERM, SIGKILL after `grace`
            stopped_s = time.monotonic() - started
            response = answer.result(timeout=60)
        assert response.status_code == 200, response.text
        assert len(response.json()) == len(files)
        assert box.state("ExitCode") == "0", box.logs()[-3000:]
        assert stopped_s < grace


def test_a_bad_setting_stops_the_container_with_one_line(image: str) -> None:
    name = container_name()
    try:
        result = podman("run", "--name", name, "--network=host", f"--env=BENTOML_PORT={free_port()}",
                        "--env=CIFAR10_MAX_BATCH_SIZE=0", image, check=False)
        assert result.returncode != 0
        logs = podman("logs", name)
        lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.strip()]
    finally:
        podman("rm", "--force", name, check=False)
    assert len(lines) == 1 and "CIFAR10_MAX_BATCH_SIZE=0" in lines[0], lines


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def podman_secret(secret: dict, key: str) -> str:
    """The Secret's data as podman 4.3 reads a secretKeyRef: a JSON object of base64 values (it cannot read the
    Secret document itself, even the one `podman kube play` stores from a `kind: Secret`)."""
    return json.dumps({name: base64.b64encode(key.encode()).decode() for name in secret["stringData"]})


def test_the_kubernetes_deployment_runs_with_podman_kube_play(image: str, cifar_model_store: ModelStore,
                                                                tmp_path: Path) -> None:
    text = (KUBERNETES / "cpu" / "deployment.yaml").read_text()
    manifest, replaced = re.subn(r"(?m)^(\s*image:\s*)cifar10_classifier:\S+.*$", rf"\g<1>{image}", text)
    assert replaced == 1
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(manifest)
    container = yaml.safe_load(manifest)["spec"]["template"]["spec"]["containers"][0]
    [port] = [p["containerPort"] for p in container["ports"]]
    if not port_is_free(port):
        pytest.skip(f"port {port}, which the manifest declares, is in use on this machine")
    env = {item["name"]: item.get("value") for item in container["env"]}
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    name, key = secret["metadata"]["name"], secrets.token_hex(16)
    podman("secret", "create", name, "-", stdin=podman_secret(secret, key))
    try:
        # No --network=host: podman 4.3 publishes the manifest's containerPort (on the same host port), which
        # it refuses with host networking ("PortMappings can only be used with Bridge or slirp4netns networking").
        played = podman("kube", "play", str(deployment), timeout=120)
        pod = re.search(r"Pod:\s+([0-9a-f]{64})", played.stdout).group(1)  # type: ignore[union-attr]
        url = f"http://{HOST}:{port}"
        wait_ready(url, 300, lambda: podman("pod", "inspect", "--format", "{{.State}}", pod).stdout.strip() == "Running")
        photo = PHOTOS[0]
        assert classify(url, photo).status_code == 401  # the key came from the Secret
        answer = classify(url, photo, authorization=f"Bearer {key}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == cifar_model_store.tag
        metadata = httpx.get(f"{url}/metadata", headers={"authorization": f"Bearer {key}"}, timeout=30).json()
        batching = metadata["batching"]  # the manifest's environment reached the service
        assert batching["workers"] == int(env["CIFAR10_WORKERS"])
        assert batching["max_batch_size"] == int(env["CIFAR10_MAX_BATCH_SIZE"])
    finally:
        podman("kube", "down", str(deployment), check=False, timeout=120)
        podman("secret", "rm", name, check=False)
    assert podman("pod", "exists", pod, check=False).returncode == 1  # `podman kube down` removed it
