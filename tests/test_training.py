"""train-cifar end to end on the tiny fixtures: data sources, store metadata, comparison, resume, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import inprocess
import numpy as np
import pytest
from conftest import ModelStore
from inprocess import stored_model, stored_models, train_cifar

from training import cpu_info
from training.data import DataError, load_dataset

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "cifar-10-python-tiny.tar.gz"
TREE = FIXTURES / "images-tiny"
TREE_ARCHIVE = FIXTURES / "images-tiny.tar.gz"
TRAIN_CIFAR = [sys.executable, "-c", "from training.cli import main; main()"]
# train-cifar, saying on its last line of stdout whether TensorFlow was imported
TRAIN_CIFAR_WATCHED = [sys.executable, "-c", "import sys\nfrom training.cli import main\ntry:\n    main()\nfinally:\n"
                       "    print('tensorflow imported:', 'tensorflow' in sys.modules)"]
QUICK = ["--epochs", "1", "--batch-size", "16"]


@pytest.fixture()
def store_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
    }


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    """The model store for `train-cifar` run in this process (`train_cifar`, tests/inprocess.py), where `store_env`
    puts a subprocess's; the process's state as it was, after the test. What the command does is tested in this
    process; how a process starts, stops or talks to TensorFlow's C++ log, with `TRAIN_CIFAR` in a subprocess."""
    with inprocess.process_state_kept():  # the environment too
        os.environ.update(BENTOML_DO_NOT_TRACK="true", COLUMNS="200")
        yield tmp_path / "bentoml"


def saved_tag(output: str) -> str:
    return output.split("saved to the model store as ")[1].split(";")[0].strip()


# --- data sources ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [OFFICIAL, TREE, TREE_ARCHIVE], ids=["official-archive", "tree", "tree-archive"])
def test_every_source_gives_the_standard_classes_and_a_stratified_split(source: Path) -> None:
    data = load_dataset(str(source), validation_split=0.2, seed=1)
    assert data.class_names[:3] == ["airplane", "automobile", "bird"] and len(data.class_names) == 10
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (32, 32, 3)
    assert np.bincount(data.y_val, minlength=10).min() == np.bincount(data.y_val, minlength=10).max()
    assert len(data.y_test) in (30, 50)
    # shuffled: a sorted folder must not give a validation set of the last classes only
    assert len(set(data.y_val[:10].tolist())) > 3


def test_extracted_official_folder_matches_the_archive(tmp_path: Path) -> None:
    with tarfile.open(OFFICIAL) as archive:
        archive.extractall(tmp_path, filter="data")
    from_folder = load_dataset(str(tmp_path / "cifar-10-batches-py"), 0.2, seed=3)
    from_parent = load_dataset(str(tmp_path), 0.2, seed=3)
    from_archive = load_dataset(str(OFFICIAL), 0.2, seed=3)
    assert np.array_equal(from_folder.x_train, from_archive.x_train)
    assert np.array_equal(from_parent.y_test, from_archive.y_test)


def test_limit_takes_a_stratified_subset() -> None:
    data = load_dataset(str(TREE), validation_split=0.0, seed=0, limit=40)
    assert len(data.y_train) == 40 and np.all(np.bincount(data.y_train) == 4)


def test_unknown_layout_and_corrupt_images_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown data layout"):
        load_dataset(str(tmp_path / "random"), 0.2, 0)
    broken = tmp_path / "broken" / "train" / "cat"
    broken.mkdir(parents=True)
    (broken / "1.png").write_bytes(b"not a png")
    (tmp_path / "broken" / "test" / "cat").mkdir(parents=True)
    (tmp_path / "broken" / "test" / "cat" / "2.png").write_bytes((TREE / "test" / "cat").iterdir().__next__().read_bytes())
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset(str(tmp_path / "broken"), 0.2, 0)


