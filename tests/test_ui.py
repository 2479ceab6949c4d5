"""The /ui page: its routes (no server), then the live page in a real headless Chromium.

The browser tests need Debian's chromium (/usr/bin/chromium) and the `playwright` package; they
are skipped when either is missing (and fail under CI=true, where the README's test command installs
them). Set UI_SCREENSHOTS=docs to write the page's screenshots to docs/ (the ones in the
repository); by default they go to a temporary folder.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from benchmarks.harness import ServerProcess
from conftest import MODEL_NAME, PROJECT_ROOT, ModelStore, noise_images, start_server
from service.http.routes import build_app
from service.ui.routes import ASSETS, STATIC_DIR

pytestmark = pytest.mark.timeout(300)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
UI_MODEL = "cifar10-ui"  # the tiny model stored again, with plots and per-class scores
API_KEY = "ui-test-key"  # ui_server's CIFAR10_API_KEY: the page asks for it once
KEY = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY = 1024 * 1024
TEXT_FILE = b"just some notes, not a photo\n"

# ---- the routes, without a server -------------------------------------------------------------


def ui_get(path: str) -> httpx.Response:
    """GET `path` from the UI routes alone, in process."""
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=build_app())  # the service's app, its error handler included
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
            return await client.get(path, follow_redirects=True)
    return asyncio.run(get())


def test_page_and_assets_have_their_content_types() -> None:
    page = ui_get("/ui")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, media_type in {"app.js": "text/javascript", "style.css": "text/css"}.items():
        answer = ui_get(f"/ui/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media_type)
        assert answer.content == (STATIC_DIR / name).read_bytes()
    assert ui_get("/ui/").text == page.text


@pytest.mark.parametrize("path", [
    "/ui/index.html", "/ui/ui.py", "/ui/..%2fui.py", "/ui/%2e%2e/ui.py", "/ui/..%5cui.py", "/ui/.env", "/ui/app.js%00",
])
def test_only_listed_assets_are_served(path: str) -> None:
    answer = ui_get(path)
    assert answer.status_code == 404, (path, answer.status_code)
    assert "import" not in answer.text  # no Python source came back


def test_page_is_small_self_contained_and_inserts_data_as_text() -> None:
    files = {path.name: path.read_text() for path in STATIC_DIR.iterdir()}
    assert set(files) == {"index.html", *ASSETS}
    assert sum(len(text.encode()) for text in files.values()) < 100 * 1024
    for name, text in files.items():
        elsewhere = re.sub(r"xmlns=\"http://www\.w3\.org/2000/svg\"", "", text)  # a name, not a request
        host = re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", elsewhere, re.IGNORECASE)
        assert host is None, f"{name} names another host: {host and host.group()}"
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", text), name
    assert "<script>" not in files["index.html"] and " style=" not in files["index.html"]


# ---- the live page ----------------------------------------------------------------------------

STORE_WITH_PLOTS = """
import sys
from pathlib import Path

import numpy as np

from contract.card import Metrics, ModelCard
from contract.predictor import read_card
from training.calibration import Predictions, plot_reliability
from training.report import confusion_matrix, per_class_scores, plot_confusion_matrix, plot_curves
from training.store import save_model

source, name, work, hostile_name, hostile_class, hostile_architecture = sys.argv[1:7]
ref, card = read_card(source)
model_file, labels, work = Path(ref.path_of(card.model_file)), dict(ref.info.labels), Path(work)
rng = np.random.default_rng(3)
truth = rng.integers(0, 10, 2000)
matrix = confusion_matrix(truth, np.where(rng.random(2000) < 0.8, truth, rng.integers(0, 10, 2000)), 10)
history = {"accuracy": [0.4, 0.6, 0.7, 0.75], "val_accuracy": [0.45, 0.62, 0.7, 0.74],
           "loss": [1.6, 1.1, 0.9, 0.8], "val_loss": [1.5, 1.1, 0.95, 0.85], "learning_rate": [1e-3] * 4}
plots = [work / "curves.png", work / "confusion_matrix.png", work / "reliability.png"]
plot_curves(history, plots[0], name)
plot_confusion_matrix(matrix, card.class_names, plots[1], name)
overconfident = Predictions(rng.dirichlet(np.full(10, 0.2), 2000), truth)
plot_reliability(overconfident, card.calibration.temperature, plots[2], name)


def with_scores(class_names, architecture, config, calibration):
    values = card.model_dump() | {
        "class_names": class_names, "architecture": architecture, "config": config, "calibration": calibration,
        "per_class": per_class_scores(matrix, class_names),
        "metrics": Metrics(test_accuracy=float(np.trace(matrix) / matrix.sum()), test_loss=0.61, epochs_run=4),
    }
    return ModelCard.model_validate(values)


