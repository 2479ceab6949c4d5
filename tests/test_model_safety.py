"""A model file must never run code (issues 15 and 20): legacy imports are scanned, refused or converted.

Every model is built here, in a temporary folder, by one subprocess with tf-keras; nothing is mocked.
`train-cifar import` runs in this process (tests/inprocess.py) with its own BENTOML_HOME, working folder and
temporary folder: a model's code that ran would run here and write its marker file, which the tests look for.
Two imports stay subprocesses: a file whose weights come from a FIFO would block an import that reads
them, and only a subprocess can end at its timeout (this process could not). The service's start-up runs in
a subprocess too (importing service.service declares its models once per process).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ModelStore, in_process_answers, service_in_process
from contract.calibration import calibrate, calibrated_predict
from inprocess import Run, bentoml_home, process_state_kept, train_cifar

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "images-tiny.tar.gz"
TRAIN_CIFAR = [sys.executable, "-c", "from training.cli import main; main()"]

# One script builds every file: the issue's hostile .h5, a SavedModel whose layer writes a file
# through a TensorFlow op, harmless legacy models, graph-only SavedModels for the op scan, and issue 20's
# files (each shown to do its harm when tf-keras loads it, before the import is tried).
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

# Issue 20, case 1: a layer whose keras_metadata.pb says plain Layer with no config; tf-keras revives it
# from its saved graph, where DatasetFromGraph runs a dataset graph held as a string: it writes a file.
import json, shutil
import h5py, numpy as np
from tf_keras.protobuf import saved_metadata_pb2

def write_marker(x):
    with tf.control_dependencies([tf.io.write_file(sm_marker, "pwned")]):
        return tf.identity(x)

writes = tf.data.Dataset.from_tensors(tf.constant(0)).map(write_marker)
hidden_graph = writes._as_serialized_graph().numpy()

class Hidden(k.layers.Layer):
    def call(self, t):
        # the slice depends on the input, so grappler does not fold the dataset into a constant
        graph = tf.strings.substr(hidden_graph, 0, len(hidden_graph) + tf.cast(tf.reduce_max(t) * 0.0, tf.int32))
        dataset = tf.data.experimental.from_variant(tf.raw_ops.DatasetFromGraph(graph_def=graph), writes.element_spec)
        with tf.control_dependencies([dataset.reduce(tf.constant(0), lambda state, _: state)]):
            return tf.identity(t) / 255.0

k.Sequential([k.layers.Input((32, 32, 3)), Hidden(), k.layers.Flatten(),
              k.layers.Dense(10, activation="softmax")]).save(out / "hidden_savedmodel", save_format="tf")

def plain(value):
    if isinstance(value, dict):
        if value.get("class_name") == "Hidden":
            return {"class_name": "Layer", "config": {"name": value["config"]["name"]}}
        return {key: plain(item) for key, item in value.items()}
    return [plain(item) for item in value] if isinstance(value, list) else value

metadata_file = out / "hidden_savedmodel" / "keras_metadata.pb"
metadata = saved_metadata_pb2.SavedMetadata()
metadata.ParseFromString(metadata_file.read_bytes())
for node in metadata.nodes:
    data = json.loads(node.metadata)
    if data.get("class_name") == "Hidden":
        data["class_name"] = "Layer"
        del data["config"]
    node.metadata = json.dumps(plain(data))
metadata_file.write_bytes(metadata.SerializeToString())
k.models.load_model(out / "hidden_savedmodel", compile=False)(np.zeros((1, 32, 32, 3), np.float32))
assert os.path.exists(sm_marker), "the hidden graph did not run when tf-keras loaded the model"
os.remove(sm_marker)

# Case 2: the Dense kernel's bytes come from a local file, through HDF5 external storage or a virtual dataset.
secret = out / "secret.bin"
secret.write_bytes(b"SECRET!!" * 20)  # 160 bytes: the (4, 10) float32 kernel

def swap_kernel(target, make):
    shutil.copyfile(out / "harmless.h5", out / target)
    with h5py.File(out / target, "r+") as file:
        names = []
        file["model_weights"].visit(names.append)
        name = "model_weights/" + next(name for name in names if "dense" in name and name.endswith("kernel:0"))
        shape = file[name].shape
        del file[name]
        make(file, name, shape)
    with h5py.File(out / target, "r") as file:  # as a loader reads the weights: HDF5 reads the other file
        assert file[name][()].tobytes() == secret.read_bytes(), target

swap_kernel("external_storage.h5",
            lambda file, name, shape: file.create_dataset(name, shape, "float32", external=[(str(secret), 0, 160)]))
with h5py.File(out / "vds_source.h5", "w") as source:
    source["data"] = np.frombuffer(secret.read_bytes(), np.float32).reshape(4, 10)

def virtual(file, name, shape):
    layout = h5py.VirtualLayout(shape, "float32")
    layout[:] = h5py.VirtualSource(str(out / "vds_source.h5"), "data", shape)
    file.create_virtual_dataset(name, layout)

swap_kernel("virtual_dataset.h5", virtual)
for read_by_the_attack in (secret, out / "vds_source.h5"):  # a FIFO: an import that reads it hangs
    read_by_the_attack.unlink()
    os.mkfifo(read_by_the_attack)

# Case 3: a model_config that is not UTF-8
shutil.copyfile(out / "harmless.h5", out / "not_utf8.h5")
with h5py.File(out / "not_utf8.h5", "r+") as file:
    file.attrs["model_config"] = np.bytes_(b"\xff\xfe" + file.attrs["model_config"].encode())
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


def import_model(home: Path, workdir: Path, model: Path, *flags: str, tmpdir: Path | None = None) -> Run:
    """`train-cifar import MODEL --data <fixture> FLAGS` in this process, in `workdir`, storing into `home`, its
    temporary folders in `tmpdir` when given. Reusable."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(workdir), temporary_folders_in(tmpdir), warnings.catch_warnings(record=True) as caught:
        run = train_cifar("import", str(model), "--data", str(DATA), *flags, home=home)
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return Run(run.returncode, run.stdout, run.stderr + shown)  # on stderr, as a process shows its warnings