def test_keras_download_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline() -> None:
        raise Exception("URL fetch failure on https://example.invalid: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="pass a local copy with --data"):
        load_dataset(None, 0.2, 0)


# --- models --------------------------------------------------------------------------------------


def test_published_parameter_counts() -> None:
    from training.models import build_cnn, build_mlp
    from training.recipes import CNN, MLP

    assert build_cnn(CNN).count_params() == 545_098
    assert build_mlp(MLP).count_params() == 5_955_466


def test_every_model_takes_uint8_and_gives_probabilities() -> None:
    from training.models import build_cnn_bn, build_fast, whitening_filters
    from training.recipes import CNN_BN, FAST

    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for model in (build_cnn_bn(CNN_BN), build_fast(FAST, whitening_filters(images, FAST.whitening))):
        probabilities = model.predict(images, verbose=0)
        assert probabilities.shape == (8, 10)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_the_recipe_is_the_single_source_of_its_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Change the fast recipe's numbers and the model, schedule, Lookahead and defaults all follow."""
    import inspect

    from training import models, recipes
    from training.callbacks import Lookahead, build_callbacks
    from training.config import TrainConfig
    from training.optimizers import learning_rate
    from training.train import build_model

    changed = recipes.FAST.model_copy(update={
        "training": recipes.FAST.training.model_copy(update={"epochs": 3, "l2": 1e-5}),
        "batchnorm": recipes.BatchNorm(momentum=0.7, epsilon=1e-3),
        "one_cycle": recipes.OneCycle(warmup_share=0.5, start_divisor=4),
        "lookahead": recipes.LookaheadAveraging(every=7, final_decay=0.25),
        "augmentation": recipes.Augmentation(translate=0.25),
        "whitening": recipes.Whitening(patch=3, images=20, eps=1e-2),
        "widths": (8, 16, 16),
        "temperature": 0.5,
    })
    monkeypatch.setitem(recipes.RECIPES, "fast", changed)
    config = TrainConfig(model="fast").resolved()
    assert (config.epochs, config.l2, config.batch_size) == (3, 1e-5, 512)

    data = load_dataset(str(OFFICIAL), validation_split=0.0, seed=0)
    model = build_model(config, data)
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert len(norms) == 6 and {(n.momentum, n.epsilon) for n in norms} == {(0.7, 1e-3)}
    assert model.get_layer("whiten").kernel.shape == (3, 3, 3, changed.whitening.width) == (3, 3, 3, 54)
    assert model.get_layer("temperature").scale == 0.5
    assert model.get_layer("random_translation").height_factor == 0.25
    assert model.get_layer("logits").kernel_regularizer.l2 == pytest.approx(1e-5)
    assert [layer.filters for layer in model.layers if layer.__class__.__name__ == "Conv2D"][1::2] == [8, 16, 16]

    schedule = learning_rate(config, steps_per_epoch=10)  # 3 epochs x 10 steps
    assert schedule.warmup_steps == 15 and schedule.initial_learning_rate == config.lr / 4
    lookahead = next(c for c in build_callbacks(config, tmp_path, None) if isinstance(c, Lookahead))
    assert (lookahead.every, lookahead.final_decay) == (7, 0.25)
    for builder in (models.build_cnn, models.build_cnn_bn, models.build_mlp, models.build_fast):
        assert not {"l2", "dropout", "augment", "widths"} & set(inspect.signature(builder).parameters)


def test_the_store_name_follows_the_model_unless_given() -> None:
    from training.config import TrainConfig

    names = {model: TrainConfig(model=model).resolved().name for model in ("cnn", "cnn-bn", "mlp", "fast")}
    assert names == {"cnn": "cifar10-cnn", "cnn-bn": "cifar10-cnn-bn", "mlp": "cifar10-mlp", "fast": "cifar10-fast"}
    assert TrainConfig(model="fast", name="mine").resolved().name == "mine"


def test_plots_mark_their_points_so_a_one_epoch_run_shows() -> None:
    import matplotlib.pyplot as plt

    from training import report

    one_epoch = {"loss": [2.1], "accuracy": [0.2], "val_loss": [2.0], "val_accuracy": [0.25], "learning_rate": [1e-3]}
    for figure in (report.curves_figure(one_epoch, "one epoch"),
                   report.comparison_figure({"adam": one_epoch, "sgd": {"loss": [2.2], "accuracy": [0.1]}}, "two")):
        lines = [line for axes in figure.axes for line in axes.lines]
        assert len(lines) >= 3 and all(len(line.get_xdata()) == 1 for line in lines)
        assert all(line.get_marker() not in (None, "", " ", "None") for line in lines), figure
        plt.close(figure)



def test_a_learning_rate_that_ends_at_zero_plots_without_a_warning() -> None:
    import io
    import warnings

    import matplotlib.pyplot as plt

    from training import report

    one_epoch = {"loss": [2.1], "accuracy": [0.2], "learning_rate": [0.0]}  # the fast recipe's schedule ends at 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = report.curves_figure(one_epoch, "one epoch")
        figure.savefig(io.BytesIO(), format="png")
    assert figure.axes[2].get_yscale() == "linear"
    two_epochs = {"loss": [2.1, 2.0], "accuracy": [0.2, 0.3], "learning_rate": [1e-3, 0.0]}
    assert report.curves_figure(two_epochs, "two").axes[2].get_yscale() == "log"
    plt.close("all")

# --- the command ----------------------------------------------------------------------------------


def test_train_saves_model_with_full_metadata_and_run_outputs(tmp_path: Path, home: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    with monkeypatch.context() as patched:
        patched.setenv("CIFAR_SERVE_CACHE", str(cache))
        result = train_cifar("--data", str(OFFICIAL), *QUICK, "--output", str(run), "--seed", "7", "--no-cache",
                             home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout and "545,098 parameters" in result.stdout
    assert not cache.exists()  # --no-cache writes nothing
    report = json.loads((run / "report.json").read_text())
    printed_time = re.search(r"1 epochs in (\d+) s", result.stdout)
    assert printed_time and int(printed_time[1]) == round(report["training_time_s"]), result.stdout
    tag = saved_tag(result.stdout)
    info = stored_model(tag, home)
    meta = info["metadata"]
    assert info["labels"] == {"architecture": "cnn", "optimizer": "adam", "framework": "keras"}
    assert meta["class_names"][0] == "airplane" and meta["input_shape"] == [32, 32, 3]
    assert meta["input_dtype"] == "uint8" and "inside the model" in meta["preprocessing"]
    assert meta["architecture"] == "cnn" and meta["parameters"] == 545_098
    assert meta["config"]["optimizer"] == "adam" and meta["config"]["lr"] == 0.001 and meta["config"]["seed"] == 7
    assert meta["optimizer"]["name"] == "adam" and meta["optimizer"]["beta_1"] == 0.9
    assert meta["metrics"] == report["metrics"] and meta["metrics"]["epochs_run"] == 1
    assert meta["data"] == {"source": str(OFFICIAL), "train_size": 80, "val_size": 20, "test_size": 50}
    assert {"tensorflow", "keras", "bentoml", "python"} <= set(meta["framework_versions"])
    assert meta["training_time_s"] == round(report["training_time_s"], 2) and report["training_time_s"] > 0
    for name in ("config.json", "history.csv", "curves.png", "confusion_matrix.png", "report.json", "model.keras"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").rglob("*.v2"))
    assert set(report["per_class"]["cat"]) == {"precision", "recall", "f1", "support"}
    assert np.array(report["confusion_matrix"]).sum() == 50
    correct = np.trace(np.array(report["confusion_matrix"]))
    assert report["metrics"]["test_accuracy"] == pytest.approx(correct / 50)
    history = (run / "history.csv").read_text().splitlines()
    assert "learning_rate" in history[0] and len(history) == 2
    assert report["cpu"] == cpu_info.describe_cpu()
    assert report["cpu_speedups"] == list(cpu_info.chosen_speedups("cnn"))  # what measured faster here for cnn

    # calibrated on the 20 validation images, measured on the 50 test images; the diagram stored with the model
    calibration = meta["calibration"]
    assert calibration == report["calibration"] and calibration["val_size"] == 20
    assert calibration["score"] == "feature_norm" and calibration["flag_rate"] == 0.05  # the default: cnn has a Dense head
    assert calibration["test"]["size"] == 50 and calibration["temperature"] > 0
    printed = re.search(r"test ECE ([\d.]+)% -> ([\d.]+)%", result.stdout)
    assert printed and float(printed[1]) == round(100 * calibration["test"]["ece_before"], 2), result.stdout
    assert float(printed[2]) == round(100 * calibration["test"]["ece_after"], 2)
    assert 0 < report["calibration_time_s"] < report["training_time_s"]
    assert meta["plots"] == ["curves.png", "confusion_matrix.png", "reliability.png"]
    entry = home / "models" / tag.replace(":", "/")
    assert (entry / "reliability.png").read_bytes() == (run / "reliability.png").read_bytes()

    # calibrated again with another score and rate: the same validation split, rebuilt from the card, so the
    # same temperature; a new version with the same model file
    again = train_cifar("calibrate", tag, "--data", str(OFFICIAL), "--ood-score", "margin", "--ood-flag-rate", "0.1",
                        home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    new_tag = saved_tag(again.stdout + ";")
    recalibrated = stored_model(new_tag, home)["metadata"]
    assert new_tag != tag and recalibrated["calibration"]["temperature"] == pytest.approx(calibration["temperature"])
    assert (recalibrated["calibration"]["score"], recalibrated["calibration"]["flag_rate"]) == ("margin", 0.1)
    assert recalibrated["metrics"] == meta["metrics"] and recalibrated["plots"] == meta["plots"]
    new_entry = home / "models" / new_tag.replace(":", "/")
    assert (new_entry / "model.keras").read_bytes() == (entry / "model.keras").read_bytes()


def test_calibrate_names_the_score_that_stands_in(cifar_model_store: ModelStore, home: Path) -> None:
    """The session's tiny model has no penultimate features: `train-cifar calibrate --ood-score feature_norm` warns
    and stores the score it used instead (the warning itself used to end in a NameError)."""
    store = cifar_model_store.copy(home)
    result = train_cifar("calibrate", store.tag, "--data", str(OFFICIAL), "--ood-score", "feature_norm", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = " ".join(result.stdout.split())
    assert "warning: no penultimate features: out-of-distribution score logit_energy instead of feature_norm" in printed
    recalibrated = stored_model(saved_tag(result.stdout + ";"), home)["metadata"]["calibration"]
    assert recalibrated["score"] == "logit_energy"


def test_optimizer_comparison_trains_one_model_each(tmp_path: Path, home: Path) -> None:
    out = tmp_path / "compare"
    result = train_cifar(
        "--data", str(TREE), "--model", "mlp", *QUICK, "--optimizer", "adam", "--optimizer", "sgd",
        "--optimizer", "adamw", "--output", str(out), home=home,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "optimizer comparison" in result.stdout
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["optimizer"] for row in rows] == ["adam", "sgd", "adamw"]
    assert all(row["tag"].startswith("cifar10-mlp:") for row in rows)  # the store name follows --model
    assert (out / "comparison.png").stat().st_size > 10_000
    assert len(stored_models(home)) == 3
    for row in rows:
        assert stored_model(row["tag"], home)["labels"]["optimizer"] == row["optimizer"]
    configs = [json.loads((out / o / "config.json").read_text()) for o in ("adam", "sgd")]
    assert configs[0]["seed"] == configs[1]["seed"] and configs[1]["lr"] == 0.01


def wait_for_epoch(state_file: Path, epoch: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if state_file.exists():
            try:
                if json.loads(state_file.read_text())["epoch"] >= epoch:
                    return
            except (json.JSONDecodeError, KeyError):
                pass
        time.sleep(0.05)
    pytest.fail("the run did not reach the epoch to interrupt")


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path, store_env: dict[str, str], home: Path) -> None:
    """Killed in a subprocess (the kill is the point), resumed and run again whole in this process."""
    run = tmp_path / "run"
    args = ["--data", str(TREE), "--epochs", "6", "--batch-size", "4", "--early-stopping-patience", "0",
            "--output", str(run)]
    process = subprocess.Popen([*TRAIN_CIFAR, *args], cwd=ROOT, env=store_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epoch(run / "checkpoints" / "state.json", 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads((run / "checkpoints" / "state.json").read_text())["epoch"]
    assert done < 5, "the run finished before it was killed"
    assert not stored_models(home), "a killed run must not have saved a model"

    resumed = train_cifar("--resume", str(run), home=home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"epoch {done + 2}/6" in resumed.stdout and "epoch 1/6" not in resumed.stdout
    meta = stored_model(saved_tag(resumed.stdout), home)["metadata"]
    assert meta["metrics"]["epochs_run"] == 6
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 6

    # the same run without the kill: same length, and the same accuracy within noise
    uninterrupted = train_cifar(*args[:-1], str(tmp_path / "whole"), home=home)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    whole = stored_model(saved_tag(uninterrupted.stdout), home)["metadata"]["metrics"]
    assert whole["epochs_run"] == 6
    assert abs(whole["test_accuracy"] - meta["metrics"]["test_accuracy"]) <= 0.1, (whole, meta["metrics"])


def test_ctrl_c_prints_the_resume_line(tmp_path: Path, store_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(
        [*TRAIN_CIFAR, "--data", str(TREE), "--epochs", "40", "--batch-size", "4", "--output", str(run),
         "--early-stopping-patience", "0"],
        cwd=ROOT, env=store_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_epoch(run / "checkpoints" / "state.json", 0, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert f"train-cifar --resume {run}" in stdout
    assert "Traceback" not in stderr


def test_mirrored_strategy_on_two_logical_cpus(tmp_path: Path, store_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    env = {**store_env, "TRAIN_CIFAR_LOGICAL_CPUS": "2"}  # read before TensorFlow loads: a process of its own
    args = ["--data", str(OFFICIAL), *QUICK, "--distribute", "mirrored", "--output", str(run)]
    result = subprocess.run([*TRAIN_CIFAR, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "report.json").read_text())["devices"] == ["/cpu:0", "/cpu:1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/no/such/cifar"], "data path not found: /no/such/cifar"),
        (["--data", str(FIXTURES / "make_fixtures.py")], "unknown data layout"),
        (["--data", str(ROOT / "training")], "unknown data layout"),
        (["--optimizer", "adagrad"], "Invalid value for '--optimizer'"),
        (["--lr", "-1"], "invalid value for --lr"),
        (["--validation-split", "1.5"], "invalid value for --validation-split"),
        (["--epochs", "many"], "Invalid value for '--epochs'"),
        (["--resume", "/no/such/run"], "run folder not found"),
        (["--resume", str(FIXTURES)], f"nothing to resume in {FIXTURES}: no config.json"),
        (["--resume", str(FIXTURES / "images-tiny")], "nothing to resume in"),
        (["import", str(OFFICIAL), "--data", "/no/such/cifar"], "data path not found: /no/such/cifar"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, store_env: dict[str, str]) -> None:
    """A bad flag, data path or resume folder needs no TensorFlow to be found, so it fails before TensorFlow
    loads: one line, exit code 2, in about a second instead of several."""
    started = time.monotonic()
    result = subprocess.run([*TRAIN_CIFAR_WATCHED, *args], cwd=ROOT, env=store_env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("train-cifar: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines()[-1] == "tensorflow imported: False", (result.stdout, time.monotonic() - started)


HELP_WITH_CHANGED_RECIPE = """
from training import recipes
fast = recipes.FAST.training.model_copy(update={"epochs": 7, "label_smoothing": 0.3, "validation_split": 0.1})
recipes.RECIPES["fast"] = recipes.FAST.model_copy(update={"training": fast})
from typer.testing import CliRunner
from training.cli import app
print(CliRunner().invoke(app, ["--help"], terminal_width=1000).output)
"""


def test_help_defaults_follow_the_recipes() -> None:
    """The help text states no default of its own: change a recipe and --help says the new numbers."""
    result = subprocess.run([sys.executable, "-c", HELP_WITH_CHANGED_RECIPE], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"})
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "Maximum epochs. Default per model: cnn 50, cnn-bn 30, mlp 30, fast 7." in text
    assert "Label smoothing. Default per model: cnn 0, cnn-bn 0.1, mlp 0, fast 0.3." in text
    assert "held out for validation. Default 0.2 (fast: 0.1)." in text
    assert "Default adam (fast: sgd)." in text and "cifar10-cnn, cifar10-cnn-bn, cifar10-mlp, cifar10-fast" in text


def test_a_resume_folder_with_a_broken_config_is_one_line_before_tensorflow(tmp_path: Path,
                                                                            store_env: dict[str, str]) -> None:
    (tmp_path / "config.json").write_text('{"model": "resnet"}')
    result = subprocess.run([*TRAIN_CIFAR_WATCHED, "--resume", str(tmp_path)], cwd=ROOT, env=store_env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"train-cifar: error: cannot resume from {tmp_path / 'config.json'}: "
                                          "Input should be 'cnn', 'cnn-bn', 'mlp' or 'fast'"]
    assert result.stdout.splitlines()[-1] == "tensorflow imported: False"


def test_an_unknown_cpu_speedup_exits_2_before_tensorflow_loads(store_env: dict[str, str]) -> None:
    result = subprocess.run([*TRAIN_CIFAR_WATCHED, "--epochs", "1"], cwd=ROOT, capture_output=True, text=True,
                            env={**store_env, "CIFAR_SERVE_CPU_SPEEDUPS": "turbo"}, timeout=300)
    assert result.returncode == 2
    assert "train-cifar: error: CIFAR_SERVE_CPU_SPEEDUPS='turbo': unknown speed-up 'turbo'" in result.stderr
    assert "Traceback" not in result.stderr and "tensorflow" not in result.stderr.lower()
    assert result.stdout.splitlines()[-1] == "tensorflow imported: False"


def test_a_first_run_starts_with_our_own_line_not_tensorflow_noise(tmp_path: Path, store_env: dict[str, str]) -> None:
    env = {key: value for key, value in store_env.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONUNBUFFERED="1", CIFAR_SERVE_CACHE=str(tmp_path / "cache"))
    args = [*TRAIN_CIFAR, "--data", str(TREE_ARCHIVE), "--epochs", "1", "--output", str(tmp_path / "run")]
    result = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"loading CIFAR-10 from {TREE_ARCHIVE} ...", lines[:5]
    assert not [line for line in lines if "absl::InitializeLog" in line or "cuInit" in line or "cudart" in line]
    # train-cifar caches the decoded data by default (tests/test_data_cache.py tests the cache itself)
    assert len(list((tmp_path / "cache").glob("decoded-*.npz"))) == 1


def test_start_up_filter_drops_tensorflow_chatter_and_keeps_everything_else(capfd: pytest.CaptureFixture[str]) -> None:
    from training.tf_start import filtered_stderr, is_tensorflow_noise

    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795694187.957690    5292 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        "E0000 00:00:1795694191.604987    5292 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
    ]
    kept = ["E0000 00:00:1795694191.604987    5292 some_op.cc:52] a real error", "Traceback: ours"]
    with filtered_stderr(is_tensorflow_noise):
        os.write(2, "\n".join(noise + kept).encode() + b"\n")
    assert capfd.readouterr().err.splitlines() == kept
    with pytest.raises(ImportError), filtered_stderr(is_tensorflow_noise):
        os.write(2, "\n".join(noise).encode() + b"\n")
        raise ImportError("a failed import shows everything it wrote")
    assert capfd.readouterr().err.splitlines() == noise


def test_unwritable_output_fails_before_training(tmp_path: Path, store_env: dict[str, str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run([*TRAIN_CIFAR_WATCHED, "--data", str(OFFICIAL), "--output", str(blocker / "run")],
                            cwd=ROOT, env=store_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "cannot write the run folder" in result.stderr
    assert result.stdout.splitlines()[-1] == "tensorflow imported: False"  # it needs none to be found


CARD = (
    "from contract.card import ModelCard\n"
    "card = ModelCard(class_names=list('abcdefghij'), architecture='test', parameters=0, preprocessing='',"
    " framework_versions={'python': '3'})\n"
)
SAVE_BIG_MODEL = (
    "import pathlib, sys\n"
    "from training.store import save_model\n"
    + CARD
    + "big = pathlib.Path(sys.argv[1])\n"
    "print(save_model('big', big, card, {}), flush=True)\n"
)


def card() -> "ModelCard":  # noqa: F821
    """The card CARD makes, for a save in this process."""
    scope: dict = {}
    exec(CARD, scope)
    return scope["card"]


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_killed_save_leaves_the_whole_model_or_none(delay: float, tmp_path: Path, store_env: dict[str, str]) -> None:
    big = tmp_path / "big.keras"
    big.write_bytes(os.urandom(1024 * 1024) * 150)  # 150 MB: the copy takes a noticeable time
    process = subprocess.Popen([sys.executable, "-c", SAVE_BIG_MODEL, str(big)], cwd=ROOT, env=store_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = Path(store_env["BENTOML_HOME"]) / "cifar-serve-staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not any(staging.glob("*/big")):
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    home = Path(store_env["BENTOML_HOME"])
    for model in stored_models(home):  # the store still lists, and what it lists is complete
        shown = stored_model(model["tag"], home)
        assert shown["metadata"]["model_file"] == "model.keras"
        stored_file = home / "models" / "big" / model["tag"].split(":")[1] / "model.keras"
        assert stored_file.stat().st_size == big.stat().st_size
    # the next save (here, in this process) cleans up what the killed one left in staging
    from training.store import save_model

    with inprocess.bentoml_home(home):
        assert save_model("big", big, card(), {}).startswith("big:")
    assert not list(staging.iterdir())


def test_failed_save_leaves_no_partial_model(tmp_path: Path) -> None:
    from training.store import save_model

    home = tmp_path / "bentoml"
    with inprocess.bentoml_home(home), pytest.raises(FileNotFoundError):
        save_model("half", tmp_path / "missing.keras", card(), {})
    assert stored_models(home) == []
    assert not list((home / "cifar-serve-staging").iterdir())


# --- import -------------------------------------------------------------------------------------


def legacy_model_script(kind: str, path: Path) -> str:
    save_format = ", save_format='tf'" if kind == "savedmodel" else ""
    return (
        "import tf_keras as k\n"
        "m = k.Sequential([k.layers.Input((32, 32, 3)), k.layers.Conv2D(4, 3, activation='relu'),"
        " k.layers.GlobalAveragePooling2D(), k.layers.Dense(10, activation='softmax')])\n"
        f"m.save(r'{path}'{save_format})\n"
    )


@pytest.mark.parametrize("kind", ["keras"])  # legacy h5 and SavedModel imports: tests/test_model_safety.py
def test_import_registers_models_of_each_format(kind: str, tmp_path: Path, store_env: dict[str, str],
                                                home: Path) -> None:
    if kind == "keras":
        import keras

        path = tmp_path / "mine.keras"
        keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), keras.layers.Rescaling(1 / 255),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]).save(path)
    else:  # a legacy file is made with tf_keras, in a process of its own
        path = tmp_path / ("legacy.h5" if kind == "h5" else "legacy_savedmodel")
        made = subprocess.run([sys.executable, "-c", legacy_model_script(kind, path)], capture_output=True, text=True,
                              env=store_env)
        assert made.returncode == 0, made.stderr[-2000:]
    # h5: the scaling given; savedmodel: "auto" picks the float scaling that scores best (random weights here)
    scaling = ["--input-scaling", "0-1"] if kind == "h5" else []
    result = train_cifar("import", str(path), "--data", str(OFFICIAL), "--name", "imported", *scaling, home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = stored_model("imported:latest", home)["metadata"]
    # a clean legacy file is stored converted to Keras 3 (served in safe mode); the card keeps its own format
    source_format = {"h5": "tf-keras-h5", "savedmodel": "tf-keras-savedmodel", "keras": "keras"}[kind]
    assert meta["format"] == "keras" and meta["config"]["format"] == source_format
    expected_scaling = {"h5": {"0-1"}, "savedmodel": {"0-1", "-1-1"}, "keras": {"uint8"}}[kind]
    assert meta["input_scaling"] in expected_scaling
    assert meta["data"]["test_size"] == 50
    # calibrated on half of each class's test images (the model's training data is unknown), measured on the rest
    assert meta["calibration"]["val_size"] == 20 and meta["calibration"]["test"]["size"] == 30
    assert "reliability.png" in meta["plots"] and "calibration: temperature" in result.stdout

    # the stored accuracy is the one the served model gets on the same test images (what the service runs)
    from contract.calibration import calibrated_predict
    from contract.predictor import load_predictor

    data = load_dataset(str(OFFICIAL), 0.0, 0)
    with inprocess.bentoml_home(home):
        predictor = load_predictor("imported:latest", trust_model_code=True)
        served = calibrated_predict(predictor.logits, predictor.card.calibration, None)  # the registry's model call
        probabilities = served(data.x_test)["probabilities"]
    served_accuracy = float(np.mean(probabilities.argmax(axis=1) == data.y_test))
    assert abs(served_accuracy - meta["metrics"]["test_accuracy"]) <= 1 / 50 + 1e-9, (served_accuracy, meta)


def test_import_rejects_a_model_of_the_wrong_shape(tmp_path: Path, home: Path) -> None:
    import keras

    path = tmp_path / "wrong.keras"
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]).save(path)
    result = train_cifar("import", str(path), "--data", str(OFFICIAL), home=home)
    assert result.returncode == 2 and "not 32x32x3 images" in result.stderr
    missing = train_cifar("import", str(tmp_path / "nope.h5"), "--data", str(OFFICIAL), home=home)
    assert missing.returncode == 2 and "model file not found" in missing.stderr


def test_a_nearly_full_disk_is_refused_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cannot be made here without root mounts; the check reads shutil.disk_usage."""
    from collections import namedtuple

    from training import train

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(train.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(train.RunError, match="not enough disk space"):
        train.check_disk_space([tmp_path / "run"], parameters=545_098)
    monkeypatch.setattr(train.shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12))
    train.check_disk_space([tmp_path / "run"], parameters=545_098)
