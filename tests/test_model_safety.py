"""A model file must never run code (issue 15): legacy imports are scanned, refused or converted.

Every model is built here, in a temporary folder, by a subprocess with tf-keras; nothing is mocked.
`train-cifar import` runs as a subprocess with its own BENTOML_HOME, its working folder a fresh
temporary one, so a marker file written by a model's code would show up there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ModelStore, start_server

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "images-tiny.tar.gz"
TRAIN_CIFAR = [sys.executable, "-c", "from training.cli import main; main()"]

# One script builds every file: the hostile .h5, a SavedModel whose layer writes a file
# through a TensorFlow op, harmless legacy models, and graph-only SavedModels for the op scan.
BUILD_SCRIPT = r"""
import os, sys
from pathlib import Path
import tensorflow as tf
import tf_keras as k

out, h5_marker, sm_marker = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
k.utils.set_random_seed(0)

def f(t, marker=h5_marker):  # the issue's Lambda; the marker path travels as a default argument
    import os
    os.system("touch " + marker)
    return t / 255

k.Sequential([k.layers.Input((32, 32, 3)), k.layers.Lambda(f), k.layers.Flatten(),
              k.layers.Dense(10, activation="softmax")]).save(out / "evil.h5")

class Writer(k.layers.Layer):
    def call(self, t):
        with tf.control_dependencies([tf.io.write_file(sm_marker, "pwned")]):
            return tf.identity(t) / 255.0

k.Sequential([k.layers.Input((32, 32, 3)), Writer(), k.layers.Flatten(),
              k.layers.Dense(10, activation="softmax")]).save(out / "evil_savedmodel", save_format="tf")

def harmless():
    inputs = k.Input((32, 32, 3))
    x = k.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.Dropout(0.1)(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(10, activation="softmax")(x), name="harmless")

harmless().save(out / "harmless.h5")
harmless().save(out / "harmless_savedmodel", save_format="tf")

