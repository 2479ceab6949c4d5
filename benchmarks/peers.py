"""Serving peers side by side: the same stored model, machine and load through our service and through
MLServer, KServe, PyTriton, LitServe and Ray Serve, one server at a time, back to back, on loopback.

    python benchmarks/peers.py --model cifar10-fast:latest --images ../shared/data/cifar10-jpeg.tar.gz \
        --json peers.json --png peers.png

Each peer runs in its own venv (benchmarks/peer_venvs.py installs it on first use) with its server module
from benchmarks/peer_servers/, which loads the stored `.keras` file and runs it with our test-time
augmentation (contract/predictor.py) and decodes with our decoder (contract/images.py). Before the load,
every server answers the check images, and each answer must equal our /classify's probabilities within
--tolerance. Then two workloads, each at every --clients count, `--warmup` s unrecorded and `--duration` s
measured: `protocol` (OIP v2, one UINT8 [1,32,32,3] image per request; the v2 servers only) and `e2e` (one
JPEG file per request in each server's natural form). Each server is run with 1 and then 2 worker
processes (--workers); the table shows each at its best, the settings tried, and the ratio to ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: the project's packages without installing
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np

from benchmarks import peer_requests as requests
from benchmarks.harness import SENDERS, SERVICE_IMPORT, ServerProcess, drive, free_port, machine, server_env, tree_cpu
from benchmarks.peer_servers.common import FILES_MODEL_NAME, MODEL_NAME, PeerSettings
from benchmarks.peer_table import OURS, chart, report
from benchmarks.peer_venvs import PEERS, Venv, ensure_venv
from benchmarks.images import load_images

TF_SERVING = ("not installable here: its server is a C++ binary (tensorflow-model-server) shipped as a "
              "Docker image or an apt repository of Google's, neither reachable from this machine; PyPI has only "
              "its client API (tensorflow-serving-api)")


@dataclass(frozen=True)
class Forms:
    """How one server is asked: its ready path, the two workloads' paths and body forms."""

    ready: str
    protocol: str | None  # path of its v2 infer for UINT8 images; None: no OIP v2
    protocol_form: str  # "v2 binary" or "v2 JSON"
    e2e: str
    e2e_form: str  # "raw body", "v2 binary BYTES", "v2 JSON BYTES (base64)", "JSON (base64)"
    files_shape: tuple[int, ...] = (1,)


V2_INFER = f"/v2/models/{MODEL_NAME}/infer"
FORMS = {
    "mlserver": Forms("/v2/health/ready", V2_INFER, "v2 JSON", V2_INFER, "v2 JSON BYTES (base64)"),
    "kserve": Forms("/v2/health/ready", V2_INFER, "v2 binary", V2_INFER, "v2 JSON BYTES (base64)"),
    "pytriton": Forms(f"/v2/models/{FILES_MODEL_NAME}/ready", V2_INFER, "v2 binary",
                      f"/v2/models/{FILES_MODEL_NAME}/infer", "v2 binary BYTES", (1, 1)),
    "litserve": Forms("/health", None, "", "/predict", "JSON (base64)"),
    "ray": Forms("/classify", None, "", "/classify", "raw body"),
}


def our_forms(model_name: str) -> Forms:
    return Forms("/readyz", f"/v2/models/{model_name}/infer", "v2 binary", "/classify", "raw body")


@dataclass
class Inputs:
    """The images, as files and as our decoder's pixels; the first `checks` are the agreement check's."""

    files: list[bytes]
    pixels: np.ndarray
    described: str
    checks: int

    def bodies(self, workload: str, forms: Forms) -> requests.Requests:
        if workload == "protocol":
            return requests.v2_images(self.pixels) if forms.protocol_form == "v2 binary" else requests.v2_images_json(self.pixels)
        return files_requests(self.files, forms)


def files_requests(files: list[bytes], forms: Forms) -> requests.Requests:
    shape = list(forms.files_shape)
    return {
        "raw body": lambda: requests.raw_files(files),
        "v2 binary BYTES": lambda: requests.v2_files(files, "image_files", shape),
        "v2 JSON BYTES (base64)": lambda: requests.v2_files_json(files, "image_files", shape),
        "JSON (base64)": lambda: requests.json_files(files),
    }[forms.e2e_form]()


