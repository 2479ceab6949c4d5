"""Shared pytest fixtures."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# BEGIN service fixtures (owned by the serving half: service/, clients/, tests/test_service*.py)
#
# `cifar_model_store`: a temporary BENTOML_HOME holding a tiny, really trained `cifar10-cnn`
#     model (trained on the tiny CIFAR-10 fixture, calibrated by training.calibration, unsure on
#     noise: see tiny_network) saved through training.store.save_model with its model card, and the same model in
#     the metadata format written before the card (no calibration; made in a subprocess so this
#     pytest process's bentoml keeps its own home).
# `cifar_server`: a real `bentoml serve service.service:CIFAR10Classifier` on a free port, a
#     benchmarks.harness.ServerProcess (`start_server` starts more, with other settings).
# `image_bytes`: small images in every format/mode the service accepts, built with Pillow.
# ---------------------------------------------------------------------------------------------

import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their environment; rich would fix every console
# made at import to 80 columns, and the tests that read wide tables or one-line summaries give CliRunner their width
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
# train-cifar caches decoded data sets; the tests' runs go to a folder of their own, not the user's cache
os.environ["CIFAR_SERVE_CACHE"] = tempfile.mkdtemp(prefix="cifar-serve-test-cache-")
if str(PROJECT_ROOT) not in sys.path:  # `benchmarks` is not installed: import it from the checkout
    sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks.harness import SERVICE_IMPORT, STARTS_FILE_ENV, ServerProcess

MODEL_NAME = "cifar10-cnn"


LEGACY_MODEL_NAME = "cifar10-legacy"


def make_tiny_model(home: str, workdir: str) -> tuple[str, str]:
    """The session's tiny model, stored twice: with its model card, and with metadata exactly as
    entries were written before the card existed. Returns both tags (runs in a subprocess)."""
    tag, path, card = store_tiny_model(home, workdir, MODEL_NAME, seed=0)
    return tag, store_unversioned_entry(path, card)


FIXTURES = Path(__file__).parent / "fixtures"


def noise_images(rng: np.random.Generator, count: int) -> np.ndarray:
    """Uniform noise and Gaussian noise (sigma 64 around mid-grey), half each: what no model should
    take for one of the ten classes."""
    uniform = rng.integers(0, 256, (count // 2, 32, 32, 3), dtype=np.uint8)
    gaussian = np.clip(rng.normal(128, 64, (count - count // 2, 32, 32, 3)), 0, 255).astype(np.uint8)
    return np.concatenate([uniform, gaussian])


def tiny_network() -> "keras.Model":  # noqa: F821
    """16 convolution filters for the classes, their logits scaled by a fixed (untrained) gate on the
    image's roughness, the mean absolute difference from its 3x3 local mean: near 1 for photos, about
    0.01 for noise. A real CIFAR-10 network learns to be unsure on noise; a model trained for seconds on
    100 images cannot, so the gate gives the tiny one that property (nearly flat, still distinct answers
    on noise). Built-in layers only, so the service loads it in safe mode."""
    import keras

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, activation="relu")(x)))
    detail = keras.layers.Subtract()([x, keras.layers.AveragePooling2D(3, strides=1, padding="same")(x)])
    roughness = keras.layers.Add()([keras.layers.ReLU()(detail), keras.layers.ReLU()(keras.layers.Rescaling(-1.0)(detail))])
    gate = keras.layers.Dense(1, activation="sigmoid", trainable=False, kernel_initializer=keras.initializers.Constant(-10.0),
                              bias_initializer=keras.initializers.Constant(3.0))
    scaled = keras.layers.Multiply()([logits, gate(keras.layers.GlobalAveragePooling2D()(roughness))])
    return keras.Model(inputs, keras.layers.Activation("softmax")(scaled), name="tiny_cnn")


def store_tiny_model(home: str, workdir: str, name: str, seed: int) -> tuple[str, Path, "ModelCard"]:  # noqa: F821
    """Train the tiny model on the tiny CIFAR-10 fixture (and its mirror images), calibrate it as
    train-cifar does (training.calibration: temperature and threshold on held-out images, the fixture's
    test batch; measured on the image tree's test photos) and store it with its card."""
    os.environ["BENTOML_HOME"] = home
    import keras

    from contract.card import CIFAR10_CLASSES, DataInfo, Metrics, ModelCard
    from contract.predictor import compile_inference
    from training.calibration import Predictions, fit_calibration
    from training.config import OOD_FLAG_RATE, OOD_SCORE
    from training.data import load_dataset
    from training.store import save_model

    keras.utils.set_random_seed(seed)
    data = load_dataset(str(FIXTURES / "cifar-10-python-tiny.tar.gz"), validation_split=0.0, seed=seed)
    unseen = load_dataset(str(FIXTURES / "images-tiny"), validation_split=0.0, seed=seed)
    x_train, y_train = np.concatenate([data.x_train, data.x_train[:, :, ::-1]]), np.concatenate([data.y_train] * 2)
    model = tiny_network()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
    path = Path(workdir) / f"{name}-{seed}.keras"
    model.save(path)
    served = compile_inference(model, "uint8", flip_tta=True)  # the probabilities exactly as the service computes them
    calibration = fit_calibration(Predictions(served(data.x_test), data.y_test),
                                  Predictions(served(unseen.x_test), unseen.y_test), OOD_FLAG_RATE, OOD_SCORE)
    card = ModelCard(
        class_names=CIFAR10_CLASSES,
        architecture="tiny_cnn",
        parameters=int(model.count_params()),
        preprocessing="rescale 1/255 inside the model",
        flip_tta=True,
        config={"model": "tiny", "optimizer": "adam", "lr": 1e-2, "epochs": 20, "batch_size": 32, "seed": seed},
        metrics=Metrics(test_accuracy=0.1, test_loss=2.3, train_accuracy=float(history.history["accuracy"][-1]),
                        best_val_accuracy=0.1, epochs_run=20),
        training_time_s=1.0,
        data=DataInfo(source="tests/fixtures", train_size=len(y_train), val_size=len(data.y_test),
                      test_size=len(unseen.y_test)),
        calibration=calibration,
    )
    return save_model(name, path, card, labels={"architecture": "tiny_cnn", "optimizer": "adam"}), path, card


def store_unversioned_entry(path: Path, card: "ModelCard") -> str:  # noqa: F821
    """An entry as the code before the model card wrote it: no schema_version, no trusted_code, plots or
    calibration, framework versions as written then, and what it wrote for optional parts."""
    import shutil

    import bentoml

    metadata = card.model_dump(mode="json", exclude_none=True,
                               exclude={"schema_version", "trusted_code", "plots", "calibration"})
    metadata.update(framework_versions={"python": "3.11.7", "keras": "3.15.1"}, optimizer={"name": "adam"},
                    translate_tta=False, run_dir="/runs/legacy", distribute="none", precision_policy="float32")
    with bentoml.models.create(LEGACY_MODEL_NAME, labels={"architecture": "tiny_cnn"}, metadata=metadata) as ref:
        shutil.copyfile(path, Path(ref.path) / "model.keras")
    return str(ref.tag)


@dataclass(frozen=True)
class ModelStore:
    home: Path
    tag: str
    legacy_tag: str = ""  # the same model stored in the format written before the model card

    def copy(self, folder: Path) -> ModelStore:
        """The same models under another BENTOML_HOME: a new version stored there leaves `latest` here
        alone, and a server started there cannot wipe this home's metrics (every `bentoml serve` empties
        $BENTOML_HOME/prometheus_multiproc_dir when it starts)."""
        import shutil

        shutil.copytree(self.home / "models", folder / "models")
        return ModelStore(home=folder, tag=self.tag, legacy_tag=self.legacy_tag)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that uses this store (bentoml reads BENTOML_HOME at import)."""
        env = {**os.environ, "BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true"}
        env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT)})
        env.pop("CIFAR10_MODEL", None)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def cifar_model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A temporary BENTOML_HOME with one tiny trained `cifar10-cnn` model in it."""
    home = tmp_path_factory.mktemp("bentoml_home")
    work = tmp_path_factory.mktemp("tiny_model")
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); import conftest; "
        "print('TAGS=' + ' '.join(conftest.make_tiny_model(sys.argv[1], sys.argv[2])))"
    )
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(home), str(work), str(Path(__file__).parent)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tags = next(line[5:] for line in result.stdout.splitlines() if line.startswith("TAGS="))
    tag, legacy_tag = tags.split()
    return ModelStore(home=home, tag=tag, legacy_tag=legacy_tag)


