"""deploy/kubernetes/: every manifest validates against the Kubernetes JSON schemas, offline, and says
what the service needs (probes, a grace period longer than the drain, the API key from a Secret, a GPU for
the GPU variant, autoscalers and Services aimed at their own Deployment).

The schemas ship inside the `kubernetes-validate` package (strict: unknown fields are errors); the network
is blocked while it runs, so a validator that fetched schemas would fail here, as it would in CI.
"""

from __future__ import annotations

import ast
import copy
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"  # the oldest version the manifests must work on; the package ships its schemas
MANIFESTS = sorted(DEPLOY.rglob("*.y*ml"))
VARIANTS = ("cpu", "gpu")
PORT = 3000  # the bento's HTTP port


def shutdown_drain_s() -> float:
    """SHUTDOWN_DRAIN_S as service/service.py sets it (read from the source: importing it loads TensorFlow)."""
    tree = ast.parse((ROOT / "service" / "service.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SHUTDOWN_DRAIN_S" for t in node.targets):
            return float(ast.literal_eval(node.value))
    raise AssertionError("SHUTDOWN_DRAIN_S is not set in service/service.py")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def variant(name: str) -> dict[str, dict[str, Any]]:
    """The variant's resources by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / name).glob("*.yaml")):
        for doc in documents(path):
            assert doc["kind"] not in found, f"{name}: two {doc['kind']}s"
            found[doc["kind"]] = doc
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def port_number(ctr: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's target port, resolving a named port through the container's ports."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in ctr["ports"]}
    assert port in named, f"port {port!r} is not a named port of the container"
    return named[port]


def env_of(ctr: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in ctr.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Validation must not need the network: any connection or name lookup fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network used during validation: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# schemas


def test_the_pinned_kubernetes_version_is_shipped() -> None:
    shipped = {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    assert KUBERNETES_VERSION in shipped, sorted(shipped)


def test_every_variant_has_its_resources() -> None:
    assert MANIFESTS, f"no manifests under {DEPLOY}"
    for name in VARIANTS:
        assert set(variant(name)) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert [doc["kind"] for doc in documents(DEPLOY / "secret.example.yaml")] == ["Secret"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        validate(doc)  # raises kubernetes_validate.ValidationError with the path of the bad field


def broken_type(deployment: dict[str, Any]) -> None:
    container(deployment)["ports"][0]["containerPort"] = "3000"  # a string where an integer belongs


def broken_field(deployment: dict[str, Any]) -> None:
    container(deployment)["readinessProbe"]["httpGet"]["paht"] = "/readyz"  # a misspelt field


def broken_required(deployment: dict[str, Any]) -> None:
    del deployment["spec"]["selector"]  # a required field missing


def broken_grace(deployment: dict[str, Any]) -> None:
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "60s"


@pytest.mark.parametrize("breakage", [broken_type, broken_field, broken_required, broken_grace])
def test_the_validator_rejects_a_broken_manifest(breakage: Any) -> None:
    deployment = copy.deepcopy(variant("cpu")["Deployment"])
    validate(copy.deepcopy(deployment))  # the original passes
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_the_validator_rejects_a_broken_hpa() -> None:
    hpa = copy.deepcopy(variant("cpu")["HorizontalPodAutoscaler"])
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(hpa)


def test_the_validator_rejects_an_api_the_version_no_longer_serves() -> None:
    hpa = copy.deepcopy(variant("cpu")["HorizontalPodAutoscaler"])
    hpa["apiVersion"] = "autoscaling/v2beta2"  # removed in Kubernetes 1.26
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(hpa)


# ---------------------------------------------------------------------------------------------
# what the service needs


@pytest.mark.parametrize("name", VARIANTS)
def test_deployment_probes_and_shutdown(name: str) -> None:
    deployment = variant(name)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    ctr = container(deployment)
    assert [p["containerPort"] for p in ctr["ports"]] == [PORT]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        check = ctr[probe]["httpGet"]
        assert check["path"] == path, probe
        assert port_number(ctr, check["port"]) == PORT, probe
    if "startupProbe" in ctr:
        assert port_number(ctr, ctr["startupProbe"]["httpGet"]["port"]) == PORT
    drain = shutdown_drain_s()
    pre_stop = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["terminationGracePeriodSeconds"] > drain + pause, "SIGKILL would cut the shutdown drain short"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] != 0 or rolling["maxUnavailable"] != 0


@pytest.mark.parametrize("name", VARIANTS)
def test_deployment_reads_the_api_key_from_the_secret(name: str) -> None:
    secret = documents(DEPLOY / "secret.example.yaml")[0]
    env = env_of(container(variant(name)["Deployment"]))
    key = env["CIFAR10_API_KEY"]
    assert "value" not in key, "the key must not be written in the manifest"
    ref = key["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    assert ref.get("optional") is not True, "without the Secret the pod must not start open"
    for path in (DEPLOY / name).glob("*.yaml"):  # the placeholder Secret is never applied with a variant
        assert all(doc["kind"] != "Secret" for doc in documents(path)), path


@pytest.mark.parametrize("name", VARIANTS)
def test_deployment_settings_are_the_service_settings(name: str) -> None:
    """Every CIFAR10_* variable is one service/settings.py reads, and the values start the service."""
    known = set(re.findall(r'"(CIFAR10_[A-Z_]+)"', (ROOT / "service" / "settings.py").read_text()))
    env = env_of(container(variant(name)["Deployment"]))
    for variable in env:
        assert not variable.startswith("CIFAR10_") or variable in known, f"{variable} is not a service setting"
    plain = {key: item["value"] for key, item in env.items() if "value" in item}
    assert "CIFAR10_MODEL" in plain
    settings = Settings.from_env(plain)  # raises SettingsError on a value the service would refuse
    assert settings.model_tag == "cifar10-cnn:latest"
    assert not settings.model_control
    if name == "gpu":
        assert settings.gpus == 1  # CUDA_VISIBLE_DEVICES=0: the pod's one GPU


@pytest.mark.parametrize("name", VARIANTS)
def test_deployment_resources_and_security(name: str) -> None:
    deployment = variant(name)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    ctr = container(deployment)
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(ctr["resources"][part]), part
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    assert ctr["securityContext"]["capabilities"]["drop"] == ["ALL"]
    gpus = ctr["resources"]["limits"].get("nvidia.com/gpu")
    image = ctr["image"]
    if name == "gpu":
        assert gpus == 1
        assert image.split("/")[-1].startswith("cifar10_classifier_gpu:")  # the bento of bentofile.gpu.yaml
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    else:
        assert gpus is None
        assert image.split("/")[-1].startswith("cifar10_classifier:")  # the bento of bentofile.yaml


@pytest.mark.parametrize("name", VARIANTS)
def test_service_hpa_and_pdb_point_at_the_deployment(name: str) -> None:
    resources = variant(name)
    deployment = resources["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)

    service = resources["Service"]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    assert selects(service["selector"], labels)
    [port] = service["ports"]
    assert port["port"] == 80 and port_number(container(deployment), port["targetPort"]) == PORT

    hpa = resources["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])

    pdb = resources["PodDisruptionBudget"]["spec"]
    assert selects(pdb["selector"]["matchLabels"], labels)
    assert "minAvailable" not in pdb or hpa["spec"]["minReplicas"] > pdb["minAvailable"], "a drain would block"


def test_the_variants_select_only_their_own_pods() -> None:
    cpu, gpu = variant("cpu"), variant("gpu")
    names = {kind: (cpu[kind]["metadata"]["name"], gpu[kind]["metadata"]["name"]) for kind in cpu}
    assert all(a != b for a, b in names.values()), names
    cpu_labels = cpu["Deployment"]["spec"]["template"]["metadata"]["labels"]
    gpu_labels = gpu["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert not selects(cpu["Service"]["spec"]["selector"], gpu_labels)
    assert not selects(gpu["Service"]["spec"]["selector"], cpu_labels)