def load_inputs(source: Path | None, count: int, checks: int) -> Inputs:
    from contract.images import decode_image

    images, described = load_images(source, max(count, checks))
    files = [data for _, data in images]
    return Inputs(files, np.stack([decode_image(data) for data in files]), described, checks)


@dataclass
class Target:
    """One server with one setting: how to start it, and what it is called in the table."""

    server: str
    version: str
    setting: str
    forms: Forms
    start: Callable[[], Any]  # a ServerProcess, or an External server


# ------------------------------------------------------------------------------------------------
# starting servers


def start_ours(args: argparse.Namespace, workers: int, log: Path) -> ServerProcess:
    env = server_env({"CIFAR10_MODEL": args.model, "CIFAR10_WORKERS": str(workers),
                      "CIFAR10_MAX_BATCH_SIZE": str(args.max_batch_size),
                      "CIFAR10_MAX_LATENCY_MS": str(args.max_latency_ms)})
    return ServerProcess.start(SERVICE_IMPORT, env, log, timeout=args.start_timeout)


def peer_env(venv: Venv, settings: PeerSettings) -> dict[str, str]:
    """Our environment without our venv, the peer's venv first on PATH, the repository importable."""
    base = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONHOME")}
    ours = str(Path(sys.prefix) / "bin")
    path = [str(venv.folder / "bin"), *(p for p in base.get("PATH", "").split(os.pathsep) if p and p != ours)]
    base["PATH"] = os.pathsep.join(path)
    return server_env(settings.to_env(), base)


def start_peer(venv: Venv, forms: Forms, settings: PeerSettings, log: Path, timeout: float) -> ServerProcess:
    command = [str(venv.python), "-m", f"benchmarks.peer_servers.{venv.peer.module}"]
    server = ServerProcess.launch(command, settings.port, f"peer {venv.peer.name}", peer_env(venv, settings), log,
                                  ready_path=forms.ready)
    try:
        if not server.wait_ready(timeout):
            raise RuntimeError(f"exited with status {server.returncode} before it was ready: {last_line(server)}")
    except BaseException:
        server.stop()
        raise
    return server


