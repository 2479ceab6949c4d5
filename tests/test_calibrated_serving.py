"""Issue 22 on the live service: calibrated probabilities and the out-of-distribution flag and score in
every answer (/classify, /classify_batch, the v2 protocol), /metadata stating them, an old (uncalibrated)
card still served, and the CIFAR10_OOD_THRESHOLD override. All on the session's shared servers.

The session's tiny model (conftest.store_tiny_model) is calibrated by training.calibration on the tiny
fixture's test batch; the image tree's test photos are images it never saw.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from benchmarks.harness import ServerProcess
from conftest import CONTROL_OOD_THRESHOLD, LEGACY_MODEL_NAME, MODEL_NAME, ModelStore, noise_images
from contract.calibration import calibrate
from service.schemas import Classification, ModelMetadata

pytestmark = pytest.mark.timeout(300)

PHOTOS = sorted((Path(__file__).parent / "fixtures" / "images-tiny" / "test").glob("*/*.jpg"))
BATCH = 8  # cifar_server's CIFAR10_MAX_BATCH_FILES


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def classify_all(url: str, files: list[bytes], **form: str) -> list[Classification]:
    """/classify_batch, BATCH files at a time."""
    answers = []
    for start in range(0, len(files), BATCH):
        upload = [("images", (f"{i}.img", data)) for i, data in enumerate(files[start : start + BATCH])]
        response = httpx.post(f"{url}/classify_batch", files=upload, data=form, timeout=60)
        assert response.status_code == 200, response.text
        answers += [Classification.model_validate(answer) for answer in response.json()]
    return answers


def metadata(url: str, model: str | None = None) -> ModelMetadata:
    response = httpx.get(f"{url}/metadata", params={"model": model} if model else None, timeout=30)
    assert response.status_code == 200, response.text
    return ModelMetadata.model_validate(response.json())


def test_metadata_states_the_calibration(cifar_server: ServerProcess) -> None:
    meta = metadata(cifar_server.url)
    calibration = meta.calibration
    assert meta.calibrated and calibration is not None and meta.schema_version >= 2
    assert calibration.temperature > 0 and calibration.score and calibration.val_size == 50
    assert meta.ood_threshold == calibration.threshold  # no CIFAR10_OOD_THRESHOLD: the card's
    assert abs(calibration.val_flag_rate - calibration.flag_rate) <= 0.02
    assert calibration.test is not None and calibration.test.size == len(PHOTOS)


def test_noise_is_flagged_and_unseen_photos_are_not(cifar_server: ServerProcess) -> None:
    threshold = metadata(cifar_server.url).ood_threshold
    rng = np.random.default_rng(2026)  # not the noise the model was trained with
    noise = classify_all(cifar_server.url, [png(image) for image in noise_images(rng, 16)])
    photos = classify_all(cifar_server.url, [path.read_bytes() for path in PHOTOS])
    for answer in noise + photos:
        assert answer.in_distribution_score is not None and threshold is not None
        assert answer.in_distribution == (answer.in_distribution_score >= threshold), answer
    assert [answer.in_distribution for answer in noise] == [False] * 16
    assert sum(not answer.in_distribution for answer in photos) <= len(photos) // 5


def test_v2_declares_and_returns_the_flag_and_the_score(cifar_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(cifar_server.url.removeprefix("http://"))
    outputs = client.get_model_metadata(MODEL_NAME)["outputs"]
    assert outputs == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                       {"name": "in_distribution", "datatype": "BOOL", "shape": [-1]},
                       {"name": "in_distribution_score", "datatype": "FP32", "shape": [-1]}]
    pixels = np.concatenate([noise_images(np.random.default_rng(5), 2),
                             np.stack([np.asarray(Image.open(path).convert("RGB")) for path in PHOTOS[:2]])])
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    answers = classify_all(cifar_server.url, [png(image) for image in pixels], top_k="10")
    for binary in (True, False):
        wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("in_distribution_score", "in_distribution")]
        result = client.infer(MODEL_NAME, [tensor], outputs=wanted)
        assert [output["name"] for output in result.get_response()["outputs"]] == ["in_distribution_score", "in_distribution"]
        assert result.as_numpy("in_distribution").tolist() == [a.in_distribution for a in answers]
        assert result.as_numpy("in_distribution_score") == pytest.approx([a.in_distribution_score for a in answers], abs=1e-6)
    every = client.infer(MODEL_NAME, [tensor])  # no outputs named: all three
    assert [output["name"] for output in every.get_response()["outputs"]] == [o["name"] for o in outputs]
    for row, answer in zip(every.as_numpy("probabilities"), answers):  # the calibrated probabilities, as /classify
        assert sorted(row.tolist(), reverse=True) == pytest.approx([p.probability for p in answer.top_k], abs=1e-5)


def test_an_old_card_serves_and_says_uncalibrated(control_server: ServerProcess, cifar_model_store: ModelStore) -> None:
    """The entry stored as before the model card (no schema_version, no calibration) beside the calibrated one
    (control_server serves both)."""
    old, new = metadata(control_server.url, LEGACY_MODEL_NAME), metadata(control_server.url, MODEL_NAME)
    assert old.tag == cifar_model_store.legacy_tag and old.schema_version == 0
    assert not old.calibrated and old.calibration is None and old.ood_threshold is None
    photo = [PHOTOS[0].read_bytes()]
    plain = classify_all(control_server.url, photo, top_k="10", model=LEGACY_MODEL_NAME)[0]
    calibrated = classify_all(control_server.url, photo, top_k="10", model=MODEL_NAME)[0]
    assert plain.in_distribution is None and plain.in_distribution_score is None
    assert calibrated.in_distribution is not None and new.calibration is not None
    # the same network: the old entry's probabilities, calibrated with the new card's temperature, are the new's
    order = [p.label for p in plain.top_k]
    expected = calibrate(np.array([[p.probability for p in plain.top_k]]), new.calibration.temperature)[0]
    by_label = {p.label: p.probability for p in calibrated.top_k}
    assert [by_label[label] for label in order] == pytest.approx(expected.tolist(), abs=1e-5)
    v2 = triton.InferenceServerClient(control_server.url.removeprefix("http://"))
    assert [o["name"] for o in v2.get_model_metadata(LEGACY_MODEL_NAME)["outputs"]] == ["probabilities"]
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}],
            "outputs": [{"name": "in_distribution"}]}
    refused = httpx.post(f"{control_server.url}/v2/models/{LEGACY_MODEL_NAME}/infer", json=body, timeout=30)
    assert refused.status_code == 400 and "needs a calibrated model" in refused.json()["error"]


def test_the_threshold_setting_overrides_the_cards(control_server: ServerProcess) -> None:
    """control_server runs with CIFAR10_OOD_THRESHOLD=CONTROL_OOD_THRESHOLD: above every score, so every
    image is flagged, whatever the card says."""
    meta = metadata(control_server.url)
    assert meta.calibration is not None and meta.ood_threshold == CONTROL_OOD_THRESHOLD != meta.calibration.threshold
    response = httpx.post(f"{control_server.url}/classify", content=PHOTOS[0].read_bytes(),
                          headers={"Content-Type": "image/jpeg"}, timeout=30)
    answer = Classification.model_validate(response.json())
    assert answer.in_distribution is False and answer.in_distribution_score is not None
    assert answer.in_distribution_score < CONTROL_OOD_THRESHOLD