ui = with_scores(card.class_names, "tiny_cnn (stored again with plots)", card.config, card.calibration)
print("TAG=" + save_model(name, model_file, ui, labels, extra_files=plots))
hostile_names = card.class_names[:-1] + [hostile_class]  # and uncalibrated, as an imported model without data
save_model(hostile_name, model_file, with_scores(hostile_names, hostile_architecture, {"note": hostile_class}, None), labels)
"""
# A model file that users import can name its classes anything: the page must show it as text.
HOSTILE_MODEL = "cifar10-hostile"
HOSTILE_CLASS = '<img src="x" onerror="window.pwned=1">truck'
HOSTILE_ARCHITECTURE = "<script>window.pwned=2</script><b>net</b>"


@pytest.fixture(scope="module")
def plots_store(cifar_model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A copy of the session's store plus `cifar10-ui`: the tiny model with real plots and scores."""
    home = tmp_path_factory.mktemp("ui_store")
    shutil.copytree(cifar_model_store.home / "models", home / "models")
    store = ModelStore(home=home, tag=cifar_model_store.tag)
    result = subprocess.run(
        [sys.executable, "-c", STORE_WITH_PLOTS, cifar_model_store.tag, UI_MODEL, str(home), HOSTILE_MODEL,
         HOSTILE_CLASS, HOSTILE_ARCHITECTURE],
        cwd=PROJECT_ROOT, env=store.env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = next(line[4:] for line in result.stdout.splitlines() if line.startswith("TAG="))
    return ModelStore(home=home, tag=tag)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is not installed (apt-get install chromium; the README's test command does)"
        pytest.fail(missing) if os.environ.get("CI") else pytest.skip(missing)  # CI must run the browser
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def expect(target: Any) -> Any:
    """playwright's waiting assertions (they poll without eval, which the page's CSP forbids)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def running_server(store: ModelStore, log: Path, **env: str) -> ServerProcess:
    server = start_server(store, log, CIFAR10_MAX_BODY_BYTES=str(MAX_BODY), **env)
    server.require_running()
    return server


def photo(kind: str, size: tuple[int, int]) -> bytes:
    """A real-looking photo: a sky gradient, a ground band and a blurred shape, with noise."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = size
    rng = np.random.default_rng(width)
    sky = np.linspace([90, 150, 230], [200, 225, 250], height)[:, None, :].repeat(width, axis=1)
    sky[int(height * 0.7):] = [70, 120, 60] if kind == "JPEG" else [40, 80, 140]
    pixels = np.clip(sky + rng.normal(0, 8, sky.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    box = (width * 0.3, height * 0.35, width * 0.7, height * 0.75)
    ImageDraw.Draw(image).ellipse(box, fill=(150, 90, 50) if kind == "JPEG" else (230, 230, 235))
    buffer = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(2)).save(buffer, kind, **({"quality": 88} if kind == "JPEG" else {}))
    return buffer.getvalue()


def upload(name: str, data: bytes, mime: str) -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": data}


def api_answer(server: ServerProcess, name: str, data: bytes, model: str) -> dict[str, Any]:
    files = {"image": (name, data)}
    return httpx.post(f"{server.url}/classify", files=files, data={"model": model, "top_k": "10"},
                      headers=KEY, timeout=30).json()


def results(page: Any, count: int) -> dict[str, dict[str, Any]]:
    """file name -> state, label, error and model of each result, once `count` have an answer."""
    answered = page.locator(".result[data-state=done], .result[data-state=error]")
    expect(answered).to_have_count(count, timeout=30_000)
    return page.eval_on_selector_all(".result", """items => Object.fromEntries(items.map(li => [
        li.querySelector('.file-name').textContent,
        {state: li.dataset.state, label: li.querySelector('.label')?.textContent ?? '',
         error: li.querySelector('.answer .error')?.textContent ?? '',
         model: li.querySelector('.model-tag')?.textContent ?? '', bars: li.querySelectorAll('.bars li').length}]))""")


def accuracy_text(metadata: dict[str, Any]) -> str:
    return f"{metadata['metrics']['test_accuracy'] * 100:.2f}%"


def screenshot_dir(tmp_path: Path) -> Path:
    wanted = os.environ.get("UI_SCREENSHOTS")
    folder = (PROJECT_ROOT / wanted) if wanted else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def same_host(url: str, server: ServerProcess) -> bool:
    parts = urlsplit(url.removeprefix("blob:"))
    return parts.scheme in ("http", "https") and parts.netloc == urlsplit(server.url).netloc


@pytest.fixture(scope="module")
def ui_server(plots_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Three served models: the one with plots (the default), the session's tiny one, the hostile one; behind
    an API key, which the page asks for once."""
    server = running_server(plots_store, tmp_path_factory.mktemp("ui") / "serve.log", CIFAR10_API_KEY=API_KEY,
                            CIFAR10_MODELS=f"{UI_MODEL},{MODEL_NAME},{HOSTILE_MODEL}")
    try:
        yield server
    finally:
        server.stop()


def watch(page: Any) -> dict[str, Any]:
    """Every request URL, the first response per path, and uncaught page errors, as they happen."""
    seen: dict[str, Any] = {"requests": [], "responses": {}, "errors": []}
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("response", lambda response: seen["responses"].setdefault(urlsplit(response.url).path, response))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    return seen


def check_card(page: Any, metadata: dict[str, Any], responses: dict[str, Any]) -> None:
    """The card shows the model's accuracy, scores and calibration, and the three plots loaded as PNGs."""
    expect(page.locator(".plot img")).to_have_count(3, timeout=20_000)
    assert "Reliability diagram" in page.text_content("#plots")
    calibration = page.text_content("#card-calibration")
    assert f"{metadata['calibration']['temperature']:.3f}" in calibration
    assert f"{metadata['ood_threshold']:.4f}" in calibration and not page.is_visible("#calibration-none")
    assert page.text_content("#card-accuracy") == accuracy_text(metadata)
    assert page.text_content("#card-tag") == metadata["tag"]
    assert page.locator("#per-class tbody tr").count() == len(metadata["per_class"]) == 10
    for url in metadata["plots"].values():
        response = responses[url]
        assert response.status == 200 and response.headers["content-type"] == "image/png"
        assert int(response.headers["content-length"]) > 1000  # (a body read as a blob is not kept for playwright)
    assert page.eval_on_selector_all(".plot img", "images => images.every(i => i.complete && i.naturalWidth > 0)")


def check_uploads(page: Any, server: ServerProcess) -> None:
    """Two photos get the labels /classify gives; refused files show the service's own message."""
    jpeg, png = photo("JPEG", (640, 480)), photo("PNG", (300, 420))
    corrupt = png[: len(png) // 3]
    too_large = np.random.default_rng(0).integers(0, 256, MAX_BODY + 200_000, dtype=np.uint8).tobytes()
    page.set_input_files("#files", [
        upload("harbour.jpg", jpeg, "image/jpeg"), upload("meadow.png", png, "image/png"),
        upload("notes.txt", TEXT_FILE, "text/plain"), upload("broken.png", corrupt, "image/png"),
        upload("huge.jpg", too_large, "image/jpeg"),
    ])
    shown = results(page, 5)
    for name, data in (("harbour.jpg", jpeg), ("meadow.png", png)):
        expected = api_answer(server, name, data, UI_MODEL)
        assert shown[name] == {"state": "done", "label": expected["label"], "error": "",
                               "model": f"model {expected['model']}", "bars": 10}
    for name, data in (("notes.txt", TEXT_FILE), ("broken.png", corrupt)):
        assert shown[name]["state"] == "error"
        assert shown[name]["error"] == api_answer(server, name, data, UI_MODEL)["error"]
    assert shown["huge.jpg"]["error"].startswith(f"request body is over the limit of {MAX_BODY} bytes")
    flags_as_the_api(page, server, {"harbour.jpg": jpeg, "meadow.png": png})
    assert page.eval_on_selector_all(".result[data-state=done] canvas", """canvases => canvases.every(c =>
        c.getContext('2d').getImageData(0, 0, 32, 32).data.some((v, i) => i % 4 !== 3 && v !== 255))""")


NOISE = noise_images(np.random.default_rng(22), 1)[0]  # Gaussian noise, 32x32: the pixels the model sees


def flags_as_the_api(page: Any, server: ServerProcess, photos: dict[str, bytes]) -> None:
    """A noise image is said plainly to be none of the ten classes; each photo's answer says what the
    API's `in_distribution` says."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(NOISE).save(buffer, "PNG")
    page.set_input_files("#files", [upload("noise.png", buffer.getvalue(), "image/png")])
    results(page, 6)
    noise = page.locator(".result").first
    assert api_answer(server, "noise.png", buffer.getvalue(), UI_MODEL)["in_distribution"] is False
    expect(noise.locator(".ood.warning")).to_contain_text("Probably none of the ten classes")
    assert noise.get_attribute("data-in-distribution") == "false"
    for name, data in photos.items():
        item = page.locator(".result", has=page.locator(".file-name", has_text=name))
        flagged = api_answer(server, name, data, UI_MODEL)["in_distribution"] is False
        assert item.locator(".ood.warning").count() == int(flagged)
        assert item.get_attribute("data-in-distribution") == str(not flagged).lower()


def take_screenshots(page: Any, folder: Path) -> None:
    """Desktop, then phone width (where nothing may stick out sideways)."""
    page.screenshot(path=str(folder / "ui-desktop.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(folder / "ui-phone.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_page_classifies_photos_and_shows_the_card(browser: Any, ui_server: ServerProcess, tmp_path: Path) -> None:
    metadata = httpx.get(f"{ui_server.url}/metadata", params={"model": UI_MODEL}, headers=KEY, timeout=10).json()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen = watch(page)
    page.goto(f"{ui_server.url}/ui")
    enter_key(page, API_KEY, "missing API key")
    check_card(page, metadata, seen["responses"])
    check_uploads(page, ui_server)
    take_screenshots(page, screenshot_dir(tmp_path))
    switch_model(page, ui_server)
    hostile_names_are_text(page)
    paste_and_drop(page)
    context.close()
    assert not seen["errors"], seen["errors"]
    elsewhere = [url for url in seen["requests"] if not same_host(url, ui_server)]
    assert seen["requests"] and not elsewhere, elsewhere


def switch_model(page: Any, server: ServerProcess) -> None:
    """The selector lists the served models; choosing another changes the card and the model used."""
    other = httpx.get(f"{server.url}/metadata", params={"model": MODEL_NAME}, headers=KEY, timeout=10).json()
    options = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert options == [UI_MODEL, MODEL_NAME, HOSTILE_MODEL]
    page.select_option("#model", MODEL_NAME)
    expect(page.locator("#card-tag")).to_have_text(other["tag"])
    assert page.text_content("#card-accuracy") == accuracy_text(other)
    assert page.is_visible("#plots-none")
    page.set_input_files("#files", [upload("again.png", photo("PNG", (64, 64)), "image/png")])
    assert results(page, 7)["again.png"]["model"] == f"model {other['tag']}"


def hostile_names_are_text(page: Any) -> None:
    """Class names and an architecture holding HTML appear as typed, and none of it runs or renders."""
    page.select_option("#model", HOSTILE_MODEL)
    expect(page.locator("#card-architecture")).to_have_text(HOSTILE_ARCHITECTURE)
    assert HOSTILE_CLASS in page.text_content("#class-list")
    assert page.locator("#per-class tbody th").last.text_content() == HOSTILE_CLASS
    page.set_input_files("#files", [upload("third.png", photo("PNG", (80, 60)), "image/png")])
    results(page, 8)
    assert HOSTILE_CLASS in page.locator(".result").first.locator(".bars").text_content()
    assert "not calibrated" in page.locator(".result").first.locator(".ood").text_content()  # an uncalibrated card
    assert page.is_visible("#calibration-none") and not page.is_visible("#card-calibration")
    assert page.evaluate("window.pwned") is None
    assert page.locator("img[src='x'], b, script:not([src])").count() == 0


SEND_AS = """([how, bytes]) => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], how + ".png", {type: "image/png"}));
    const event = how === "pasted" ? new ClipboardEvent("paste", {clipboardData: data, bubbles: true})
                                   : new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true});
    document.body.dispatchEvent(event);
}"""


def paste_and_drop(page: Any) -> None:
    """A pasted and a dropped photo are classified like a chosen one."""
    data = list(photo("PNG", (48, 40)))
    page.evaluate(SEND_AS, ["pasted", data])
    page.evaluate(SEND_AS, ["dropped", data])
    shown = results(page, 10)
    assert shown["pasted.png"]["state"] == shown["dropped.png"]["state"] == "done"


def test_page_asks_for_the_api_key_once(browser: Any, ui_server: ServerProcess) -> None:
    server = ui_server
    assert httpx.get(f"{server.url}/ui", timeout=10).status_code == 200  # the page needs no key
    assert httpx.get(f"{server.url}/ui/app.js", timeout=10).status_code == 200
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{server.url}/ui")
    enter_key(page, "wrong-key", "missing API key")
    enter_key(page, API_KEY, "invalid API key")
    expect(page.locator(".plot img")).to_have_count(3, timeout=20_000)
    assert page.eval_on_selector_all(".plot img", "images => images.every(i => i.src.startsWith('blob:'))")
    assert page.evaluate("sessionStorage.getItem('cifar10-api-key')") == API_KEY
    jpeg = photo("JPEG", (500, 375))
    page.set_input_files("#files", [upload("harbour.jpg", jpeg, "image/jpeg")])
    expected = api_answer(server, "harbour.jpg", jpeg, UI_MODEL)
    assert results(page, 1)["harbour.jpg"]["label"] == expected["label"]
    assert not page.is_visible("#key-dialog")  # asked once: the kept key served every later request
    context.close()


def enter_key(page: Any, key: str, message: str) -> None:
    """The key form is open and shows the service's message; type `key` and send it."""
    expect(page.locator("#key-dialog")).to_be_visible(timeout=20_000)
    assert page.text_content("#key-message").startswith(message)
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
