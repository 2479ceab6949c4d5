"""Unit tests of the service's parts that need no server: images, batcher, device, settings."""

from __future__ import annotations

import os

import asyncio
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from service.http.auth import ApiKeyMiddleware, bearer_token, is_open
from contract.calibration import Calibrated, apply_calibration
from contract.card import Calibration
from service.inference.batching import BatcherClosed, MicroBatcher, power_of_two_sizes
from contract.calibration import calibrated_predict, unpacked
from service.inference.device import configure_device
from service.http.limits import validation_message
from contract.images import ImageError, decode_image
from service.settings import Settings, SettingsError, gpu_count, model_tag, model_tags


@pytest.mark.parametrize("name", ["png", "jpeg", "gif", "bmp", "webp", "tiff", "mode_l", "mode_la", "mode_p", "mode_rgba", "mode_cmyk", "mode_16bit", "large"])
def test_decode_every_format_and_mode(image_bytes: dict[str, bytes], name: str) -> None:
    array = decode_image(image_bytes[name], max_pixels=10_000_000)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    if name in ("bmp", "tiff", "mode_rgba"):  # lossless encodings of the PNG's pixels: the same array
        np.testing.assert_array_equal(array, decode_image(image_bytes["png"], max_pixels=10_000_000))
    if name in ("mode_l", "mode_la"):  # grey stays grey: three equal channels
        assert (array == array[..., :1]).all()


SOURCE = (200, 60, 30)  # distinct channels: swapped or inverted channels (CMYK) show


def _solid(mode: str = "RGB", colour: tuple[int, ...] = SOURCE) -> Image.Image:
    image = Image.new("RGB", (64, 48), colour[:3])
    if mode == "P":  # an exact palette: the file holds the colour itself, not a dithered approximation
        return image.convert("P", palette=Image.Palette.ADAPTIVE)
    return image.convert(mode)


def _gif_two_frames() -> bytes:
    """An animated GIF: the first frame is SOURCE, the second blue; the service reads the first."""
    buffer = io.BytesIO()
    _solid("P").save(buffer, "GIF", save_all=True, append_images=[_solid("P", (20, 40, 220))])
    return buffer.getvalue()


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, data, expected, tolerance",
    [
        ("png", lambda: _encoded(_solid(), "PNG"), SOURCE, 0),
        ("jpeg", lambda: _encoded(_solid(), "JPEG", quality=90), SOURCE, 3),
        ("bmp", lambda: _encoded(_solid(), "BMP"), SOURCE, 0),
        ("tiff", lambda: _encoded(_solid(), "TIFF"), SOURCE, 0),
        ("webp", lambda: _encoded(_solid(), "WEBP"), SOURCE, 5),  # lossy by default
        ("webp_lossless", lambda: _encoded(_solid(), "WEBP", lossless=True), SOURCE, 0),
        ("gif", lambda: _encoded(_solid("P"), "GIF"), SOURCE, 0),
        ("gif_animated", _gif_two_frames, SOURCE, 0),
        ("png_palette", lambda: _encoded(_solid("P"), "PNG"), SOURCE, 0),
        ("jpeg_cmyk", lambda: _encoded(_solid("CMYK"), "JPEG", quality=90), SOURCE, 3),
        ("tiff_cmyk", lambda: _encoded(_solid("CMYK"), "TIFF"), SOURCE, 0),
        ("png_rgba_opaque", lambda: _encoded(_solid("RGBA"), "PNG"), SOURCE, 0),
        ("png_rgba_half", lambda: _encoded(Image.new("RGBA", (8, 8), (*SOURCE, 128)), "PNG"), (227, 157, 142), 1),  # over white
        ("png_grey", lambda: _encoded(_solid("L"), "PNG"), (98, 98, 98), 0),  # ITU-R 601 luma of SOURCE
        ("png_grey_alpha", lambda: _encoded(_solid("LA"), "PNG"), (98, 98, 98), 0),
    ],
)
def test_decode_keeps_the_source_colour(name: str, data: object, expected: tuple[int, int, int], tolerance: int) -> None:
    """A solid-colour image decodes to that colour in every pixel, whatever the format or mode."""
    array = decode_image(data(), 10**7).astype(int)  # type: ignore[operator]
    error = np.abs(array - np.array(expected)).max()
    assert error <= tolerance, (name, array.reshape(-1, 3).min(0).tolist(), array.reshape(-1, 3).max(0).tolist())


def test_decode_keeps_colour_and_scales_16_bit() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), 10**7)[16, 16].tolist() == [200, 30, 30]
    buffer = io.BytesIO()
    Image.fromarray(np.full((10, 10), 32768, dtype=np.uint16)).save(buffer, "PNG")
    assert abs(int(decode_image(buffer.getvalue(), 10**7)[0, 0, 0]) - 128) <= 1  # not clipped to 255