def last_line(server: ServerProcess) -> str:
    lines = [line.strip() for line in server.log_text().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


def peer_settings(args: argparse.Namespace, workers: int) -> PeerSettings:
    from contract.predictor import read_card

    ref, card = read_card(args.model)
    return PeerSettings(port=free_port(), workers=workers, max_batch_size=args.max_batch_size,
                        max_latency_ms=args.max_latency_ms, model_file=str(Path(ref.path) / card.model_file),
                        input_scaling=card.input_scaling, flip_tta=card.flip_tta, translate_tta=card.translate_tta,
                        temperature=card.calibration.temperature if card.calibration else 1.0,
                        inference_threads=max(1, (os.cpu_count() or 2) // 2))


@dataclass
class External:
    """Our service already running (the smoke test's session server): used, never started or stopped."""

    url: str
    process: Any = None

    def stop(self) -> None:
        pass


def targets(args: argparse.Namespace, logs: Path, not_run: dict[str, str]) -> list[Target]:
    """Ours, then every peer, each with every worker count; a peer that cannot be installed is a `not_run` row."""
    model_name = args.model.split(":", 1)[0]
    ours_version = f"bentoml {version('bentoml')}"
    if args.ours_url:
        found = [Target(OURS, ours_version, "running", our_forms(model_name), lambda: External(args.ours_url))]
    else:
        found = [Target(OURS, ours_version, f"workers={w}", our_forms(model_name),
                        lambda w=w: start_ours(args, w, logs / f"ours-{w}.log")) for w in args.workers]
    for name in args.peers:
        venv = ensure_venv(PEERS[name], log=progress)
        if venv.python is None:
            not_run[name] = f"not installable here: {venv.reason}"
            continue
        found += [Target(name, PEERS[name].version, f"workers={w}", FORMS[name],
                         lambda venv=venv, w=w: start_peer(venv, FORMS[venv.peer.name], peer_settings(args, w),
                                                           logs / f"{venv.peer.name}-{w}.log", args.start_timeout))
                  for w in args.workers]
    return found


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# checking and measuring one server


def settle(pid: int | None, timeout: float, interval: float = 1.0, idle_cores: float = 0.3) -> None:
    """Wait until the server's processes use under `idle_cores` for two intervals in a row: a server answers
    its ready path once one worker is up, while a second may still be loading its model."""
    if pid is None:
        return
    deadline, quiet, before = time.monotonic() + timeout, 0, tree_cpu(pid)
    while quiet < 2 and time.monotonic() < deadline and before is not None:
        time.sleep(interval)
        after = tree_cpu(pid)
        quiet = quiet + 1 if after is not None and after - before < idle_cores * interval else 0
        before = after


def form_of(target: Target, workload: str) -> str:
    return target.forms.protocol_form if workload == "protocol" else target.forms.e2e_form


def url_of(target: Target, server: Any, workload: str) -> str:
    return server.url + (target.forms.protocol if workload == "protocol" else target.forms.e2e)


def parse(target: Target, workload: str, class_names: list[str], response: Any) -> np.ndarray:
    """The probabilities in one answer, read the way this server writes them."""
    if target.server == OURS and workload == "e2e":
        return requests.classify_probabilities(response.content, class_names)
    if form_of(target, workload).startswith("v2"):
        return requests.v2_probabilities(response.content, response.headers.get(requests.HEADER_LENGTH))
    return requests.json_probabilities(response.content)


def answers(target: Target, server: Any, workload: str, bodies: requests.Requests, count: int,
            class_names: list[str]) -> np.ndarray:
    """The check images' probabilities, one request each (ours: /classify with every class listed)."""
    import httpx

    every = f"?top_k={len(class_names)}" if target.server == OURS and workload == "e2e" else ""
    url = url_of(target, server, workload) + every
    rows = []
    for body in bodies.bodies[:count]:
        response = httpx.post(url, content=body, headers=bodies.headers, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"{target.server} answered {response.status_code}: {response.text[:300]}")
        rows.append(parse(target, workload, class_names, response))
    return np.concatenate(rows)


def measure(target: Target, server: Any, workload: str, bodies: requests.Requests, clients: int,
            args: argparse.Namespace) -> dict[str, Any]:
    progress(f"[{target.server} {target.setting}] {workload}, {clients} clients, {args.warmup:g} s warm-up + {args.duration:g} s")
    accept = None if target.server == OURS and workload == "e2e" else requests.has_probabilities
    pid = server.process.pid if server.process is not None else None
    profiler = profile(args, pid, f"{target.server}-{target.setting}-{workload}-{clients}")
    result = asyncio.run(drive(url_of(target, server, workload), bodies.bodies, clients, args.warmup, args.duration,
                               args.timeout, args.client, pid, bodies.headers, accept))
    if profiler is not None:
        profiler.wait()
    return {"server": target.server, "version": target.version, "setting": target.setting, "workload": workload,
            "clients": clients, "form": form_of(target, workload), **result.summary()}


def profile(args: argparse.Namespace, pid: int | None, name: str) -> subprocess.Popen[bytes] | None:
    """With --profile: py-spy samples the server and its workers through the run (warm-up included; it pauses
    them for each sample, so profiled runs are slower, but no sample is a stack read while it changed) into
    DIR/<name>.txt, one collapsed stack per line with its sample count (flamegraph input)."""
    if args.profile is None or pid is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    command = [args.py_spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
               "--duration", str(int(args.warmup + args.duration)), "--output", str(args.profile / f"{name}.txt")]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Results:
    runs: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)
    reference: np.ndarray | None = None  # our /classify's probabilities for the check images


def run_target(target: Target, args: argparse.Namespace, inputs: Inputs, class_names: list[str], results: Results) -> None:
    """Start one server, check its answers, drive each workload at each client count, stop it."""
    progress(f"[{target.server} {target.setting}] starting ...")
    try:
        server = target.start()
    except Exception as error:  # noqa: BLE001 - a server that does not start is a row, not the end of the run
        results.not_run[f"{target.server} {target.setting}"] = f"did not start: {' '.join(str(error).split())[:300]}"
        return
    try:
        settle(server.process.pid if server.process is not None else None, timeout=120.0)
        for workload in args.workloads:
            if workload == "protocol" and target.forms.protocol is None:
                results.not_run.setdefault(f"{target.server} protocol", "speaks no OIP v2 (end-to-end workload only)")
                continue
            bodies = inputs.bodies(workload, target.forms)
            if not check(target, server, workload, bodies, inputs, class_names, results, args.tolerance):
                continue
            results.runs += [measure(target, server, workload, bodies, clients, args) for clients in args.clients]
    finally:
        server.stop()


def check(target: Target, server: Any, workload: str, bodies: requests.Requests, inputs: Inputs,
          class_names: list[str], results: Results, tolerance: float) -> bool:
    """The check images through this server against our /classify (ours e2e gives the reference itself)."""
    if results.reference is None:
        if target.server != OURS:
            raise RuntimeError("our service runs first: its /classify answers are the reference")
        results.reference = answers(target, server, "e2e", inputs.bodies("e2e", target.forms), inputs.checks, class_names)
    got = answers(target, server, workload, bodies, inputs.checks, class_names)
    difference = float(np.max(np.abs(got - results.reference)))
    agrees = difference <= tolerance
    results.checks.append({"server": target.server, "setting": target.setting, "workload": workload,
                           "max_difference": difference, "agrees": agrees})
    return agrees


# ------------------------------------------------------------------------------------------------
# the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar10-fast:latest", help="stored model tag (a .keras entry)")
    parser.add_argument("--images", type=Path, default=None, help="image folder or .tar(.gz) (test split preferred); default: generated JPEGs")
    parser.add_argument("--num-images", type=int, default=500, help="how many images the load cycles through")
    parser.add_argument("--checks", type=int, default=20, help="images whose probabilities every server must agree on")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |p - ours| allowed")
    parser.add_argument("--peers", type=lambda text: [p for p in text.split(",") if p], default=list(PEERS),
                        help=f"comma-separated peers (default all: {','.join(PEERS)}); empty: ours only")
    parser.add_argument("--workloads", type=lambda text: text.split(","), default=["protocol", "e2e"])
    parser.add_argument("--clients", type=lambda text: [int(c) for c in text.split(",")], default=[16, 64],
                        help="concurrent clients, comma-separated")
    parser.add_argument("--workers", type=lambda text: [int(w) for w in text.split(",")], default=[1, 2],
                        help="worker processes tried for every server, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="unrecorded seconds of the same load first")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-latency-ms", type=int, default=2, help="max wait for a batch (our default)")
    parser.add_argument("--client", choices=sorted(SENDERS), default="aiohttp")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (a timeout is an error)")
    parser.add_argument("--start-timeout", type=float, default=240.0)
    parser.add_argument("--ours-url", default=None, help="use our service already running there instead of starting it")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="sample every server with py-spy during each run into DIR (profiling runs: py-spy costs CPU)")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable (pip install py-spy)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--png", type=Path, default=None, help="also draw the chart to this PNG")
    args = parser.parse_args(argv)
    unknown = [p for p in args.peers if p not in PEERS] + [w for w in args.workloads if w not in ("protocol", "e2e")]
    if unknown:
        parser.error(f"unknown peer or workload: {', '.join(unknown)}")
    return args


def versions(args: argparse.Namespace) -> dict[str, str]:
    found = {name: version(name) for name in ("bentoml", "tensorflow", "keras", "pillow")}
    return found | {name: PEERS[name].version for name in args.peers}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # the finally blocks stop servers
    from contract.machine import cpu_flags
    from contract.predictor import read_card

    ref, card = read_card(args.model)
    args.model = str(ref.tag)  # `name:latest` resolved once: every server gets the same version
    if card.format != "keras":
        raise SystemExit(f"{args.model} is a {card.format} entry: the peers load .keras files only")
    inputs = load_inputs(args.images, args.num_images, args.checks)
    results = Results()
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as logs:
        for target in targets(args, Path(logs), results.not_run):
            run_target(target, args, inputs, list(card.class_names), results)
    results.not_run["tf-serving"] = TF_SERVING
    info = machine() | {"cpu_flags": " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx"))))}
    summary = {"command": shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else ["peers.py", *argv])]),
               "machine": info, "model": args.model, "images": inputs.described, "duration": args.duration,
               "warmup": args.warmup, "client": args.client, "clients": args.clients,
               "max_batch_size": args.max_batch_size, "max_latency_ms": args.max_latency_ms,
               "versions": versions(args), "runs": results.runs, "checks": results.checks, "not_run": results.not_run}
    print(report(summary), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if args.png is not None:
        chart(summary, args.png)
    return 0 if all(row["agrees"] for row in results.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