def start_server(store: ModelStore, log: Path, timeout: float = 120, **env: str) -> ServerProcess:
    """The real service against `store`'s model; a server that died at start-up is returned for its log."""
    return ServerProcess.start(SERVICE_IMPORT, store.env(**env), log, timeout=timeout, cwd=PROJECT_ROOT)


# The service's own start-up and classifier in a plain Python process, for checks that need no HTTP:
# importing service.service declares the models (a refused start-up raises there, as under `bentoml serve`),
# then one worker's classifier (device, models loaded and warmed up, decoder) answers the files given.
IN_PROCESS_SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path
import service.service as served
classifier = served.start_classifier()
files = [Path(name).read_bytes() for name in sys.argv[1:]]
answers = asyncio.run(classifier.classify(files, 10, None, field="images"))
print("ANSWERS=" + json.dumps([answer.model_dump() for answer in answers]))
"""


def service_in_process(store: ModelStore, files: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    """The service's start-up and `/classify_batch` answer (top 10) for `files`, without a server."""
    return subprocess.run([sys.executable, "-c", IN_PROCESS_SCRIPT, *map(str, files)], cwd=PROJECT_ROOT,
                          env=store.env(**env), capture_output=True, text=True, timeout=300, check=False)


def in_process_answers(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0 and "ANSWERS=" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.split("ANSWERS=", 1)[1])