def test_decode_transparency_goes_over_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), 10**7).min() == 255


@pytest.mark.parametrize(
    "data, status",
    [(b"", 400), (b"hello", 415), (b"\x89PNG\r\n\x1a\n" + bytes(30), 400)],  # a broken PNG: 400
)
def test_decode_errors(data: bytes, status: int) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data, 10**6)
    assert info.value.status_code == status


def test_decode_pixel_limit_checked_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("1", (14000, 14000)).save(buffer, "PNG")  # 196 MP in a few kB: over Pillow's own bomb limit too
    with pytest.raises(ImageError, match="pixels"):
        decode_image(buffer.getvalue(), 10**6)


def test_power_of_two_sizes() -> None:
    assert power_of_two_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert power_of_two_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert power_of_two_sizes(1) == [1]


def test_batcher_groups_concurrent_requests_and_keeps_order() -> None:
    calls: list[int] = []

    def predict(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return images[:, 0, 0, :1].astype(np.float32).repeat(10, axis=1)

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(predict, max_batch_size=8, max_latency_ms=50, observe_batch=lambda n: None)
        requests = [np.full((1, 32, 32, 3), i, dtype=np.uint8) for i in range(20)]
        try:
            return await asyncio.gather(*(batcher.predict(r) for r in requests))
        finally:
            await batcher.close()

    results = asyncio.run(run())
    assert [int(r[0, 0]) for r in results] == list(range(20))
    assert sum(calls) == 20 and max(calls) <= 8 and len(calls) < 20


def test_batcher_splits_large_requests_and_reports_errors() -> None:
    sizes: list[int] = []

    def predict(images: np.ndarray) -> np.ndarray:
        if images[0, 0, 0, 0] == 255:
            raise RuntimeError("boom")
        return np.zeros((len(images), 10), np.float32)

    async def run() -> None:
        batcher = MicroBatcher(predict, max_batch_size=4, max_latency_ms=1, observe_batch=sizes.append)
        assert (await batcher.predict(np.zeros((10, 32, 32, 3), np.uint8))).shape == (10, 10)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.predict(np.full((1, 32, 32, 3), 255, np.uint8))
        assert (await batcher.predict(np.zeros((1, 32, 32, 3), np.uint8))).shape == (1, 10)  # still serving
        await batcher.close()

    asyncio.run(run())
    assert sizes[:3] == [4, 4, 2]


def test_calibration_runs_per_batch_and_each_request_gets_its_rows() -> None:
    """The calibrated rows go through the batcher's slicing and joining unchanged: every request gets what
    contract.calibration gives for its own images, whether batched with others or split."""
    rng = np.random.default_rng(4)
    table = rng.dirichlet(np.full(10, 0.3), 256).astype(np.float32)  # image i's network output: row i

    def network(images: np.ndarray) -> np.ndarray:
        return table[images[:, 0, 0, 0].astype(int)]

    card = Calibration(temperature=1.7, score="max_probability", threshold=0.45, flag_rate=0.05,
                       val_flag_rate=0.05, val_size=100)
    requests = [np.full((n, 32, 32, 3), i, np.uint8) + np.arange(n, dtype=np.uint8)[:, None, None, None]
                for i, n in zip(range(0, 200, 20), [1, 3, 1, 9, 2, 1, 1, 4, 1, 1])]

    async def run(calibration: Calibration | None, threshold: float | None) -> list[Calibrated]:
        batcher = MicroBatcher(calibrated_predict(network, calibration, threshold), max_batch_size=4, max_latency_ms=20)
        try:
            rows = await asyncio.gather(*(batcher.predict(images) for images in requests))
        finally:
            await batcher.close()
        return [unpacked(r, calibration is not None) for r in rows]

    for calibration, threshold in ((card, None), (card, 0.9), (None, 0.9)):
        for got, images in zip(asyncio.run(run(calibration, threshold)), requests):
            expected = apply_calibration(network(images), calibration, threshold)
            assert np.allclose(got.probabilities, expected.probabilities, atol=1e-7)
            if calibration is None:
                assert got.scores is None and got.in_distribution is None
            else:
                assert np.allclose(got.scores, expected.scores) and (got.in_distribution == expected.in_distribution).all()
                assert got.in_distribution.tolist() == (got.scores >= (threshold or card.threshold)).tolist()


def test_batcher_close_drains_queued_requests_then_refuses() -> None:
    """Shutdown: everything queued before close() still gets its answer; later calls are refused."""
    calls: list[int] = []

    def predict(images: np.ndarray) -> np.ndarray:
        import time

        time.sleep(0.05)  # a slow model: requests pile up behind the first call
        calls.append(len(images))
        return np.zeros((len(images), 10), np.float32)

    async def run() -> None:
        batcher = MicroBatcher(predict, max_batch_size=4, max_latency_ms=1)
        pending = [asyncio.ensure_future(batcher.predict(np.zeros((1, 32, 32, 3), np.uint8))) for _ in range(10)]
        await asyncio.sleep(0.01)  # the first batch is running, the rest queued
        await batcher.close(timeout=10)
        results = await asyncio.gather(*pending)
        assert [r.shape for r in results] == [(1, 10)] * 10
        with pytest.raises(BatcherClosed, match="shutting down"):
            await batcher.predict(np.zeros((1, 32, 32, 3), np.uint8))

    asyncio.run(run())
    assert sum(calls) == 10


def test_batcher_close_times_out_instead_of_hanging() -> None:
    release = __import__("threading").Event()

    def predict(images: np.ndarray) -> np.ndarray:
        release.wait(5)
        return np.zeros((len(images), 10), np.float32)

    async def run() -> None:
        batcher = MicroBatcher(predict, max_batch_size=1, max_latency_ms=1)
        first = asyncio.ensure_future(batcher.predict(np.zeros((1, 32, 32, 3), np.uint8)))
        second = asyncio.ensure_future(batcher.predict(np.zeros((1, 32, 32, 3), np.uint8)))
        await asyncio.sleep(0.05)
        await batcher.close(timeout=0.2)
        with pytest.raises(BatcherClosed, match="shut down before this request ran"):
            await second  # queued behind a stuck call: failed, not left hanging
        release.set()
        first.cancel()

    asyncio.run(run())


def _asgi_call(app: object, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, dict, bytes]:
    """Run one HTTP request through an ASGI app in process: (status, headers, body)."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def _ok_app(scope: dict, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def test_api_key_middleware() -> None:
    app = ApiKeyMiddleware(_ok_app, api_key="s3cret")
    auth = lambda value: [(b"authorization", value.encode())]  # noqa: E731
    assert _asgi_call(app, "/classify", auth("Bearer s3cret"))[0] == 200
    assert _asgi_call(app, "/classify", auth("bearer  s3cret "))[0] == 200  # scheme is case-insensitive
    for path in ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/static_content/index.css"):
        assert _asgi_call(app, path, [])[0] == 200, path
    status, headers, body = _asgi_call(app, "/classify", [], b"x" * 1000)
    assert status == 401 and headers[b"www-authenticate"].startswith(b"Bearer")
    assert b"missing API key" in body and b"\n" not in body
    for value in ("Bearer wrong", "Bearer s3cre", "Bearer s3cretX", "Basic czNjcmV0", "s3cret", "Bearer"):
        status, _, body = _asgi_call(app, "/metadata", auth(value))
        assert status == 401 and b"invalid API key" in body, value
    assert _asgi_call(app, "/anything/else", [])[0] == 401  # deny by default
    assert _asgi_call(ApiKeyMiddleware(_ok_app, api_key=None), "/classify", [])[0] == 200  # no key: open
    assert bearer_token({"headers": [(b"authorization", b"Bearer abc")]}) == "abc" and not is_open("/classify")


def test_settings_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFAR10_API_KEY", raising=False)
    assert Settings.from_env().api_key is None
    monkeypatch.setenv("CIFAR10_API_KEY", "  ")
    assert Settings.from_env().api_key is None
    monkeypatch.setenv("CIFAR10_API_KEY", "k3y")
    assert Settings.from_env().api_key == "k3y" and "k3y" not in repr(Settings.from_env())


def test_decode_hostile_corpus() -> None:
    """Every file of the corpus decodes (200) or fails with the expected status and a one-line reason."""
    from bad_files import corpus

    for name, (data, status, message) in corpus().items():
        try:
            decode_image(data, 4_000_000)
            outcome = (200, "")
        except ImageError as exc:
            outcome = (exc.status_code, str(exc))
        assert outcome[0] == status and message in outcome[1] and "\n" not in outcome[1], (name, outcome)


class FakeTF:
    """Just the tf.config surface configure_device uses: no GPU exists here."""

    def __init__(self, gpus: list[str]) -> None:
        self.visible: list[str] = []
        self.growth: list[str] = []
        self.intra_op_threads: list[int] = []
        experimental = SimpleNamespace(
            set_memory_growth=lambda gpu, on: self.growth.append(gpu),
            get_device_details=lambda gpu: {"device_name": f"NVIDIA Fake {gpu[-1]}"},
        )
        self.config = SimpleNamespace(
            list_physical_devices=lambda kind: [SimpleNamespace(name=g) for g in gpus] and gpus,
            set_visible_devices=lambda devices, kind: self.visible.extend(devices),
            experimental=experimental,
            threading=SimpleNamespace(set_intra_op_parallelism_threads=self.intra_op_threads.append),
        )


@pytest.mark.parametrize("worker_index, expected", [(1, "GPU:0"), (2, "GPU:1"), (3, "GPU:0"), (None, "GPU:0")])
def test_one_gpu_per_worker_with_memory_growth(worker_index: int | None, expected: str) -> None:
    tf = FakeTF(["GPU:0", "GPU:1"])
    device = configure_device(worker_index, 1, tf=tf)
    assert tf.visible == [expected] and tf.growth == [expected]
    assert device.type == "GPU" and str(device) == f"GPU: NVIDIA Fake {expected[-1]}"


def test_cpu_when_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFAR10_INFERENCE_THREADS", raising=False)
    tf = FakeTF([])
    threads = Settings.from_env().inference_threads
    device = configure_device(1, threads, tf=tf)
    assert device.type == "CPU" and str(device).startswith("CPU: ")
    assert tf.intra_op_threads == [max(1, (os.cpu_count() or 2) // 2)] == [threads]
    monkeypatch.setenv("CIFAR10_INFERENCE_THREADS", "3")
    configure_device(1, Settings.from_env().inference_threads, tf=tf)
    assert tf.intra_op_threads[-1] == 3


def test_gpu_count_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_count() == 0


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR10_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("CIFAR10_MODEL", "cifar10-cnn-sgd")
    settings = Settings.from_env()
    assert settings.max_batch_size == 16 and settings.max_body_bytes == 10 * 1024 * 1024
    assert model_tag() == "cifar10-cnn-sgd:latest"
    assert settings.ood_threshold is None  # the card's threshold
    monkeypatch.setenv("CIFAR10_OOD_THRESHOLD", " 0.25 ")
    assert Settings.from_env().ood_threshold == 0.25
    monkeypatch.setenv("CIFAR10_MAX_BATCH_SIZE", "lots")
    with pytest.raises(SettingsError, match="CIFAR10_MAX_BATCH_SIZE='lots' is not an integer"):
        Settings.from_env()


@pytest.mark.parametrize("name, value, message", [
    ("CIFAR10_WORKERS", "0", "CIFAR10_WORKERS=0 must be at least 1"),
    ("CIFAR10_INFERENCE_THREADS", "two", "CIFAR10_INFERENCE_THREADS='two' is not an integer"),
    ("CIFAR10_TRUST_MODEL_CODE", "maybe", "CIFAR10_TRUST_MODEL_CODE='maybe' is not a switch"),
    ("CIFAR10_MODELS", "a,b,a:1", "names a model twice"),
    ("CIFAR10_OOD_THRESHOLD", "high", "CIFAR10_OOD_THRESHOLD='high' is not a number"),
    ("CIFAR10_OOD_THRESHOLD", "nan", "must be a finite number"),
])
def test_every_setting_is_validated(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        Settings.from_env()


def test_served_models_from_the_environment() -> None:
    assert model_tags({}) == ["cifar10-cnn:latest"]
    assert model_tags({"CIFAR10_MODEL": "x:1"}) == ["x:1"]
    assert model_tags({"CIFAR10_MODEL": "x", "CIFAR10_MODELS": " a , b:2 "}) == ["a:latest", "b:2"]
    settings = Settings.from_env({"CIFAR10_MODELS": "a,b", "CIFAR10_MODEL_CONTROL": "1", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert (settings.model_tag, settings.model_control, settings.gpus, settings.workers) == ("a:latest", True, 2, 2)


def test_validation_message_is_one_line() -> None:
    errors = [{"loc": ["top_k"], "msg": "Input should be less than or equal to 10"}, {"loc": ["image"], "msg": "Field required"}]
    assert validation_message(errors) == "top_k: Input should be less than or equal to 10; image: Field required"


def test_a_full_collection_skips_the_frozen_start_up_objects() -> None:
    """service/inference/memory.py: after the freeze, a full collection no longer scans what start-up left."""
    import gc
    import time

    from service.inference.memory import freeze_start_up_objects

    held = [[n] for n in range(300_000)]  # what a worker holds after start-up (lists: always tracked), scaled down

    def full_collection_seconds() -> float:
        started = time.perf_counter()
        gc.collect()
        return time.perf_counter() - started

    before = full_collection_seconds()
    try:
        assert freeze_start_up_objects() >= len(held)
        after = full_collection_seconds()
    finally:
        gc.unfreeze()
    assert after < before / 5, (before, after)
