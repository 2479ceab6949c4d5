"""Hostile-input benchmark (issue 20): the nine attacks on a real `bentoml serve` and `train-cifar import`.

    python benchmarks/hostile.py                       # trains a tiny model in a temporary store first
    python benchmarks/hostile.py --model cifar10-cnn:VERSION --bentoml-home ~/bentoml
    python benchmarks/hostile.py --quick               # cases 0 and 4-6, scaled down: a smoke run
    python benchmarks/hostile.py --cases 4,7 --source /tmp/old-checkout   # some cases, another commit's code

Every hostile file and body is built here, in code (nothing big is shipped). The service runs on a free
127.0.0.1 port in its own process group; cases 0-7 share one server with the default settings, cases 8-9
get a second one with two workers and model control on (they take the model out of service on purpose).
While each case runs, a well-behaved client sends single photos (tests/fixtures/images-tiny) to
/classify, /readyz is probed every 50 ms, and the workers' resident memory is sampled every 100 ms.

Printed per case: the hostile requests' status codes, the good client's p50/p99/max and statuses,
/readyz's slowest answer, worker RSS before, at peak and after (after a settle time), what the case
showed, tracebacks in the server log, and PASS/FAIL per criterion of the issue's acceptance: no 5xx
and no traceback; the good client's p99 under 1 s or a quick 429/503 (no wait over 2 s); worker RSS
at most +500 MB; /readyz within 100 ms; RSS after within 10% of before; and the case's own check (an
import refused with one line and exit 2, nothing written or read; state that stays consistent).
Exit status: 0 when every criterion held, 1 otherwise, 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import io
import json
import multiprocessing
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: the project's packages without installing
    sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks.harness import HOST, SERVICE_IMPORT, RunningServer, Server, ServerProcess, machine, percentile, server_env, total_rss

FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
PHOTOS = FIXTURES / "images-tiny"
IMPORT_DATA = FIXTURES / "images-tiny.tar.gz"
TRAIN_CIFAR = [sys.executable, "-c", "from training.cli import main; main()"]
MB = 2**20
BODY_LIMIT = 10 * MB  # the service's default CIFAR10_MAX_BODY_BYTES: every body here fits under it
QUICK_CASES = (0, 4, 5, 6)

# Acceptance (issue 20)
GOOD_P99_MS = 1000.0
GOOD_MAX_MS = 2000.0
QUICK_REFUSALS = {429, 503}
RSS_RISE_LIMIT = 500 * MB
READYZ_LIMIT_MS = 100.0
RSS_AFTER_TOLERANCE = 0.10


# ------------------------------------------------------------------------------------------------
# files and bodies, built in code


def tiff_tile_bomb(tile: int) -> bytes:
    """A 1x1 grey TIFF whose one deflate tile is tile x tile zeros (32768: about 1 MB, 1 GiB decoded).

    Pillow cannot write a tile larger than the image, so the file is laid out by hand: the header,
    one IFD of ten tags, then the compressed tile."""
    compressor = zlib.compressobj(9)
    row = bytes(tile * min(tile, 1024))
    data = b"".join(compressor.compress(row) for _ in range(tile // min(tile, 1024))) + compressor.flush()
    tags = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),  # 1x1, 8-bit, deflate
            (322, 4, tile), (323, 4, tile), (324, 4, 8 + 2 + 12 * 10 + 4), (325, 4, len(data))]  # tile, offset
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags
    ) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


def grey16_png(side: int) -> bytes:
    """A 16-bit grey PNG of side x side zeros (6300: about 77 KB, 79 MB of pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("I;16", (side, side)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def v2_binary(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 infer body with one tensor as Triton binary data, and its headers."""
    tensor = {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + raw, headers


def v2_files(files: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """`image_files` BYTES [N]: each element Triton's 4-byte little-endian length, then the file."""
    raw = b"".join(struct.pack("<I", len(data)) + data for data in files)
    return v2_binary("image_files", "BYTES", [len(files)], raw)


def v2_zero_length_elements(count: int) -> tuple[bytes, dict[str, str]]:
    """`image_files` declared as one file, followed by `count` zero-length BYTES elements (4 bytes each)."""
    return v2_binary("image_files", "BYTES", [1], bytes(4 * count))


def v2_empty_lists(count: int) -> tuple[bytes, dict[str, str]]:
    """JSON `images` of shape [1, 32, 32, 3] whose `data` is `count` empty lists (3 bytes each)."""
    head = b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": ['
    return head + b",".join([b"[]"] * count) + b"]}]}", {"Content-Type": "application/json"}


def large_photo(photo: bytes, size: tuple[int, int] = (1280, 960), noise: float = 5.0) -> bytes:
    """A photo as a camera would send it: `photo` scaled up, with sensor-like noise (1280x960: about 150 KB)."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)
    pixels += np.random.default_rng(0).normal(0, noise, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def largest_count(unit_bytes: int, overhead: int = 1024) -> int:
    """How many `unit_bytes` elements fit in a body under the service's default size limit."""
    return (BODY_LIMIT - overhead) // unit_bytes


# One subprocess with TensorFlow and tf-keras builds the legacy models: a SavedModel whose custom layer is
# saved without config under the name `Layer` (tf-keras rebuilds it from its saved functions), its call
# running a serialized tf.data graph (DatasetFromGraph) whose map writes a marker file; a clean `.h5`
# (input 32x32x3, pooling, Dense 3x10); and the same `.h5` with a Lambda that touches another marker.
BUILD_MODELS = r"""
import sys
from pathlib import Path
import tensorflow as tf
import tf_keras as k

out, graph_marker, lambda_marker = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
k.utils.set_random_seed(0)

def write(x):
    with tf.control_dependencies([tf.io.write_file(graph_marker, "written by a graph hidden in a string")]):
        return tf.identity(x)

GRAPH = tf.data.Dataset.range(1).map(write)._as_serialized_graph().numpy()

class Layer(k.layers.Layer):
    def call(self, t):
        empty = tf.strings.substr(tf.strings.as_string(tf.shape(t)[0]), 0, 0)  # input-dependent: not folded
        variant = tf.raw_ops.DatasetFromGraph(graph_def=tf.strings.join([tf.constant(GRAPH), empty]))
        first = tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.int64)).get_single_element()
        return t / 255.0 + tf.cast(first, t.dtype) * 0.0

    def get_config(self):
        raise NotImplementedError  # saved "without config"

def tail(x):
    return k.layers.Dense(10, activation="softmax")(k.layers.GlobalAveragePooling2D()(x))

def touch(t, marker=lambda_marker):
    import os
    os.system("touch " + marker)
    return t

inputs = k.Input((32, 32, 3))
k.Model(inputs, tail(Layer(name="hidden")(inputs))).save(out / "hidden_graph_savedmodel", save_format="tf")
k.Model(inputs, tail(inputs), name="harmless").save(out / "harmless.h5")
k.Model(inputs, tail(k.layers.Lambda(touch)(inputs)), name="harmless").save(out / "lambda.h5")
"""


def build_legacy_models(folder: Path, graph_marker: Path, lambda_marker: Path) -> None:
    """Run BUILD_MODELS; the markers the build itself may write are removed."""
    env = server_env({"BENTOML_HOME": str(folder / "unused-store")})
    done = subprocess.run([sys.executable, "-c", BUILD_MODELS, str(folder), str(graph_marker), str(lambda_marker)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the legacy models failed:\n{done.stderr[-3000:]}")
    for marker in (graph_marker, lambda_marker):
        marker.unlink(missing_ok=True)


def kernel_dataset(file: object) -> str:
    """The path of the first Dense kernel in a tf-keras `.h5` (`model_weights/dense/dense/kernel:0`)."""
    import h5py

    names: list[str] = []
    file.visititems(lambda name, obj: names.append(name)  # type: ignore[attr-defined]
                    if isinstance(obj, h5py.Dataset) and name.endswith("kernel:0") else None)
    return names[0]


def h5_with_foreign_kernel(harmless: Path, out: Path, secret: np.ndarray, how: str) -> Path:
    """A copy of `harmless` whose kernel's bytes live in another file: HDF5 external storage pointing at
    a raw file (`how="external"`), or a virtual dataset mapping a dataset of another HDF5 file."""
    import h5py

    shutil.copyfile(harmless, out)
    source = out.with_suffix(".secret" if how == "external" else ".secret.h5")
    with h5py.File(out, "r+") as file:
        name = kernel_dataset(file)
        shape, dtype = file[name].shape, file[name].dtype
        del file[name]
        if how == "external":
            source.write_bytes(secret.astype(dtype).tobytes())
            file.create_dataset(name, shape, dtype, external=[(str(source), 0, secret.nbytes)])
        else:
            with h5py.File(source, "w") as other:
                other["secret"] = secret.astype(dtype)
            layout = h5py.VirtualLayout(shape, dtype)
            layout[...] = h5py.VirtualSource(str(source), "secret", shape)
            file.create_virtual_dataset(name, layout)
    return out


def h5_with_non_utf8_config(harmless: Path, out: Path) -> Path:
    """A copy of `harmless` whose `model_config` attribute is bytes that are not UTF-8."""
    import h5py

    shutil.copyfile(harmless, out)
    with h5py.File(out, "r+") as file:
        config = file.attrs["model_config"]
        config = config.encode() if isinstance(config, str) else bytes(config)
        file.attrs["model_config"] = np.bytes_(b"\xff\xfe" + config)
    return out


def load_photos() -> list[bytes]:
    """The good client's photos: the fixture's real CIFAR-10 JPEGs."""
    photos = [path.read_bytes() for path in sorted(PHOTOS.rglob("*.jpg"))]
    if not photos:
        raise RuntimeError(f"no photos in {PHOTOS}")
    return photos


# ------------------------------------------------------------------------------------------------
# the benchmark's state, and what one case saw


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path  # built files, import stores, logs
    home: Path  # BENTOML_HOME of the servers
    model: str  # the tag (or name) the servers serve
    photos: list[bytes]
    files: dict[str, Path] = field(default_factory=dict)
    server: Server | None = None

    @property
    def source(self) -> Path:
        """The checkout whose service and train-cifar run (--source; default this one)."""
        return self.args.source

    def env(self, **extra: str) -> dict[str, str]:
        """A subprocess environment that imports the project from `source`."""
        return server_env({"PYTHONPATH": str(self.source), "COLUMNS": "200", **extra})

    @property
    def name(self) -> str:
        return self.model.split(":")[0]

    def n(self, full: int, quick: int) -> int:
        """A count scaled for --quick."""
        return quick if self.args.quick else full

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url


@dataclass
class Outcome:
    """What a case's hostile side saw: its requests' statuses, findings, and the case's own failed checks."""

    statuses: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    good_client_applies: bool = True  # False where the case takes the model out of service on purpose

    def expect(self, held: bool, problem: str) -> None:
        if not held:
            self.problems.append(problem)


@dataclass
class Case:
    number: int
    title: str
    server: str  # "main": default settings; "control": two workers, model control on
    run: Callable[[Bench], Outcome]


# ------------------------------------------------------------------------------------------------
# background measurements: a good client, a /readyz probe, worker RSS


class Monitor:
    """Runs in a child process while a case runs, so that the hostile senders (this process's CPU and GIL)
    do not delay its requests: what it measures is the server's delay."""

    def __init__(self, server: Server, photos: list[bytes]) -> None:
        self.url, self.photos = server.url, photos
        self.pids = [worker.pid for worker in server.worker_processes()]
        self.good: list[tuple[str, float]] = []  # (status or exception name, ms)
        self.readyz: list[tuple[str, float]] = []
        self.rss_peak = 0

    def __enter__(self) -> Monitor:
        context = multiprocessing.get_context("fork")  # no threads run here yet: forking is safe and quick
        self._conn, child = context.Pipe()
        self._process = context.Process(target=monitor_process, args=(self, child), daemon=True)
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        if self._conn.poll(60):
            self.good, self.readyz, self.rss_peak = self._conn.recv()
        self._process.join(timeout=10)


def monitor_process(monitor: Monitor, conn: Connection) -> None:
    """The child: good client, /readyz probe and RSS sampler until the parent says stop; then the results."""
    stop = asyncio.Event()

    async def watch() -> None:
        while not conn.poll():
            await asyncio.sleep(0.02)
        stop.set()

    async def main() -> None:
        await asyncio.gather(watch(), good_client(monitor, stop), probe_readyz(monitor, stop), sample_rss(monitor, stop))

    asyncio.run(main())
    conn.send((monitor.good, monitor.readyz, monitor.rss_peak))


async def timed(client: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        status = str((await client.request(method, path, **kwargs)).status_code)  # type: ignore[arg-type]
    except httpx.HTTPError as error:
        status = type(error).__name__
    return status, 1000 * (time.perf_counter() - started)


async def good_client(monitor: Monitor, stop: asyncio.Event, pause: float = 0.1) -> None:
    """One photo at a time to /classify as the raw body, `pause` apart."""
    async with httpx.AsyncClient(base_url=monitor.url, timeout=30) as client:
        index = 0
        while not stop.is_set():
            photo = monitor.photos[index % len(monitor.photos)]
            index += 1
            answer = await timed(client, "POST", "/classify", content=photo, headers={"Content-Type": "image/jpeg"})
            monitor.good.append(answer)
            await asyncio.sleep(pause)


async def probe_readyz(monitor: Monitor, stop: asyncio.Event, every: float = 0.05) -> None:
    async with httpx.AsyncClient(base_url=monitor.url, timeout=10) as client:
        while not stop.is_set():
            status, ms = await timed(client, "GET", "/readyz")
            monitor.readyz.append((status, ms))
            await asyncio.sleep(max(0.0, every - ms / 1000))


async def sample_rss(monitor: Monitor, stop: asyncio.Event, every: float = 0.1) -> None:
    while not stop.is_set():
        monitor.rss_peak = max(monitor.rss_peak, total_rss(monitor.pids))
        await asyncio.sleep(every)


# ------------------------------------------------------------------------------------------------
# hostile requests


Request = tuple[str, str, bytes, dict[str, str]]  # method, path, body, headers


async def _send_all(url: str, requests: list[Request], concurrency: int, timeout: float) -> list[tuple[str, float, str]]:
    """Send every request, `concurrency` at a time, each on its own connection; (status, seconds, text) each."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)

    async def one(client: httpx.AsyncClient, request: Request) -> tuple[str, float, str]:
        method, path, body, headers = request
        async with gate:
            started = time.perf_counter()
            try:
                response = await client.request(method, path, content=body, headers=headers)
                status, text = str(response.status_code), response.text[:120]
            except httpx.TimeoutException:
                status, text = ("client hung up" if timeout < 10 else "timeout"), ""
            except httpx.HTTPError as error:
                status, text = type(error).__name__, str(error)[:120]
            return status, time.perf_counter() - started, text

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, request) for request in requests)))


def send_all(bench: Bench, outcome: Outcome, label: str, requests: list[Request], concurrency: int = 1,
             timeout: float = 180.0) -> None:
    """Send hostile requests, count their statuses in `outcome`, and note how long they took and one answer
    per status."""
    started = time.perf_counter()
    answers = asyncio.run(_send_all(bench.url, requests, concurrency, timeout))
    outcome.statuses.update(status for status, _, _ in answers)
    examples = {status: text for status, _, text in reversed(answers)}
    counts = ", ".join(f"{status} x{count}" for status, count in sorted(Counter(s for s, _, _ in answers).items()))
    slowest = max(seconds for _, seconds, _ in answers)
    outcome.notes.append(f"{label}: {counts}; slowest {slowest:.1f} s, all in {time.perf_counter() - started:.1f} s")
    outcome.notes += [f"    {status}: {text}" for status, text in sorted(examples.items()) if text and status != "200"]


def status_of(bench: Bench, method: str, path: str, **kwargs: object) -> str:
    """One request's status (or its exception's name), for state checks."""
    try:
        return str(httpx.request(method, f"{bench.url}{path}", timeout=30, **kwargs).status_code)  # type: ignore[arg-type]
    except httpx.HTTPError as error:
        return type(error).__name__


def text_of(bench: Bench, path: str) -> str:
    """The body of a GET (or its exception's name)."""
    try:
        return httpx.get(f"{bench.url}{path}", timeout=30).text
    except httpx.HTTPError as error:
        return type(error).__name__


def raw_get(port: int, target: str) -> tuple[str, str]:
    """GET `target` exactly as written (httpx would normalize `/ui/../x`): the status line and content type."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    content_type = next((line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("content-type:")), "")
    return head[0], content_type


def worker_cpu_seconds(server: Server) -> float:
    total = 0.0
    for worker in server.worker_processes():
        try:
            times = worker.cpu_times()
            total += times.user + times.system
        except Exception:  # noqa: BLE001 - a worker that ended
            pass
    return total


def busy_seconds(server: Server, limit: float, idle_share: float = 0.3, step: float = 0.5) -> float:
    """How long the workers keep computing (above `idle_share` of a core, the good client's share is less)."""
    started = time.monotonic()
    before = worker_cpu_seconds(server)
    while time.monotonic() - started < limit:
        time.sleep(step)
        now = worker_cpu_seconds(server)
        if (now - before) / step < idle_share:
            return time.monotonic() - started - step
        before = now
    return limit


# ------------------------------------------------------------------------------------------------
# train-cifar import, for cases 1-3


@dataclass
class ImportRun:
    returncode: int
    error_lines: list[str]
    home: Path

    @property
    def traceback(self) -> bool:
        return any(line.startswith("Traceback") for line in self.error_lines)

    @property
    def stored_files(self) -> list[Path]:
        return [path for path in (self.home / "models").rglob("*") if path.is_file()] if (self.home / "models").exists() else []

    def holds(self, secret: bytes) -> bool:
        """Whether any stored file (or a member of a stored zip, e.g. a `.keras`) contains `secret`."""
        for path in self.stored_files:
            if secret in path.read_bytes():
                return True
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    if any(secret in archive.read(member) for member in archive.namelist()):
                        return True
        return False

    def summary(self) -> str:
        shown = self.error_lines[-1][:160] if self.error_lines else "(no error output)"
        kind = "a traceback" if self.traceback else f"{len(self.error_lines)} error line(s)"
        return f"exit {self.returncode}, {kind}, {len(self.stored_files)} file(s) stored; last line: {shown}"


def native_log_line(line: str) -> bool:
    """TensorFlow's C++ start-up log (absl), which no environment setting silences."""
    return line.startswith("WARNING: All log messages before absl::InitializeLog()") or (
        len(line) > 5 and line[0] in "IWEF" and line[1:5].isdigit())


def run_import(bench: Bench, model: Path, label: str, during: Callable[[], None] | None = None) -> ImportRun:
    """`train-cifar import MODEL --data <fixture>` with its own BENTOML_HOME and working folder."""
    folder = bench.work / "imports" / label
    (folder / "cwd").mkdir(parents=True, exist_ok=True)
    env = bench.env(BENTOML_HOME=str(folder / "bentoml"))
    env.pop("CIFAR10_TRUST_MODEL_CODE", None)
    process = subprocess.Popen([*TRAIN_CIFAR, "import", str(model), "--data", str(IMPORT_DATA)], cwd=folder / "cwd",
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if during is not None:
        during()
    _, stderr = process.communicate(timeout=600)
    lines = [line for line in stderr.splitlines() if line.strip() and not native_log_line(line)]
    return ImportRun(process.returncode, lines, folder / "bentoml")


def expect_refusal(outcome: Outcome, run: ImportRun, label: str) -> None:
    """The issue's rule for a refused import: exit 2, one line, nothing written."""
    outcome.expect(run.returncode == 2, f"{label}: exit {run.returncode}, not 2")
    outcome.expect(not run.traceback and len(run.error_lines) == 1, f"{label}: not a one-line refusal")
    outcome.expect(not run.stored_files, f"{label}: {len(run.stored_files)} file(s) stored")


class FileWatch:
    """inotify on one file: `wait_closed()` returns once a process that opened it for reading closes it."""

    IN_CLOSE_NOWRITE = 0x10

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_CLOSE_NOWRITE) < 0:
            raise OSError(ctypes.get_errno(), "inotify is not available")

    def wait_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.read(self.fd, 4096):
                    return True
            except BlockingIOError:
                time.sleep(0.0005)
        return False

    def close(self) -> None:
        os.close(self.fd)


# ------------------------------------------------------------------------------------------------
# the cases


def case_hidden_graph(bench: Bench) -> Outcome:
    """1: a legacy SavedModel whose layer, saved without config, runs a graph that writes a file."""
    outcome, marker = Outcome(), bench.files["graph_marker"]
    marker.unlink(missing_ok=True)
    run = run_import(bench, bench.files["hidden_graph_savedmodel"], "hidden-graph")
    outcome.notes.append(f"import: {run.summary()}")
    outcome.notes.append(f"marker file written by the model's graph: {'YES' if marker.exists() else 'no'}")
    outcome.expect(not marker.exists(), "the import ran the hidden graph (marker written)")
    expect_refusal(outcome, run, "import")
    return outcome


def case_foreign_storage(bench: Bench) -> Outcome:
    """2: `.h5` files whose Dense kernel is another file's bytes (external storage, a virtual dataset)."""
    outcome = Outcome()
    secret = np.random.default_rng(20).normal(0, 0.05, (3, 10)).astype("<f4")
    for how in ("external", "virtual"):
        model = h5_with_foreign_kernel(bench.files["harmless.h5"], bench.work / f"{how}.h5", secret, how)
        run = run_import(bench, model, how)
        leaked = run.holds(secret.tobytes())
        outcome.notes.append(f"{how}: import {run.summary()}; the stored model holds the other file's bytes: "
                             f"{'YES' if leaked else 'no'}")
        outcome.expect(not leaked, f"{how}: the other file's bytes were stored")
        expect_refusal(outcome, run, how)
    return outcome


def case_race_and_config(bench: Bench) -> Outcome:
    """3: the file swapped for a Lambda model between the scan and the load; a non-UTF-8 model_config."""
    outcome, marker = Outcome(), bench.files["lambda_marker"]
    target = bench.work / "race.h5"
    shutil.copyfile(bench.files["harmless.h5"], target)
    marker.unlink(missing_ok=True)
    watch = FileWatch(target)
    swapped: list[bool] = []

    def swap_after_first_close() -> None:  # the scan opens the file first; the loader opens it again after
        if watch.wait_closed(timeout=120):
            staged = bench.work / "race.staged.h5"
            shutil.copyfile(bench.files["lambda.h5"], staged)
            os.replace(staged, target)
            swapped.append(True)

    try:
        run = run_import(bench, target, "race", during=swap_after_first_close)
    finally:
        watch.close()
    outcome.notes.append(f"race: swapped after the first read: {'yes' if swapped else 'no (never closed)'}; "
                         f"import {run.summary()}; Lambda ran: {'YES' if marker.exists() else 'no'}")
    outcome.expect(not marker.exists(), "race: the swapped-in Lambda ran")
    outcome.expect(not run.traceback and run.returncode in (0, 2), "race: not a clean import or refusal")
    run = run_import(bench, h5_with_non_utf8_config(bench.files["harmless.h5"], bench.work / "non_utf8.h5"), "utf8")
    outcome.notes.append(f"non-UTF-8 model_config: import {run.summary()}")
    expect_refusal(outcome, run, "non-UTF-8 model_config")
    return outcome


def case_tiff_tile(bench: Bench) -> Outcome:
    """4: a 1x1 TIFF with one 32768x32768 deflate tile, as /classify bodies and nine in one v2 request."""
    outcome = Outcome()
    tiff = tiff_tile_bomb(bench.n(32768, 4096))
    outcome.notes.append(f"file: {len(tiff) / MB:.2f} MB TIFF, 1x1 pixels, one {bench.n(32768, 4096)}^2 tile")
    raw = ("POST", "/classify", tiff, {"Content-Type": "image/tiff"})
    send_all(bench, outcome, f"/classify x{bench.n(24, 4)}", [raw] * bench.n(24, 4), concurrency=4)
    body, headers = v2_files([tiff] * 9)
    send_all(bench, outcome, "v2 infer with 9", [("POST", f"/v2/models/{bench.name}/infer", body, headers)])
    return outcome


def case_grey16_png(bench: Bench) -> Outcome:
    """5: a 16-bit grey PNG of 6300x6300 as /classify bodies and 64 in one v2 request."""
    outcome = Outcome()
    side = bench.n(6300, 2000)
    png = grey16_png(side)
    outcome.notes.append(f"file: {len(png) / 1024:.0f} KB 16-bit grey PNG of {side}x{side}")
    raw = ("POST", "/classify", png, {"Content-Type": "image/png"})
    send_all(bench, outcome, f"/classify x{bench.n(8, 2)}", [raw] * bench.n(8, 2), concurrency=2)
    body, headers = v2_files([png] * bench.n(64, 8))
    send_all(bench, outcome, f"v2 infer with {bench.n(64, 8)}", [("POST", f"/v2/models/{bench.name}/infer", body, headers)])
    return outcome


def case_v2_parsing(bench: Bench) -> Outcome:
    """6: v2 bodies that cost before any count is checked: zero-length BYTES elements, empty JSON lists."""
    outcome = Outcome()
    path = f"/v2/models/{bench.name}/infer"
    elements = bench.n(largest_count(4), 200_000)  # about 2.6 M
    lists = bench.n(largest_count(3), 200_000)  # about 3.5 M
    for label, (body, headers) in ((f"{elements / 1e6:.2f} M zero-length BYTES", v2_zero_length_elements(elements)),
                                   (f"JSON data of {lists / 1e6:.2f} M empty lists", v2_empty_lists(lists))):
        send_all(bench, outcome, f"{label} ({len(body) / MB:.1f} MB)", [("POST", path, body, headers)])
        send_all(bench, outcome, f"{label}, 4 at once", [("POST", path, body, headers)] * 4, concurrency=4)
    return outcome


def case_overload(bench: Bench) -> Outcome:
    """7: 40 concurrent ~10 MB v2 requests (64 valid 1280x960 JPEGs each); then 60 clients that hang up after 2 s."""
    outcome = Outcome()
    photo = large_photo(bench.photos[0])
    body, headers = v2_files([photo] * min(64, largest_count(len(photo) + 4), bench.n(64, 8)))
    request = ("POST", f"/v2/models/{bench.name}/infer", body, headers)
    many = bench.n(40, 4)
    send_all(bench, outcome, f"{many} concurrent v2 requests of {len(body) / MB:.1f} MB", [request] * many, many)
    clients = bench.n(60, 6)
    send_all(bench, outcome, f"{clients} clients hanging up after 2 s", [request] * clients, clients, timeout=2.0)
    busy = busy_seconds(bench.server, limit=bench.n(120, 10))  # type: ignore[arg-type]
    outcome.notes.append(f"the workers kept computing for {busy:.1f} s after the last client hung up")
    outcome.expect(busy <= 5, f"work for clients that went away went on for {busy:.0f} s")
    return outcome


def control_folder(server: ServerProcess) -> Path:
    """Where the model-control folder was before issue 20: $TMPDIR/cifar10-serve-<the workers' parent's pid>."""
    parents = sorted({worker.ppid() for worker in server.worker_processes()})
    return Path(tempfile.gettempdir()) / f"cifar10-serve-{parents[0] if parents else 0}"


def plant(folder: Path, content: str) -> str:
    """Write `wanted.json` there as another local user would try; what happened."""
    try:
        folder.mkdir(exist_ok=True)
        (folder / "wanted.json").write_text(content)
    except OSError as error:
        return f"not possible ({error.strerror})"
    return f"written to {folder / 'wanted.json'} (folder mode {oct(folder.stat().st_mode & 0o777)})"


def classify_statuses(bench: Bench, times: int = 6) -> Counter[str]:
    photo = bench.photos[0]
    return Counter(status_of(bench, "POST", "/classify", content=photo, headers={"Content-Type": "image/jpeg"})
                   for _ in range(times))


def case_control_state(bench: Bench) -> Outcome:
    """8: a planted `wanted.json` in the predictable control folder, and a malformed one."""
    outcome, name = Outcome(), bench.name
    folder = control_folder(bench.server)  # type: ignore[arg-type]
    existed = folder.is_dir()
    outcome.notes.append(f"predictable folder {folder}: {'exists (the server made it)' if existed else 'absent'}")
    outcome.notes.append("unload planted: " + plant(folder, json.dumps({"generation": 1000, "models": {name: None}})))
    time.sleep(1.5)  # workers look every 0.2 s
    classify, ready = classify_statuses(bench), Counter(status_of(bench, "GET", "/readyz") for _ in range(6))
    outcome.notes.append(f"then /classify {dict(classify)}, /readyz {dict(ready)}")
    outcome.expect(classify == Counter({"200": 6}), "a planted wanted.json took the model out of service")
    outcome.expect(not (classify["404"] and ready["200"]), "/classify 404 while /readyz said 200")
    load = f"/v2/repository/models/{name}/load"
    outcome.notes.append(f"load to restore: {status_of(bench, 'POST', load)}")
    outcome.notes.append("malformed planted: " + plant(folder, '{"generation": "x", "models": []}'))
    time.sleep(1.5)
    loaded, classify = status_of(bench, "POST", load), classify_statuses(bench)
    outcome.notes.append(f"then a load answered {loaded}, /classify {dict(classify)}")
    outcome.statuses.update([loaded])
    outcome.expect(loaded == "200", f"a load after a malformed wanted.json answered {loaded}")
    (folder / "wanted.json").unlink(missing_ok=True)
    if not existed:
        shutil.rmtree(folder, ignore_errors=True)
    outcome.notes.append(f"cleaned up; a load answers {status_of(bench, 'POST', load)}")
    return outcome


def case_no_model(bench: Bench) -> Outcome:
    """9: readiness with no model served, POST /metadata, a version of `../../../etc`, `/ui/../classify`."""
    outcome = Outcome(good_client_applies=False)
    name = bench.name
    answers = {"unload": status_of(bench, "POST", f"/v2/repository/models/{name}/unload")}
    time.sleep(1.0)  # the other worker follows
    answers["/readyz"] = ",".join(sorted({status_of(bench, "GET", "/readyz") for _ in range(6)}))
    answers["/v2/health/ready"] = " ".join(sorted({text_of(bench, "/v2/health/ready") for _ in range(6)}))
    answers["POST /metadata"] = status_of(bench, "POST", "/metadata", json={})
    answers["load ../../../etc"] = status_of(bench, "POST", f"/v2/repository/models/{name}/load",
                                             json={"parameters": {"version": "../../../etc"}})
    status_line, content_type = raw_get(bench.server.port, "/ui/../classify")  # type: ignore[union-attr]
    answers["GET /ui/../classify"] = f"{status_line} ({content_type})"
    answers["load to restore"] = status_of(bench, "POST", f"/v2/repository/models/{name}/load")
    answers["/readyz after"] = status_of(bench, "GET", "/readyz")
    outcome.statuses.update(answer.split()[1] if answer.startswith("HTTP/") else answer
                            for key, answer in answers.items() if not key.startswith(("/readyz", "/v2/health")))
    outcome.notes.extend(f"{key}: {answer}" for key, answer in answers.items())
    outcome.expect("200" not in answers["/readyz"], "/readyz said 200 with no model served")
    outcome.expect("true" not in answers["/v2/health/ready"], "/v2/health/ready said true with no model served")
    outcome.expect(answers["POST /metadata"].startswith("4"), f"POST /metadata answered {answers['POST /metadata']}")
    outcome.expect(answers["load ../../../etc"].startswith("4"), "the ../../../etc load was not a 4xx")
    outcome.expect("json" in content_type, f"/ui/../classify answered {content_type or 'no content type'}, not JSON")
    outcome.expect(answers["/readyz after"] == "200", "not ready again after the model was loaded back")
    return outcome


def case_baseline(bench: Bench) -> Outcome:
    """0: no hostile load, only the good client and the probes: the noise floor of this machine right now."""
    time.sleep(bench.n(10, 2))
    return Outcome(notes=["no hostile requests: what the criteria measure on this machine with no attack"])


CASES = [
    Case(0, "baseline, no attack", "main", case_baseline),
    Case(1, "SavedModel, hidden graph", "main", case_hidden_graph),
    Case(2, ".h5, external/virtual kernel", "main", case_foreign_storage),
    Case(3, "scan/load race, bad UTF-8", "main", case_race_and_config),
    Case(4, "TIFF 1x1, 32768^2 tile", "main", case_tiff_tile),
    Case(5, "16-bit PNG 6300x6300", "main", case_grey16_png),
    Case(6, "v2 parse bombs", "main", case_v2_parsing),
    Case(7, "overload, hang-ups", "main", case_overload),
    Case(8, "planted control state", "control", case_control_state),
    Case(9, "no model, tricky paths", "control", case_no_model),
]
SERVER_SETTINGS = {"main": {}, "control": {"CIFAR10_WORKERS": "2", "CIFAR10_MODEL_CONTROL": "1"}}


# ------------------------------------------------------------------------------------------------
# running a case, and the criteria


@dataclass
class CaseResult:
    case: Case
    outcome: Outcome
    seconds: float
    good: list[tuple[str, float]]
    readyz: list[tuple[str, float]]
    rss_before: int
    rss_peak: int
    rss_after: int
    tracebacks: list[str]  # the exception line of each traceback the server logged during the case

    def good_ms(self, status: str | None = None) -> list[float]:
        return [ms for s, ms in self.good if status is None or s == status]

    def server_errors(self) -> int:
        answers = list(self.outcome.statuses.elements()) + [status for status, _ in self.good]
        return sum(1 for status in answers if status.isdigit() and int(status) >= 500 and int(status) != 503)

    def good_client_ok(self) -> bool | None:
        if not self.outcome.good_client_applies:
            return None
        statuses_ok = all(status == "200" or (status.isdigit() and int(status) in QUICK_REFUSALS)
                          for status, _ in self.good)
        p99 = percentile(self.good_ms("200"), 99)
        return bool(self.good) and statuses_ok and max(self.good_ms()) <= GOOD_MAX_MS and (p99 or 0) <= GOOD_P99_MS

    def verdicts(self) -> dict[str, bool | None]:
        readyz_ok = bool(self.readyz) and all(status.isdigit() and ms <= READYZ_LIMIT_MS for status, ms in self.readyz)
        after_ok = abs(self.rss_after - self.rss_before) <= RSS_AFTER_TOLERANCE * self.rss_before
        return {
            "no 5xx, no traceback": self.server_errors() == 0 and not self.tracebacks,
            "good client": self.good_client_ok(),
            "RSS +<=500MB": self.rss_peak - self.rss_before <= RSS_RISE_LIMIT,
            "/readyz<=100ms": readyz_ok,
            "RSS after +-10%": after_ok,
            "case check": not self.outcome.problems,
        }


def traceback_lines(log: str) -> list[str]:
    """The exception line that ends each `Traceback (most recent call last):` block of a log."""
    lines, found = log.splitlines(), []
    for index, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            tail = (text for text in lines[index + 1 :] if text.strip() and not text.startswith((" ", "\t")))
            found.append(next(tail, "(end of log)")[:200])
    return found


def run_case(bench: Bench, case: Case) -> CaseResult:
    """Before, during (with the monitor) and after one case, on the server its table row names."""
    server = bench.server
    assert server is not None
    log_start = len(server.log_text())
    time.sleep(bench.n(2, 0.5))
    rss_before = server.worker_rss_bytes()
    started = time.monotonic()
    print(f"[case {case.number}] {case.title} ...", file=sys.stderr, flush=True)
    with Monitor(server, bench.photos) as monitor:
        try:
            outcome = case.run(bench)
        except Exception as error:  # noqa: BLE001 - a case that fails to run is reported, the others still run
            outcome = Outcome(problems=[f"the case itself failed: {type(error).__name__}: {error}"])
    seconds = time.monotonic() - started
    time.sleep(bench.args.settle)
    server.require_running()
    return CaseResult(case, outcome, seconds, monitor.good, monitor.readyz, rss_before,
                      max(monitor.rss_peak, rss_before), server.worker_rss_bytes(),
                      traceback_lines(server.log_text()[log_start:]))


def start_server(bench: Bench, kind: str) -> Server:
    """A server of this kind on loopback, or the running one --url names (main-server cases only)."""
    if bench.args.url:
        print(f"attacking the running server at {bench.args.url}", file=sys.stderr, flush=True)
        return RunningServer(bench.args.url, bench.args.server_pid, bench.args.server_log)
    env = bench.env(BENTOML_HOME=str(bench.home), CIFAR10_MODEL=bench.model, **SERVER_SETTINGS[kind])
    for variable in ("CIFAR10_MODELS", "CIFAR10_API_KEY", "CIFAR10_TRUST_MODEL_CODE"):
        env.pop(variable, None)
    print(f"starting the {kind} server {SERVER_SETTINGS[kind] or '(default settings)'} ...", file=sys.stderr, flush=True)
    server = ServerProcess.start(SERVICE_IMPORT, env, bench.work / f"serve-{kind}.log",
                                 timeout=bench.args.startup_timeout, cwd=bench.source)
    server.require_running(f"{kind} server")
    return server


def run_cases(bench: Bench, cases: list[Case]) -> tuple[list[CaseResult], list[str]]:
    """Every case on its kind of server (started once per kind, stopped after); the server commands."""
    results, commands = [], []
    for kind in SERVER_SETTINGS:
        chosen = [case for case in cases if case.server == kind]
        if not chosen:
            continue
        bench.server = start_server(bench, kind)
        settings = f"(running at {bench.args.url})" if bench.args.url else " ".join(f"{k}={v}" for k, v in SERVER_SETTINGS[kind].items())
        commands.append(f"{kind}: {settings} {shlex.join(bench.server.command)} (log {bench.server.log})")
        try:
            results += [run_case(bench, case) for case in chosen]
        finally:
            bench.server.stop()
            bench.server = None
    return results, commands


# ------------------------------------------------------------------------------------------------
# the report


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def statuses_text(statuses: Counter[str] | list[str]) -> str:
    counts = statuses if isinstance(statuses, Counter) else Counter(statuses)
    return " ".join(f"{status}x{count}" for status, count in sorted(counts.items())) or "-"


def measurement_rows(results: list[CaseResult]) -> list[str]:
    rows = [f"{'case':<33} {'secs':>5}  {'good n':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  "
            f"{'readyz max ms':>13}  {'worker RSS MB before/peak/after':>31}  statuses: hostile | good client"]
    for r in results:
        rss = f"{r.rss_before / MB:.0f} / {r.rss_peak / MB:.0f} / {r.rss_after / MB:.0f}"
        readyz_max = max((ms for _, ms in r.readyz), default=None)
        rows.append(f"{r.case.number} {r.case.title:<31} {r.seconds:>5.0f}  {len(r.good):>6} "
                    f"{fmt_ms(percentile(r.good_ms(), 50)):>7} {fmt_ms(percentile(r.good_ms(), 99)):>7} "
                    f"{fmt_ms(max(r.good_ms(), default=None)):>7}  {fmt_ms(readyz_max):>13}  {rss:>31}  "
                    f"{statuses_text(r.outcome.statuses)} | {statuses_text([s for s, _ in r.good])}")
    return rows


def verdict_rows(results: list[CaseResult]) -> list[str]:
    names = list(results[0].verdicts()) if results else []
    rows = [f"{'case':<33} " + " ".join(f"{name:>20}" for name in names)]
    for r in results:
        marks = {True: "PASS", False: "FAIL", None: "n/a"}
        rows.append(f"{r.case.number} {r.case.title:<31} " + " ".join(f"{marks[v]:>20}" for v in r.verdicts().values()))
    return rows


def detail_rows(results: list[CaseResult]) -> list[str]:
    rows = []
    for r in results:
        rows.append(f"case {r.case.number} ({r.case.title}):")
        rows += [f"    {note}" for note in r.outcome.notes]
        rows += [f"    FAIL: {problem}" for problem in r.outcome.problems]
        rows += [f"    traceback in the server log: {line}" for line in r.tracebacks[:5]]
        if len(r.tracebacks) > 5:
            rows.append(f"    ... and {len(r.tracebacks) - 5} more tracebacks")
    return rows


def report(bench: Bench, results: list[CaseResult], commands: list[str], command: str, info: dict) -> str:
    lines = [
        f"hostile-input benchmark (issue 20): {len(results)} case(s) (0: no attack), model {bench.model}, source {bench.source}"
        + (" [--quick: scaled down]" if bench.args.quick else ""),
        f"command: {command}",
        *(f"server {line}" for line in commands),
        f"machine: {info['cpu']}, {info['cpu_count']} CPUs ({info['usable_cpus']} usable), {info['memory_gb']} GB RAM, "
        f"{info['platform']}, Python {info['python']}, load average at start "
        + " ".join(str(x) for x in info["load_average_at_start"]),
        f"good client: one photo at a time to /classify (raw body), 100 ms apart; /readyz every 50 ms; "
        f"worker RSS every 100 ms; 'after' = {bench.args.settle:g} s after the case",
        "",
        *measurement_rows(results),
        "",
        "criteria: no 5xx and no traceback | good client p99 < 1 s, else quick 429/503, never > 2 s | "
        "worker RSS peak at most +500 MB | /readyz within 100 ms | RSS after within 10% of before | the case's own check",
        *verdict_rows(results),
        "",
        *detail_rows(results),
    ]
    lines += ["", "result: PASS (every criterion of every case held)" if all_passed(results)
              else "result: FAIL (see the criteria and details above)"]
    return "\n".join(lines)


def all_passed(results: list[CaseResult]) -> bool:
    return all(verdict is not False for result in results for verdict in result.verdicts().values())


# ------------------------------------------------------------------------------------------------
# set-up: the model to serve, the built files


def train_tiny_model(bench: Bench) -> None:
    """`train-cifar` for one epoch on the fixture's tiny data set, into a temporary store."""
    bench.home, bench.model = bench.work / "bentoml", "cifar10-cnn"
    env = bench.env(BENTOML_HOME=str(bench.home))
    print("training a tiny model on tests/fixtures (one epoch) ...", file=sys.stderr, flush=True)
    done = subprocess.run([*TRAIN_CIFAR, "--data", str(IMPORT_DATA), "--epochs", "1", "--batch-size", "16",
                           "--output", str(bench.work / "run")], cwd=bench.source, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training the tiny model failed:\n{done.stderr[-3000:]}")


def build_files(bench: Bench, cases: list[Case]) -> None:
    """The legacy model files cases 1-3 import (one TensorFlow subprocess), built before any server runs."""
    if not any(case.number in (1, 2, 3) for case in cases):
        return
    print("building the legacy model files ...", file=sys.stderr, flush=True)
    folder = bench.work / "models"
    folder.mkdir()
    markers = {"graph_marker": bench.work / "MARKER-hidden-graph", "lambda_marker": bench.work / "MARKER-lambda"}
    build_legacy_models(folder, markers["graph_marker"], markers["lambda_marker"])
    bench.files.update(markers)
    for name in ("hidden_graph_savedmodel", "harmless.h5", "lambda.h5"):
        bench.files[name] = folder / name


def parse_cases(text: str) -> list[int]:
    numbers = sorted({int(part) for part in text.split(",") if part.strip()})
    if not numbers or not set(numbers) <= {case.number for case in CASES}:
        raise argparse.ArgumentTypeError(f"expected case numbers from 0 to {len(CASES) - 1}, comma-separated")
    return numbers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="stored model tag to serve (default: train a tiny one in a temporary store)")
    parser.add_argument("--bentoml-home", type=Path, help="the store holding --model (default $BENTOML_HOME)")
    parser.add_argument("--cases", type=parse_cases, help="comma-separated case numbers, 0 = no attack (default: all; --quick: 0,4,5,6)")
    parser.add_argument("--quick", action="store_true", help="scaled-down files and counts: a smoke run")
    parser.add_argument("--settle", type=float, default=None, help="seconds after a case before 'RSS after' (default 5; --quick 1)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a server may take to answer /readyz")
    parser.add_argument("--source", type=Path, default=PROJECT_ROOT,
                        help="the checkout whose service and train-cifar run (default: this one), e.g. a git worktree of another commit")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (built files, server logs)")
    parser.add_argument("--url", help="attack the server already running there (the main-server cases) instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: its main process, so its workers' memory and CPU are measured")
    parser.add_argument("--server-log", type=Path, help="with --url: its log, searched for tracebacks")
    args = parser.parse_args(argv)
    args.cases = args.cases or (list(QUICK_CASES) if args.quick else [case.number for case in CASES])
    args.source = args.source.resolve()
    args.settle = args.settle if args.settle is not None else (1.0 if args.quick else 5.0)
    if args.url and any(case.server != "main" for case in CASES if case.number in args.cases):
        parser.error("--url runs the cases of the main server only: choose them with --cases")
    if (args.server_pid or args.server_log) and not args.url:
        parser.error("--server-pid and --server-log go with --url")
    if args.url and not args.model:
        parser.error("--url needs --model: the tag the running server serves")
    return args


def prepare(args: argparse.Namespace, work: Path) -> Bench:
    """The served model: --model in --bentoml-home, or a tiny one trained now."""
    home = args.bentoml_home or Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    bench = Bench(args, work, home, args.model or "", load_photos())
    if not args.model:
        train_tiny_model(bench)
    return bench


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["hostile.py", *argv])
    info = machine()
    cases = [case for case in CASES if case.number in args.cases]
    work = Path(tempfile.mkdtemp(prefix="hostile-bench-"))
    try:
        bench = prepare(args, work)
        build_files(bench, cases)
        results, commands = run_cases(bench, cases)
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(bench, results, commands, command, info)
    print(text, flush=True)
    if args.keep:
        print(f"work folder kept: {work}")
    return 0 if all_passed(results) else 1


if __name__ == "__main__":
    sys.exit(main())
