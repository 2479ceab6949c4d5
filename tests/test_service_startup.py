"""Start-up without a model, and `bentoml build` of the service with the model recorded."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PROJECT_ROOT, ModelStore, service_in_process


def test_missing_model_fails_with_one_line(cifar_model_store: ModelStore) -> None:
    """The service's start-up in a plain process (the module-level check `bentoml serve` runs first, whose
    BentoMLException BentoML prints as one line): the error names the tag and how to train a model."""
    done = service_in_process(cifar_model_store, [], CIFAR10_MODEL="cifar10-cnn:doesnotexist")
    assert done.returncode != 0
    raised = done.stderr.strip().splitlines()[-1]
    assert raised.startswith("bentoml.exceptions.NotFound: "), done.stderr[-3000:]
    assert "cifar10-cnn:doesnotexist" in raised and "train-cifar --optimizer adam" in raised
    assert done.stderr.count("doesnotexist") == 1  # only the one line names it: no second message


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
    user = final_user(containerfile(cifar_model_store, tag, tmp_path / "final.Dockerfile"))
    assert user not in ("root", "0") and not user.startswith(("root:", "0:")), user


def containerfile(store: ModelStore, tag: str, path: Path) -> str:
    """The Dockerfile `bentoml containerize` would build the bento `tag` from."""
    code = "import bentoml, sys; bentoml.container.get_containerfile(sys.argv[1], output_path=sys.argv[2])"
    result = subprocess.run([sys.executable, "-c", code, tag, str(path)], cwd=PROJECT_ROOT, env=store.env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return path.read_text()


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
    text = containerfile(cifar_model_store, tag, tmp_path / "gpu.Dockerfile")
    assert final_user(text) not in ("root", "0"), final_user(text)
    # no CUDA base image: the Debian base of the CPU image, with TensorFlow's CUDA wheels
    assert "nvidia/cuda" not in text and "FROM python:3.11" in text
    name, version = tag.split(":")
    requirements = (cifar_model_store.home / "bentos" / name / version / "env" / "python" / "requirements.txt").read_text()
    assert "tensorflow[and-cuda]" in requirements