@contextlib.contextmanager
def temporary_folders_in(folder: Path | None) -> Iterator[None]:
    """`tempfile`'s folder is `folder` for the block (what TMPDIR does for a new process), then back."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def import_in_subprocess(home: Path, workdir: Path, model: Path, *flags: str,
                         tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`import_model` in a process of its own, which its timeout ends if the import blocks."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra = {}
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        extra["TMPDIR"] = str(tmpdir)
    return subprocess.run([*TRAIN_CIFAR, "import", str(model), "--data", str(DATA), *flags], cwd=workdir,
                          env=quiet_env(home, **extra), capture_output=True, text=True, timeout=300, check=False)


def imported_tag(stdout: str) -> str:
    """The `name:version` an import printed."""
    return stdout.rsplit(" as ", 1)[1].split()[0].strip(" .)")


def probe(home: Path, tag: str, original: Path) -> dict:
    """The stored card, and how the stored model's predictions (loaded as the service does, no trust) compare
    with the original's under tf-keras, on the fixture's test images with the card's input scaling. Reusable."""
    import tf_keras

    from contract.card import INPUT_SCALINGS
    from contract.predictor import UntrustedModel, load_predictor, read_card
    from training.data import load_dataset

    with bentoml_home(home):
        card = read_card(tag)[1]
        answer: dict = {"card": card.to_metadata()}
        try:
            predictor = load_predictor(tag, trust_model_code=False)
        except UntrustedModel as error:
            return answer | {"untrusted": str(error)}
        images = load_dataset(str(DATA), 0.0, 0, None).x_test
        scale, offset = INPUT_SCALINGS[card.input_scaling]
        expected = tf_keras.models.load_model(original, compile=False)(images * scale + offset, training=False).numpy()
        served = calibrated_predict(predictor.logits, None, None)(images)["probabilities"]  # the registry's call, uncalibrated
    return answer | {"max_difference": float(np.abs(served - expected).max()),
                     "same_top_class": bool((served.argmax(1) == expected.argmax(1)).all())}


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


@pytest.fixture(autouse=True)
def in_process_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What quiet_env gives an import's subprocess, for those in this process; what they change, put back."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("CIFAR10_TRUST_MODEL_CODE", raising=False)
    with process_state_kept():
        yield


def assert_store_empty(home: Path) -> None:
    """No entry was stored."""
    assert not (home / "models").exists() or not any((home / "models").iterdir())


def assert_refused(result: Run | subprocess.CompletedProcess[str], *names: str) -> None:
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


def dense_kernel(path: Path) -> str:
    """The HDF5 name of the Dense kernel in a tf-keras `.h5` (read with h5py; no dataset is read)."""
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as file:
        file["model_weights"].visit(names.append)
    return "model_weights/" + next(name for name in names if "dense" in name and name.endswith("kernel:0"))


