"""Start-up without a model, and `bentoml build` of the service with the model recorded."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PROJECT_ROOT, ModelStore, start_server


def test_missing_model_fails_with_one_line(cifar_model_store: ModelStore, tmp_path: Path) -> None:
    server = start_server(cifar_model_store, tmp_path / "serve.log", timeout=90, CIFAR10_MODEL="cifar10-cnn:doesnotexist")
    try:
        assert server.process.wait(timeout=60) != 0
    finally:
        server.stop()
    lines = [line for line in server.log_text().splitlines() if "doesnotexist" in line]
    assert len(lines) == 1, server.log_text()
    assert "cifar10-cnn:doesnotexist" in lines[0] and "train-cifar --optimizer adam" in lines[0]
    assert "Traceback" not in server.log_text()


def test_bento_build_holds_model_and_dockerfile(cifar_model_store: ModelStore, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = cifar_model_store.home / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    models = [m["tag"] for svc in info["services"] for m in svc["models"]]
    assert models == [cifar_model_store.tag]
    assert info["service"] == "service.service:CIFAR10Classifier"
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "tensorflow" in requirements and "pillow" in requirements
    assert (bento / "src" / "service" / "service.py").is_file() and (bento / "src" / "contract" / "card.py").is_file()
    assert not (bento / "src" / "training").exists()  # the service needs nothing of the training package
    assert not (bento / "src" / "clients").exists()
    assert final_user(dockerfile) not in ("root", "0")

    # the Dockerfile `bentoml containerize` would use (no Docker daemon needed to write it)
    final = tmp_path / "final.Dockerfile"
    code = "import bentoml, sys; bentoml.container.get_containerfile(sys.argv[1], output_path=sys.argv[2])"
    result = subprocess.run(
        [sys.executable, "-c", code, tag, str(final)],
        cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    user = final_user(final.read_text())
    assert user not in ("root", "0") and not user.startswith(("root:", "0:")), user


def final_user(dockerfile: str) -> str:
    """The user of the image's last stage: its last USER instruction ('root' if none)."""
    stages = re.split(r"(?im)^FROM\s", dockerfile)
    users = re.findall(r"(?im)^USER\s+(\S+)", stages[-1])
    return users[-1] if users else "root"


def test_gpu_bento_runs_as_non_root(cifar_model_store: ModelStore, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentofile.gpu.yaml", "--output", "tag"],
        cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    final = tmp_path / "gpu.Dockerfile"
    code = "import bentoml, sys; bentoml.container.get_containerfile(sys.argv[1], output_path=sys.argv[2])"
    result = subprocess.run(
        [sys.executable, "-c", code, tag, str(final)],
        cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = final.read_text()
    assert final_user(text) not in ("root", "0"), final_user(text)
    # no CUDA base image: the Debian base of the CPU image, with TensorFlow's CUDA wheels
    assert "nvidia/cuda" not in text and "FROM python:3.11" in text
    name, version = tag.split(":")
    requirements = (cifar_model_store.home / "bentos" / name / version / "env" / "python" / "requirements.txt").read_text()
    assert "tensorflow[and-cuda]" in requirements