def _as_dict(answer: Any) -> dict[str, Any]:
    """An answer as the service's JSON, whether a client parsed it (pydantic) or not."""
    return answer.model_dump() if hasattr(answer, "model_dump") else dict(answer)


def assert_same_answer(got: Any, expected: Any, tolerance: float = 1e-6) -> None:
    """Two answers for the same pixels agree: label, model, the in-distribution flag and every listed
    probability and the score (within `tolerance`)."""
    got_d, expected_d = _as_dict(got), _as_dict(expected)
    assert (got_d["label"], got_d["model"]) == (expected_d["label"], expected_d["model"]), (got_d, expected_d)
    assert got_d.get("in_distribution") == expected_d.get("in_distribution"), (got_d, expected_d)
    assert got_d.get("in_distribution_score") == pytest.approx(expected_d.get("in_distribution_score"), abs=tolerance)
    probabilities = {p["label"]: p["probability"] for p in got_d["top_k"]}
    reference = {p["label"]: p["probability"] for p in expected_d["top_k"]}
    assert probabilities == pytest.approx(reference, abs=tolerance), (probabilities, reference)


@pytest.fixture(scope="session")
def cifar_server(cifar_model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One live server for the session, against the tiny model."""
    folder = tmp_path_factory.mktemp("server")
    limits = {"CIFAR10_MAX_BODY_BYTES": str(1024 * 1024), "CIFAR10_MAX_IMAGE_PIXELS": "4000000", "CIFAR10_MAX_BATCH_FILES": "8"}
    yield from shared_server(cifar_model_store.copy(folder / "bentoml_home"), folder, **limits)  # its /metrics is its own


# Shared servers with other settings. Tests that only read share them; a test that changes a server's
# state (a swap, an unload, a shutdown) shares one only where SHARED_SERVER_LAST runs it after the readers.
API_KEY = "test-key-0123456789abcdef"  # keyed_server's CIFAR10_API_KEY
CONTROL_MAX_BODY = 200_000  # control_server's CIFAR10_MAX_BODY_BYTES
CONTROL_MAX_IN_FLIGHT = 300_000  # and its CIFAR10_MAX_INFLIGHT_BYTES
CONTROL_OOD_THRESHOLD = 1000.0  # and its CIFAR10_OOD_THRESHOLD: above every score, every image is flagged


def shared_server(store: ModelStore, folder: Path, **env: str) -> Iterator[ServerProcess]:
    """A server on its own copy of `store` (its /metrics, and new versions stored there, are its own)."""
    log = folder / "serve.log"
    server = start_server(store, log, **env)
    try:
        server.require_running()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def control_store(cifar_model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return cifar_model_store.copy(tmp_path_factory.mktemp("control") / "bentoml_home")


@pytest.fixture(scope="session")
def control_server(control_store: ModelStore) -> Iterator[ServerProcess]:
    """Two models (the tiny one, then the same in the format before the card), model control on, small body
    and in-flight budgets (tests/test_hostile_limits.py), the threshold setting over the card's
    (tests/test_calibrated_serving.py), one worker; the swap under load
    (tests/test_model_swap.py) runs last on it."""
    yield from shared_server(control_store, control_store.home.parent, CIFAR10_MODEL_CONTROL="1",
                             CIFAR10_MODELS=f"{MODEL_NAME},{control_store.legacy_tag}",
                             CIFAR10_MAX_BODY_BYTES=str(CONTROL_MAX_BODY),
                             CIFAR10_MAX_INFLIGHT_BYTES=str(CONTROL_MAX_IN_FLIGHT),
                             CIFAR10_OOD_THRESHOLD=str(CONTROL_OOD_THRESHOLD))


@pytest.fixture(scope="session")
def keyed_store(cifar_model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return cifar_model_store.copy(tmp_path_factory.mktemp("keyed") / "bentoml_home")


@pytest.fixture(scope="session")
def keyed_server(keyed_store: ModelStore) -> Iterator[ServerProcess]:
    """The API key, model control and two workers (tests/test_service_access.py, the clients' model control);
    test_every_worker_follows_a_load runs last on it and stops it."""
    yield from shared_server(keyed_store, keyed_store.home.parent, CIFAR10_API_KEY=API_KEY,
                             CIFAR10_MODEL_CONTROL="1", CIFAR10_WORKERS="2")


def _encode(image: "Image.Image", fmt: str, **options: object) -> bytes:  # noqa: F821
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_bytes() -> dict[str, bytes]:
    """Small test images: every accepted format and colour mode, keyed by a short name."""
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    gif = _encode(rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.rotate(90).convert("P")])
    sixteen = Image.fromarray(rng.integers(0, 65536, (36, 36)).astype(np.uint16))
    return {
        "png": _encode(rgb, "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=90),
        "gif": gif,
        "bmp": _encode(rgb, "BMP"),
        "webp": _encode(rgb, "WEBP"),
        "tiff": _encode(rgb, "TIFF"),
        "mode_l": _encode(rgb.convert("L"), "PNG"),
        "mode_la": _encode(rgb.convert("LA"), "PNG"),
        "mode_p": _encode(rgb.convert("P"), "PNG"),
        "mode_rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "mode_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "mode_16bit": _encode(sixteen, "PNG"),
        "large": _encode(Image.new("RGB", (1600, 1200), (200, 30, 30)), "JPEG"),
    }


def metadata_json(server: ServerProcess) -> dict[str, object]:
    return json.loads(httpx.get(f"{server.url}/metadata", timeout=10).text)


# END service fixtures
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Tests by cost: markers, and a count of server starts
#
# `python -m pytest -m "not server and not training and not browser and not bench and not container"`
# is the quick subset. A test's markers come from the fixtures it uses (a fixture that starts a server,
# trains or launches the browser marks every test that uses it), from its module (benchmarks,
# containers), and from BODY_MARKS for tests that start a server or train inside their own body.
# Every `bentoml serve` started through benchmarks.harness is counted; the summary prints the count.
# ---------------------------------------------------------------------------------------------

FIXTURE_MARKS = {
    "cifar_model_store": "training",  # trains the tiny model (every server and bento build needs it)
    "built": "training",  # tests/test_model_safety.py: builds its model files with TensorFlow in a subprocess
    "browser": "browser",  # tests/test_ui.py: headless Chromium
}  # and every fixture named `*_server` starts (or shares) a live server: `server`
MODULE_MARKS = {
    "test_container.py": ("container",),
    "test_benchmarks_smoke.py": ("bench", "server"),  # benchmarks/serve.py starts its own servers
    "test_soak_smoke.py": ("bench", "server"),
    "test_hostile_benchmark.py": ("bench", "server"),
    "test_peers_smoke.py": ("bench", "server"),  # benchmarks/peers.py starts a serving peer (and uses cifar_server)
    "test_train_benchmark.py": ("bench", "training"),
    "test_middleware_cost.py": ("bench",),  # benchmarks/middleware_cost.py, in this process
}
BODY_MARKS = {  # tests that start a server or train in their own body, not through a fixture
    "test_backends.py::test_service_under_jax": ("server",),
    "test_contract.py::test_bento_serves_from_its_own_source": ("training",),  # bentoml build
    "test_shutdown.py::test_sigterm_drains_in_flight_requests_then_refuses": ("server",),
    "test_distributed.py::test_each_worker_trains_its_own_part_of_every_batch": ("training",),
    "test_distributed.py::test_a_killed_cluster_resumes_from_the_chiefs_checkpoint": ("training",),
    "test_distributed.py::test_an_unreachable_peer_is_one_line_and_exit_2_in_bounded_time": ("training",),
    "test_distributed.py::test_a_peer_port_that_is_not_tensorflow_cannot_hang_a_worker": ("training",),
    "test_training.py::test_train_saves_model_with_full_metadata_and_run_outputs": ("training",),
    "test_training.py::test_optimizer_comparison_trains_one_model_each": ("training",),
    "test_training.py::test_killed_run_resumes_from_its_checkpoint": ("training",),
    "test_training.py::test_ctrl_c_prints_the_resume_line": ("training",),
    "test_training.py::test_mirrored_strategy_on_two_logical_cpus": ("training",),
    "test_training.py::test_a_first_run_starts_with_our_own_line_not_tensorflow_noise": ("training",),
    "test_training.py::test_import_registers_models_of_each_format": ("training",),
    "test_training.py::test_import_rejects_a_model_of_the_wrong_shape": ("training",),
    "test_service_access.py::test_a_model_with_a_lambda_layer_is_refused": ("training",),  # builds, stores a model
}
# every `bentoml serve` the session starts (benchmarks.harness writes a line per start)
os.environ.setdefault(STARTS_FILE_ENV, str(Path(tempfile.mkdtemp(prefix="cifar-serve-starts-")) / "starts.tsv"))


def cost_marks(item: pytest.Item) -> set[str]:
    """The cost markers `item` earns from its fixtures, its module and BODY_MARKS."""
    module = item.path.name
    marks = set(MODULE_MARKS.get(module, ()))
    marks.update(BODY_MARKS.get(f"{module}::{getattr(item, 'originalname', item.name)}", ()))
    for name in getattr(item, "fixturenames", ()):
        if name.endswith("_server"):
            marks.add("server")
        if name in FIXTURE_MARKS:
            marks.add(FIXTURE_MARKS[name])
    return marks


# The shared-server group: every module with a test that uses a server the session shares, or the container image
# (it uses one too); collection fails when one is missing. Its tests run in one process, one after the other, also
# under pytest-xdist (`-n 2`), so each shared server starts once; the other modules (those that start servers of
# their own included) run beside them, in the other worker.
SHARED_FIXTURES = {"cifar_server", "control_server", "keyed_server", "container_image"}
SHARED_SERVER_MODULES = frozenset({
    "test_backends.py", "test_benchmarks_smoke.py", "test_calibrated_serving.py", "test_client.py", "test_container.py",
    "test_contract.py", "test_hostile.py", "test_hostile_benchmark.py", "test_hostile_limits.py", "test_model_swap.py",
    "test_peers_smoke.py", "test_raw_body.py", "test_service.py", "test_service_access.py", "test_soak_smoke.py",
    "test_tracing.py", "test_v2.py",
})
CONTAINER_SELECTED = pytest.StashKey[bool]()

# The other modules that take longest, longest first (seconds of test time in a `-n 2` run on the 2-core Intel
# Xeon, 2026-12-06): they start right after the shared-server group, so that under pytest-xdist the other worker
# runs them while the group runs, and what is left for the end is short. A module missing here only runs later.
SLOWEST_FIRST = (
    "test_training.py",  # 132 s
    "test_distributed.py",  # 80 s
    "test_train_benchmark.py",  # 65 s
    "test_model_safety.py",  # 20 s
    "test_ui.py",  # 14 s
    "test_shutdown.py",  # 14 s
    "test_ood_benchmark.py",  # 7 s
    "test_service_startup.py",  # 6 s
)

# Tests that change a shared server for good (a new version swapped in; a server stopped) run after every
# other test of the session, in this order, so the readers of that server see it as it started.
SHARED_SERVER_LAST = (
    "test_model_swap.py::test_swap_under_load_loses_no_request",  # control_server: serves a new version after
    "test_model_swap.py::test_every_worker_follows_a_load",  # keyed_server: a new version, then stops it
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in sorted(cost_marks(item)):
            item.add_marker(getattr(pytest.mark, mark))
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())) and item.path.name not in SHARED_SERVER_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses a shared server: add {item.path.name} to "
                                    "tests/conftest.py's SHARED_SERVER_MODULES")
    items.sort(key=lambda item: (run_order(item), module_order(item)))  # stable: the rest keeps its order


def pytest_collection_finish(session: pytest.Session) -> None:
    session.stash[CONTAINER_SELECTED] = any(item.get_closest_marker("container") for item in session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`python -m pytest -n 2`: the shared-server group is one unit of work, so one worker runs it and its servers
    start once; every other module is a unit of its own, for whichever worker is free."""
    from xdist.scheduler import LoadScopeScheduling

    class ServingTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = Path(nodeid.split("::", 1)[0]).name
            return "the shared-server group" if module in SHARED_SERVER_MODULES else super()._split_scope(nodeid)

    config.option.loadscopereorder = False  # units start in the collection's order (module_order), not by test count
    return ServingTogether(config, log)


def module_order(item: pytest.Item) -> int:
    """0 for the shared-server group; then SLOWEST_FIRST's modules in its order; then every other module."""
    module = item.path.name
    if module in SHARED_SERVER_MODULES:
        return 0
    return 1 + (SLOWEST_FIRST.index(module) if module in SLOWEST_FIRST else len(SLOWEST_FIRST))


def run_order(item: pytest.Item) -> int:
    """-1 for most tests; SHARED_SERVER_LAST's after them, in its order; the container tests last of all, so
    that their image, built in the background from the shared-server group's first test on, is most likely ready."""
    if item.get_closest_marker("container"):
        return len(SHARED_SERVER_LAST)
    name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
    return SHARED_SERVER_LAST.index(name) if name in SHARED_SERVER_LAST else -1


@pytest.fixture(scope="session")
def container_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator["ImageBuild"]:  # noqa: F821
    """The container tests' image build (tests/container_image.py): started by `_container_image_early` or by
    the container tests themselves; its image is removed when the session ends."""
    from container_image import ImageBuild

    build = ImageBuild(tmp_path_factory.mktemp("container"))
    yield build
    build.finish()


@pytest.fixture(autouse=True)
def _container_image_early(request: pytest.FixtureRequest) -> None:
    """Starts the image build at the first test of the shared-server group when container tests are selected, so
    that it runs beside the other tests (in a pytest-xdist run, in the worker that runs the container tests)."""
    if request.node.path.name in SHARED_SERVER_MODULES and request.session.stash.get(CONTAINER_SELECTED, False):
        request.getfixturevalue("container_image").start(request.getfixturevalue("cifar_model_store"))


def server_starts() -> list[str]:
    """The session's server starts so far: one line each, the test that caused it and the service."""
    path = Path(os.environ[STARTS_FILE_ENV])
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(autouse=True)
def _a_test_that_starts_a_server_is_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keeps the quick subset quick: a test not marked `server` that starts one in its body fails here (the
    starts are counted by the test that caused them: under pytest-xdist the other worker starts servers too)."""
    yield
    started = [line for line in server_starts() if line.split("\t", 1)[0] == request.node.nodeid]
    if request.node.get_closest_marker("server") is None and started:
        pytest.fail(f"{request.node.nodeid} started a server but is not marked `server`: add it to "
                    "tests/conftest.py's BODY_MARKS", pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = server_starts()
    peers = sum("\tpeer " in line for line in lines)  # benchmarks/peers.py records "peer NAME"
    terminalreporter.write_sep("-", f"bentoml serve started {len(lines) - peers} times, serving peers {peers}")
    for line in lines:
        terminalreporter.write_line(f"  {line}")