def test_scan_of_issue_20_files(built: dict[str, Path]) -> None:
    from training.model_safety import scan_model

    build = built["build"]
    hidden = scan_model(build / "hidden_savedmodel", "tf-keras-savedmodel")
    assert "'hidden' saved without a config" in hidden, hidden
    assert "plain Layer 'hidden' (its class was not saved)" in hidden, hidden
    assert scan_model(build / "external_storage.h5", "tf-keras-h5") == [
        f"HDF5 external storage for '{dense_kernel(build / 'external_storage.h5')}' (its data is in another file)"
    ]
    assert scan_model(build / "virtual_dataset.h5", "tf-keras-h5") == [
        f"HDF5 virtual dataset '{dense_kernel(build / 'virtual_dataset.h5')}' (its data is in other files)"
    ]
    assert scan_model(build / "not_utf8.h5", "tf-keras-h5") == ["a model config that is not UTF-8"]


def test_scan_refuses_hdf5_links_and_plugin_filters(built: dict[str, Path], tmp_path: Path) -> None:
    import h5py

    from training.model_safety import scan_h5

    path = tmp_path / "links.h5"
    shutil.copyfile(built["build"] / "harmless.h5", path)
    kernel = dense_kernel(path)
    bias = kernel.replace("kernel:0", "bias:0")
    with h5py.File(path, "r+") as file:
        data = file[kernel][()]
        del file[kernel], file[bias]
        file["stash"] = data
        file[kernel] = h5py.SoftLink("/stash")
        file[bias] = h5py.ExternalLink("elsewhere.h5", "/bias")
        file.create_dataset("filtered", data=data, chunks=data.shape, compression=33333, allow_unknown_filter=True)
    assert set(scan_h5(path)) == {f"HDF5 soft link '{kernel}'", f"HDF5 external link '{bias}' (to another file)",
                                  "HDF5 filter 33333 on 'filtered' (a plugin library)"}


def test_configs_that_are_no_keras_model_or_read_files_are_findings() -> None:
    from training.model_safety import config_text_findings, refusal

    assert config_text_findings("[" * 100_000) == ["a model config that is not JSON"]
    assert config_text_findings("[1, 2]") == ["a model config that is not a Keras model"]
    lookup = {"class_name": "StringLookup", "config": {"name": "words", "vocabulary": "/etc/passwd"}}
    assert config_text_findings(json.dumps(lookup)) == ["StringLookup 'words' reads its vocabulary from a file"]
    unsaved = {"class_name": "Hidden", "name": "h", "config": {"layer was saved without config": True}}
    assert config_text_findings(json.dumps({"class_name": "Functional", "config": {"layers": [unsaved]}})) == [
        "'h' saved without a config"
    ]
    line = refusal(Path("x.h5"), ["Lambda layer 'a\nb\x1b[2J'"])
    assert "\n" not in line and "\x1b" not in line and "'a\\nb\\x1b[2J'" in line, line


def test_private_copy_is_private_and_follows_no_link(built: dict[str, Path], tmp_path: Path) -> None:
    from training.importer import ModelImportError, private_copy

    original = built["build"] / "harmless_savedmodel"
    copy = private_copy(original, tmp_path / "copy", "tf-keras-savedmodel")
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o700
    files = sorted(path.relative_to(original) for path in original.rglob("*") if path.is_file())
    assert files and files == sorted(path.relative_to(copy) for path in copy.rglob("*") if path.is_file())
    assert all((copy / name).read_bytes() == (original / name).read_bytes() for name in files)
    linked = tmp_path / "linked"
    shutil.copytree(original, linked)
    (linked / "variables" / "extra").symlink_to("/etc/passwd")
    with pytest.raises(ModelImportError, match=r"^linked/variables/extra is a symbolic link; import refused$"):
        private_copy(linked, tmp_path / "copy2", "tf-keras-savedmodel")
    (linked / "variables" / "extra").unlink()
    os.mkfifo(linked / "variables" / "extra")
    with pytest.raises(ModelImportError, match=r"^linked/variables/extra is not a plain file or folder"):
        private_copy(linked, tmp_path / "copy3", "tf-keras-savedmodel")
    (linked / "variables" / "extra").unlink()
    os.link(tmp_path / "copy" / "harmless_savedmodel" / "saved_model.pb", linked / "variables" / "extra")
    with pytest.raises(ModelImportError, match=r"^linked/variables/extra is a hard link to a file elsewhere"):
        private_copy(linked, tmp_path / "copy4", "tf-keras-savedmodel")


# --- train-cifar import ----------------------------------------------------------------------------