class ReadsFiles(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        tf.py_function(lambda: None, [], [])
        return x + tf.cast(tf.strings.length(tf.io.read_file(sm_marker)), tf.float32) * 0.0

class WritesCheckpoint(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        tf.raw_ops.SaveV2(prefix=sm_marker, tensor_names=["x"], shape_and_slices=[""], tensors=[x])
        return x

tf.saved_model.save(ReadsFiles(), str(out / "graph_reads_files"))
tf.saved_model.save(WritesCheckpoint(), str(out / "graph_writes_checkpoint"))
"""

# Loads what the store holds the way the service does (no trust), and the original with tf-keras,
# and compares them on the fixture's test images with the card's input scaling.
PROBE_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
from contract.card import INPUT_SCALINGS
from contract.predictor import UntrustedModel, load_predictor, read_card
from training.data import load_dataset

tag, original = sys.argv[1], Path(sys.argv[2])
card = read_card(tag)[1]
answer = {"card": card.to_metadata()}
try:
    predictor = load_predictor(tag, trust_model_code=False)
except UntrustedModel as error:
    answer["untrusted"] = str(error)
else:
    import tf_keras
    images = load_dataset(sys.argv[3], 0.0, 0, None).x_test
    scale, offset = INPUT_SCALINGS[card.input_scaling]
    expected = tf_keras.models.load_model(original, compile=False)(images * scale + offset, training=False).numpy()
    served = predictor.predict(images)
    answer["max_difference"] = float(np.abs(served - expected).max())
    answer["same_top_class"] = bool((served.argmax(1) == expected.argmax(1)).all())
print("PROBE=" + json.dumps(answer))
"""


def quiet_env(home: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment with its own model store and the project importable from any folder."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("CIFAR10_TRUST_MODEL_CODE", None)
    env.update(extra)
    return env


def error_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's native start-up log (absl/C++ lines no environment setting silences)."""
    def native(line: str) -> bool:
        return line.startswith("WARNING: All log messages before absl::InitializeLog()") or (
            len(line) > 5 and line[0] in "IWEF" and line[1:5].isdigit()
        )

    return [line for line in stderr.splitlines() if line.strip() and not native(line)]


def import_model(home: Path, workdir: Path, model: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`train-cifar import MODEL --data <fixture> FLAGS` in `workdir`, storing into `home`. Reusable."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*TRAIN_CIFAR, "import", str(model), "--data", str(DATA), *flags], cwd=workdir,
                          env=quiet_env(home), capture_output=True, text=True, timeout=300, check=False)


def imported_tag(stdout: str) -> str:
    """The `name:version` an import printed."""
    return stdout.rsplit(" as ", 1)[1].split()[0].strip(" .)")


def probe(home: Path, tag: str, original: Path) -> dict:
    """The stored card, and how the stored model's predictions compare with the original's. Reusable."""
    result = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, tag, str(original), str(DATA)], cwd=ROOT,
                            env=quiet_env(home), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("PROBE=", 1)[1])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every model file, built once, and the marker files their code would write."""
    build = tmp_path_factory.mktemp("build")
    markers = tmp_path_factory.mktemp("markers")
    paths = {"build": build, "h5_marker": markers / "PWNED_H5", "sm_marker": markers / "PWNED_SM"}
    result = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, str(build), str(paths["h5_marker"]), str(paths["sm_marker"])],
        cwd=build, env=quiet_env(build / "unused-store"), capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return paths


@pytest.fixture()
def markers(built: dict[str, Path]) -> Iterator[tuple[Path, Path]]:
    """The two marker files, absent when a test starts (building the Lambda model ran it once) and after."""
    paths = (built["h5_marker"], built["sm_marker"])
    for marker in paths:
        marker.unlink(missing_ok=True)
    yield paths
    for marker in paths:
        marker.unlink(missing_ok=True)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "bentoml"


def assert_refused(result: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit 2 with exactly one error line that names what was found."""
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("train-cifar: error:"), lines
    assert "import refused (use --trust-model-code" in lines[0] and all(name in lines[0] for name in names), lines


# --- the scan alone ------------------------------------------------------------------------------


def test_scan_finds_code_in_configs_without_deserializing() -> None:
    from training.model_safety import scan_config

    dense = {"class_name": "Dense", "config": {"name": "d", "units": 2}}
    lambda_layer = {"class_name": "Lambda", "config": {"name": "sneaky", "function": ["4wEAAA==", None, None]}}
    wrapped = {"class_name": "TimeDistributed", "config": {"name": "td", "layer": lambda_layer}}
    custom_cell = {"class_name": "Bidirectional", "config": {"name": "bi", "layer": {
        "class_name": "RNN", "config": {"name": "rnn", "cell": {"class_name": "MyCell", "config": {"name": "c"}}}}}}
    nested = {"class_name": "Sequential", "config": {"name": "inner", "layers": [dense, wrapped]}}
    model = {"class_name": "Functional", "config": {"name": "m", "layers": [nested, custom_cell]}}
    assert scan_config(model) == ["Lambda layer 'sneaky'", "custom class 'MyCell' ('c')"]
    foreign = {"class_name": "Dense", "module": "evil.layers", "registered_name": "evil>Dense", "config": {"name": "x"}}
    assert scan_config(foreign) == ["module 'evil.layers' ('x')", "registered class 'evil>Dense' ('x')"]
    math_op = {"class_name": "TFOpLambda", "config": {"name": "tf.math.multiply", "function": "math.multiply"}}
    file_op = {"class_name": "TFOpLambda", "config": {"name": "tf.io.write_file", "function": "io.write_file"}}
    assert scan_config(math_op) == [] and scan_config(file_op) == ["TFOpLambda layer 'tf.io.write_file'"]
    assert scan_config(nested | {"config": {"name": "ok", "layers": [dense]}}) == []


def test_scan_of_built_files(built: dict[str, Path]) -> None:
    from training.model_safety import OP_DENYLIST, TF_SCAN_DENYLIST, scan_model

    build = built["build"]
    assert scan_model(build / "evil.h5", "tf-keras-h5") == ["Lambda layer 'lambda'"]
    assert scan_model(build / "evil_savedmodel", "tf-keras-savedmodel") == [
        "op WriteFile", "custom class 'Writer' ('writer')"
    ]
    assert scan_model(build / "graph_reads_files", "tf-keras-savedmodel") == ["op EagerPyFunc", "op ReadFile"]
    assert scan_model(build / "graph_writes_checkpoint", "tf-keras-savedmodel") == [
        "op SaveV2 outside the checkpoint functions"
    ]
    # every SavedModel has SaveV2/RestoreV2 in its own save/restore functions: those are allowed
    assert scan_model(build / "harmless.h5", "tf-keras-h5") == []
    assert scan_model(build / "harmless_savedmodel", "tf-keras-savedmodel") == []
    assert TF_SCAN_DENYLIST <= OP_DENYLIST


def test_every_denied_op_exists_in_this_tensorflow() -> None:
    import tensorflow as tf

    from training.model_safety import (
        CHECKPOINT_READ_OPS,
        CHECKPOINT_WRITE_OPS,
        OP_DENYLIST,
    )

    assert not sorted((OP_DENYLIST | CHECKPOINT_READ_OPS | CHECKPOINT_WRITE_OPS) - set(dir(tf.raw_ops)))


# --- train-cifar import ----------------------------------------------------------------------------


def test_hostile_h5_is_refused_and_its_lambda_never_runs(
    built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    result = import_model(home, tmp_path / "cwd", built["build"] / "evil.h5")
    assert_refused(result, "evil.h5 holds code: Lambda layer 'lambda'")
    assert not markers[0].exists()
    assert not (home / "models").exists() or not any((home / "models").iterdir())


def test_hostile_savedmodel_is_refused_and_its_ops_never_run(
    built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    result = import_model(home, tmp_path / "cwd", built["build"] / "evil_savedmodel")
    assert_refused(result, "op WriteFile", "custom class 'Writer'")
    assert not markers[1].exists()


def test_trusted_hostile_h5_imports_as_legacy_and_is_not_loaded_without_consent(
    built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    result = import_model(home, tmp_path / "cwd", built["build"] / "evil.h5", "--trust-model-code")
    assert result.returncode == 0, result.stderr[-3000:]
    assert markers[0].exists()  # trusted: its code ran during the import's evaluation, as the user accepted
    markers[0].unlink()
    assert "warning: evil.h5 holds code (Lambda layer 'lambda'); importing it anyway" in result.stdout
    answer = probe(home, imported_tag(result.stdout), built["build"] / "evil.h5")
    card = answer["card"]
    assert card["trusted_code"] is True and card["format"] == "tf-keras-h5" and card["model_file"] == "model.h5"
    assert card["config"]["code_found"] == ["Lambda layer 'lambda'"]
    assert "was imported with --trust-model-code" in answer["untrusted"]
    assert not markers[0].exists()  # the probe read the card and refused before loading the file


@pytest.mark.parametrize("kind", ["h5", "savedmodel"])
def test_harmless_legacy_model_is_converted_with_the_same_predictions(
    kind: str, built: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    original = built["build"] / ("harmless.h5" if kind == "h5" else "harmless_savedmodel")
    scaling = ["--input-scaling", "0-1"] if kind == "h5" else []  # savedmodel: "auto" tries each on the data
    result = import_model(home, tmp_path / "cwd", original, *scaling)
    assert result.returncode == 0, result.stderr[-3000:]
    source = {"h5": "tf-keras-h5", "savedmodel": "tf-keras-savedmodel"}[kind]
    assert f"({source} converted to keras, input " in result.stdout
    answer = probe(home, imported_tag(result.stdout), original)
    card = answer["card"]
    assert card["format"] == "keras" and card["model_file"] == "model.keras" and card["trusted_code"] is False
    assert card["input_scaling"] in ({"0-1"} if kind == "h5" else {"0-1", "-1-1"})  # auto: a float scaling
    assert card["config"]["converted_from"] == source and card["config"]["format"] == source
    assert "untrusted" not in answer, answer  # served in safe mode, no consent needed
    assert answer["max_difference"] < 1e-4 and answer["same_top_class"], answer
    name, version = imported_tag(result.stdout).split(":")
    plot = home / "models" / name / version / "confusion_matrix.png"  # an import with data stores its plot
    assert card["plots"] == ["confusion_matrix.png"] and plot.read_bytes().startswith(b"\x89PNG")


# --- serving ----------------------------------------------------------------------------------------


def stored_entry(home: Path, workdir: Path, model: Path, *flags: str) -> ModelStore:
    """Import `model` into `home` and describe the entry for conftest's `start_server`. Reusable."""
    result = import_model(home, workdir, model, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return ModelStore(home=home, tag=imported_tag(result.stdout))


def test_service_refuses_a_trusted_entry_without_consent(
    built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    entry = stored_entry(home, tmp_path / "cwd", built["build"] / "evil.h5", "--trust-model-code")
    markers[0].unlink(missing_ok=True)  # written by the trusted import's evaluation
    server = start_server(entry, tmp_path / "serve.log", timeout=120, CIFAR10_MODEL=entry.tag)
    try:
        assert server.returncode is not None, "the service started with an entry that needs trust"
        log = server.log_text()
        assert "was imported with --trust-model-code" in log and "CIFAR10_TRUST_MODEL_CODE=1" in log, log[-3000:]
        assert not markers[0].exists(), "the model's code ran in the service"
    finally:
        server.stop()


def test_converted_legacy_model_serves_the_original_predictions(
    built: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from training.data import load_dataset

    original = built["build"] / "harmless.h5"
    entry = stored_entry(home, tmp_path / "cwd", original, "--input-scaling", "0-1")
    answer = probe(home, entry.tag, original)
    assert "untrusted" not in answer
    images = load_dataset(str(DATA), 0.0, 0, None).x_test[:4]
    files = []
    for index, image in enumerate(images):
        path = tmp_path / f"{index}.png"
        Image.fromarray(image).save(path)
        files.append(("images", (path.name, path.read_bytes(), "image/png")))
    server = start_server(entry, tmp_path / "serve.log", timeout=180, CIFAR10_MODEL=entry.tag)
    try:
        server.require_running()
        served = httpx.post(f"{server.url}/classify_batch", files=files, data={"top_k": "10"}, timeout=60)
    finally:
        server.stop()
    assert served.status_code == 200, served.text
    expected = expected_probabilities(original, images)
    for row, answer_row in zip(expected, served.json()):
        got = {prediction["label"]: prediction["probability"] for prediction in answer_row["top_k"]}
        assert np.allclose([got[name] for name in CLASSES], row, atol=1e-4), (got, row)


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def expected_probabilities(original: Path, images: np.ndarray) -> np.ndarray:
    """The legacy model's own probabilities, computed by tf-keras in a subprocess (0-1 scaling)."""
    code = ("import sys, numpy as np, tf_keras; x = np.load(sys.argv[2]);"
            "print(tf_keras.models.load_model(sys.argv[1], compile=False)(x / 255.0).numpy().tolist())")
    stash = original.parent / "probe_images.npy"
    np.save(stash, images)
    result = subprocess.run([sys.executable, "-c", code, str(original), str(stash)], capture_output=True,
                            text=True, env=quiet_env(original.parent / "unused-store"), timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.array(json.loads(result.stdout.strip().splitlines()[-1]))
