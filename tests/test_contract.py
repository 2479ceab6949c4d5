"""The training -> serving contract: the model card in the store, old entries, one image decoder."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import LEGACY_MODEL_NAME, PROJECT_ROOT, ModelStore
from contract.calibration import calibrate
from contract.card import SCHEMA_VERSION, ModelCard
from contract.images import decode_image
from training.data import load_dataset


def test_card_is_strict_about_keys() -> None:
    card = ModelCard(class_names=["a", "b"], architecture="x", parameters=1, preprocessing="p")
    assert card.model_file == "model.keras" and card.schema_version == SCHEMA_VERSION
    with pytest.raises(ValueError, match="test_acuracy"):
        ModelCard.from_metadata({**card.to_metadata(), "metrics": {"test_acuracy": 0.5}})
    with pytest.raises(ValueError, match="class_names"):
        ModelCard.from_metadata({k: v for k, v in card.to_metadata().items() if k != "class_names"})


def test_unversioned_metadata_is_upgraded() -> None:
    old = {"class_names": ["a", "b"], "architecture": "imported:m", "parameters": 7, "preprocessing": "",
           "format": "tf-keras-h5", "data": {}, "framework_versions": {"python": 3.11}}
    card = ModelCard.from_metadata(old)
    assert (card.schema_version, card.model_file, card.data) == (0, "model.h5", None)
    assert card.framework_versions == {"python": "3.11"}
    assert card.needs_trust  # a legacy format loads through tf-keras: not safe mode


def test_store_shows_schema_version(cifar_model_store: ModelStore) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "get", cifar_model_store.tag, "-o", "json"],
        env=cifar_model_store.env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = json.loads(result.stdout)["metadata"]
    assert metadata["schema_version"] == SCHEMA_VERSION
    assert ModelCard.from_metadata(metadata).architecture == "tiny_cnn"


def test_entry_in_the_old_format_still_serves(
    cifar_model_store: ModelStore, cifar_server, control_server, image_bytes: dict[str, bytes]
) -> None:
    """control_server (conftest) loads the old entry at start-up beside the new one; asked by name."""
    assert cifar_model_store.legacy_tag.startswith(LEGACY_MODEL_NAME + ":")
    server = control_server
    assert server.process.poll() is None, server.log_text()[-3000:]
    files = {"image": ("x.png", image_bytes["png"], "image/png")}
    old = httpx.post(f"{server.url}/classify", files=files, data={"top_k": "10", "model": LEGACY_MODEL_NAME},
                     timeout=30).json()
    new = httpx.post(f"{cifar_server.url}/classify", files=files, data={"top_k": "10"}, timeout=30).json()
    metadata = httpx.get(f"{server.url}/metadata", params={"model": LEGACY_MODEL_NAME}, timeout=10).json()
    assert old["model"] == cifar_model_store.legacy_tag
    assert [p["label"] for p in old["top_k"]] == [p["label"] for p in new["top_k"]]  # a temperature keeps the order
    temperature = httpx.get(f"{cifar_server.url}/metadata", timeout=10).json()["calibration"]["temperature"]
    calibrated = calibrate(np.array([[p["probability"] for p in old["top_k"]]]), temperature)[0]
    assert np.allclose(calibrated, [p["probability"] for p in new["top_k"]], atol=1e-6)  # the new card is calibrated
    assert metadata["architecture"] == "tiny_cnn" and metadata["metrics"]["test_accuracy"] == 0.1


def awkward_images() -> dict[str, bytes]:
    """Files where a naive decoder and the service's differ: alpha, palettes, depth, CMYK, EXIF, size."""
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (45, 61), dtype=np.uint8)))
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    encoded = {
        "rgba.png": (rgba, "PNG", {}),
        "la.png": (rgba.convert("LA"), "PNG", {}),
        "p_transparent.png": (palette, "PNG", {"transparency": 0}),
        "sixteen.png": (Image.fromarray(rng.integers(0, 65536, (40, 40)).astype(np.uint16)), "PNG", {}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "exif_rotated.jpg": (rgb, "JPEG", {"exif": exif}),
        "large.bmp": (rgb.resize((300, 200)), "BMP", {}),
    }
    files = {}
    for name, (image, fmt, options) in encoded.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        files[name] = buffer.getvalue()
    return files


def test_training_and_serving_decode_the_same_pixels(tmp_path: Path) -> None:
    files = awkward_images()
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                for name, data in files.items():
                    info = tarfile.TarInfo(f"{split}/{cls}/{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    dataset = load_dataset(str(archive), 0.0, seed=0)
    served = [decode_image(files[name]) for name in sorted(files)]  # the loader reads files sorted by name
    trained = dataset.x_test[dataset.y_test == 0]
    assert trained.shape == (len(files), 32, 32, 3) and trained.dtype == np.uint8
    for name, want, got in zip(sorted(files), served, trained):
        assert np.array_equal(want, got), name
    as_displayed, as_stored = png_of_jpeg_pixels(files["exif_rotated.jpg"])
    assert np.array_equal(served[sorted(files).index("exif_rotated.jpg")], decode_image(as_displayed))
    assert not np.array_equal(decode_image(as_displayed), decode_image(as_stored))


def png_of_jpeg_pixels(data: bytes) -> tuple[bytes, bytes]:
    """The JPEG's own pixels as lossless PNGs: turned as its EXIF orientation says, and as stored."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        turned = ImageOps.exif_transpose(image)
        pngs = []
        for picture in (turned, image):
            buffer = io.BytesIO()
            picture.convert("RGB").save(buffer, "PNG")
            pngs.append(buffer.getvalue())
    return pngs[0], pngs[1]


def test_bento_serves_from_its_own_source(cifar_model_store: ModelStore) -> None:
    """The built bento's src/ holds every module the service imports (no hand-picked files)."""
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=PROJECT_ROOT, env=cifar_model_store.env(), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name, version = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:").split(":")
    source = cifar_model_store.home / "bentos" / name / version / "src"
    code = (
        "import sys, service.service as s; "
        "mods = [m.__file__ for n, m in sys.modules.items() if n.split('.')[0] in ('service', 'contract', 'training')]; "
        "print(len(mods)); [print(f) for f in mods]"
    )
    env = cifar_model_store.env(PYTHONPATH=str(source))
    done = subprocess.run([sys.executable, "-c", code], cwd=source, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    count, *files = done.stdout.split("\n")
    files = [f for f in files if f]
    assert int(count) == len(files) > 5
    assert all(Path(f).resolve().is_relative_to(source.resolve()) for f in files), files