def test_hostile_h5_is_refused_and_its_lambda_never_runs(
    built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    result = import_model(home, tmp_path / "cwd", built["build"] / "evil.h5")
    assert_refused(result, "evil.h5 holds code: Lambda layer 'lambda'")
    assert not markers[0].exists()
    assert_store_empty(home)


def test_hostile_savedmodel_is_refused_and_its_ops_never_run(
    built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    result = import_model(home, tmp_path / "cwd", built["build"] / "evil_savedmodel")
    assert_refused(result, "op WriteFile", "custom class 'Writer'")
    assert not markers[1].exists()


READ_FROM_A_FIFO = {"external_storage.h5", "virtual_dataset.h5"}  # an import that read them would block


@pytest.mark.parametrize(("model", "finding"), [
    ("hidden_savedmodel", "'hidden' saved without a config"),  # case 1: its graph would write the marker
    ("external_storage.h5", "HDF5 external storage for 'model_weights/dense"),  # case 2: reads secret.bin,
    ("virtual_dataset.h5", "HDF5 virtual dataset 'model_weights/dense"),  # a FIFO now: reading it hangs
    ("not_utf8.h5", "a model config that is not UTF-8"),  # case 3: no traceback
])
def test_issue_20_files_are_refused_and_nothing_is_written_or_read(
    model: str, finding: str, built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    importer = import_in_subprocess if model in READ_FROM_A_FIFO else import_model
    result = importer(home, tmp_path / "cwd", built["build"] / model, tmpdir=tmp_path / "tmp")
    assert_refused(result, f"{model} holds code: ", finding)
    assert not markers[1].exists()
    assert_store_empty(home)
    assert not any((tmp_path / "cwd").iterdir()) and not any((tmp_path / "tmp").iterdir())  # no copy left


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
    plot = home / "models" / name / version / "confusion_matrix.png"  # an import with data stores its plots:
    assert card["plots"] == ["confusion_matrix.png", "reliability.png"]  # and calibrates (issue 22)
    assert plot.read_bytes().startswith(b"\x89PNG")


# --- serving ----------------------------------------------------------------------------------------


def stored_entry(home: Path, workdir: Path, model: Path, *flags: str) -> ModelStore:
    """Import `model` into `home` and describe the entry for conftest's servers and `service_in_process`. Reusable."""
    result = import_model(home, workdir, model, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return ModelStore(home=home, tag=imported_tag(result.stdout))


def test_service_refuses_a_trusted_entry_without_consent(
    built: dict[str, Path], markers: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    """The service's start-up (in a plain process: the same module-level check `bentoml serve` runs first)."""
    entry = stored_entry(home, tmp_path / "cwd", built["build"] / "evil.h5", "--trust-model-code")
    markers[0].unlink(missing_ok=True)  # written by the trusted import's evaluation
    done = service_in_process(entry, [], CIFAR10_MODEL=entry.tag)
    assert done.returncode != 0, "the service started with an entry that needs trust"
    assert "was imported with --trust-model-code" in done.stderr and "CIFAR10_TRUST_MODEL_CODE=1" in done.stderr, (
        done.stderr[-3000:])
    assert not markers[0].exists(), "the model's code ran in the service"


def test_converted_legacy_model_serves_the_original_predictions(
    built: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    """The service's own classifier (start-up, decoding, batching) answers as the original tf-keras model."""
    from PIL import Image

    from training.data import load_dataset

    original = built["build"] / "harmless.h5"
    entry = stored_entry(home, tmp_path / "cwd", original, "--input-scaling", "0-1")
    answer = probe(home, entry.tag, original)
    assert "untrusted" not in answer
    images = load_dataset(str(DATA), 0.0, 0, None).x_test[:4]
    files = []
    for index, image in enumerate(images):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(files[-1])
    served = in_process_answers(service_in_process(entry, files, CIFAR10_MODEL=entry.tag))
    # the service answers calibrated probabilities: the original's, at the temperature the import fitted
    expected = calibrate(expected_probabilities(original, images), answer["card"]["calibration"]["temperature"])
    for row, answer_row in zip(expected, served):
        got = {prediction["label"]: prediction["probability"] for prediction in answer_row["top_k"]}
        assert np.allclose([got[name] for name in CLASSES], row, atol=1e-4), (got, row)


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def expected_probabilities(original: Path, images: np.ndarray) -> np.ndarray:
    """The legacy model's own probabilities, computed by tf-keras (0-1 scaling)."""
    import tf_keras

    return tf_keras.models.load_model(original, compile=False)(images / 255.0).numpy()
