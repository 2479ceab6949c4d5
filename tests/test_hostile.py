"""The service under hostile input: a corpus of bad files, malformed requests, and schemathesis.

Every answer must be a 4xx with a one-line message (or a 200 for a valid, if odd, image), never a
5xx or a hang, and the server must answer a good request right after.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bad_files import corpus
from conftest import assert_same_answer
from service.schemas import Classification

pytestmark = pytest.mark.timeout(300)

MAX_BODY = 1024 * 1024  # the cifar_server fixture's CIFAR10_MAX_BODY_BYTES
EXAMPLES_PER_OPERATION = 30  # per mode (positive, negative): bounded, a few seconds each
CORPUS = corpus()


@pytest.fixture(scope="module")
def http(cifar_server) -> httpx.Client:
    with httpx.Client(base_url=cifar_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def good_png() -> bytes:
    return CORPUS["one_pixel"][0]


def assert_one_line_error(response: httpx.Response, status: int | None = None, message: str = "") -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and message in error, error


def assert_serving(http: httpx.Client, good: bytes) -> None:
    response = http.post("/classify", files={"image": ("ok.png", good, "image/png")})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_file(http: httpx.Client, good_png: bytes, name: str) -> None:
    data, status, message = CORPUS[name]
    response = http.post("/classify", files={"image": (name, data, "application/octet-stream")})
    if status == 200:
        assert response.status_code == 200, response.text
        Classification.model_validate(response.json())
    else:
        assert_one_line_error(response, status, message)
    assert_serving(http, good_png)


def test_corpus_in_a_batch_names_the_file(http: httpx.Client, good_png: bytes) -> None:
    for name in ("truncated_jpeg", "tiff_jpeg2000_compression", "bomb_20000_grey_1bit", "svg"):
        data, status, message = CORPUS[name]
        files = [("images", ("a.png", good_png)), ("images", (name, data)), ("images", ("c.png", good_png))]
        response = http.post("/classify_batch", files=files)
        assert_one_line_error(response, status, message)
        assert response.json()["index"] == 1 and response.json()["error"].startswith("images[1]: ")
    valid = [("images", (n, CORPUS[n][0])) for n, (_, status, _) in CORPUS.items() if status == 200][:8]
    response = http.post("/classify_batch", files=valid)
    assert response.status_code == 200 and len(response.json()) == len(valid), response.text
    for answer, (_, (name, data)) in zip(response.json(), valid):  # in order, each the file's own answer
        assert_same_answer(answer, http.post("/classify", files={"image": (name, data)}).json())


def test_huge_multipart_body(http: httpx.Client, good_png: bytes) -> None:
    """40 MB against a 1 MB limit: a 413 (or, past the drain budget, a closed connection), quickly."""
    huge = bytes(40 * 1024 * 1024)
    try:
        response = http.post("/classify", files={"image": ("huge.png", huge)})
    except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError):
        pass  # the server stopped reading; what matters is that it did not take the body
    else:
        assert_one_line_error(response, 413, "over the limit")
    assert_serving(http, good_png)


MULTIPART = "multipart/form-data; boundary=xx"


@pytest.mark.parametrize(
    "content, content_type, message",
    [
        (b"--xx\r\n", "multipart/form-data", "Missing boundary"),
        (b"--xx\r\ngarbage\r\n", MULTIPART, "invalid multipart body"),
        (b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nabc', MULTIPART, "image"),
        (b"--xx--\r\n", MULTIPART, "image: Field required"),
        (b"", MULTIPART, "image: Field required"),
        (b"\xff\xfe\x00garbage", "application/json", "multipart/form-data"),
        (b"image=x", "application/x-www-form-urlencoded", "uploaded file"),
        (b"x" * 100, "multipart/mixed; boundary=xx", "multipart/form-data"),
    ],
)
def test_malformed_requests(http: httpx.Client, good_png: bytes, content: bytes, content_type: str, message: str) -> None:
    response = http.post("/classify", content=content, headers={"content-type": content_type})
    assert_one_line_error(response, 400, message)
    assert_serving(http, good_png)


def test_too_many_parts(http: httpx.Client, good_png: bytes) -> None:
    many_files = http.post("/classify_batch", files=[("images", (f"{i}", b"1")) for i in range(200)])
    assert_one_line_error(many_files, 400, "Too many files")
    many_fields = http.post("/classify", files={"image": ("a", good_png)}, data={f"k{i}": "v" for i in range(200)})
    assert_one_line_error(many_fields, 400, "Too many fields")
    assert_serving(http, good_png)


SCHEMAS = {
    "/docs.json": {"POST /classify", "POST /classify_batch", "POST /metadata"},  # BentoML's API methods
    "/v2/openapi.json": {"POST /v2/models/{name}/infer", "GET /v2/models/{name}", "POST /v2/repository/index",
                         "POST /v2/repository/models/{name}/load"},  # the Open Inference Protocol routes
}


@pytest.mark.parametrize("schema_path", sorted(SCHEMAS))
def test_schemathesis_no_server_errors(cifar_server, good_png: bytes, schema_path: str) -> None:
    """Positive and negative cases generated from the service's own OpenAPI documents: no 5xx."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{cifar_server.url}{schema_path}", wait_for_schema=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = sorted(op.label for op in operations)
    assert SCHEMAS[schema_path] <= set(labels), labels
    seen: dict[str, set[int]] = {}

    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=2 * EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same cases every run: a failure here reproduces
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=cifar_server.url, timeout=30)
            seen.setdefault(operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    print("statuses per operation:", {k: sorted(v) for k, v in sorted(seen.items())})
    assert sorted(seen) == labels, seen  # every operation was really called
    assert all(status < 500 for statuses in seen.values() for status in statuses), seen
    assert_serving(httpx.Client(base_url=cifar_server.url, timeout=30), good_png)
