"""Serving benchmark: the real service under a bounded load, against three reference points.

    python benchmarks/serve.py --model cifar10-cnn:latest --concurrency 16 --duration 30 \
        --images ../shared/data/cifar10-jpeg.tar.gz

One run measures, each server started on loopback in its own process group and stopped after:
  ceiling  benchmarks.ceiling_service   same HTTP stack and decoding, no model (the most HTTP allows here)
  naive    benchmarks.naive_service     one Keras `model.predict` per request (what users often write)
  service  service.service              the real service
  raw      in a subprocess: the compiled predictor on large batches, no HTTP (the model's own ceiling)
and prints throughput, p50/p95/p99 latency, errors, CPU per request, the ratios service/ceiling,
service/naive and service/raw against the targets, the command line and the machine.
The ceiling and the service are each driven twice back to back (`--body both`): with multipart uploads
and with the image as the raw body (rows `ceiling-raw`, `service-raw`, and the ratio of the two paths).
The load: N coroutines sharing one HTTP client, each sending one request after the other for T
seconds after a warm-up; requests are real JPEGs, bodies encoded once beforehand.
Targets are reported always and enforced (exit status 1) only with --check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: the project's packages without installing
    sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks.harness import SENDERS, RunningServer, ServerProcess, drive, machine, server_env
from benchmarks.images import load_images

SERVERS = {
    "ceiling": "benchmarks.ceiling_service:CeilingClassifier",
    "naive": "benchmarks.naive_service:NaiveClassifier",
    "service": "service.service:CIFAR10Classifier",
}
BOUNDARY = "cifar-serve-benchmark-7d1f0c"
MULTIPART_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
RAW_HEADERS = {"Content-Type": "image/jpeg"}  # the raw-body /classify path: the image is the whole body
BODIES = ("multipart", "raw")
TARGETS = {  # the issues' serving targets at concurrency 16 on the 2-core machine
    "service/ceiling": 0.70,
    "service/naive": 10.0,
    "p99_ms": 50.0,
    "errors": 0,
    "service-raw/service": 1.5,  # the raw-body path against the multipart path
    "service-raw/ceiling-raw": 0.9,  # the raw-body service against the no-model ceiling of the same path
    "p99 service-raw/ceiling-raw": 2.0,  # at most
}


def multipart_body(filename: str, data: bytes) -> bytes:
    """The body of `curl -F image=@file.jpg`, built once so the client spends no CPU on it."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="image"; filename="{Path(filename).name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


# ------------------------------------------------------------------------------------------------
# servers


def batch_size_stats(metrics: str) -> dict[str, float] | None:
    """Mean images per model call from the service's `cifar10_inference_batch_size` histogram."""
    total = count = None
    for line in metrics.splitlines():
        if line.startswith("cifar10_inference_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("cifar10_inference_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
    if not count or total is None:
        return None
    return {"model_calls": count, "images": total, "mean_batch": round(total / count, 2)}


def run_server(name: str, args: argparse.Namespace, loads: dict[str, tuple[list[bytes], dict[str, str]]],
               log_dir: Path) -> dict[str, Any]:
    """Start one server, drive each load (multipart, raw body) against it back to back, stop it: its figures,
    as {"ceiling": ..., "ceiling-raw": ...}. The naive server takes multipart only."""
    extra = dict(args.env) if name in ("ceiling", "service") else {}  # the ceiling shares the service's settings
    print(f"[{name}] starting {SERVERS[name]} ...", file=sys.stderr, flush=True)
    env = server_env({"CIFAR10_MODEL": args.model, **extra})
    server = ServerProcess.start(SERVERS[name], env, log_dir / f"{name}.log", timeout=args.start_timeout)
    try:
        server.require_running(f"{name} server")
        figures = measure_server(name, server.url, server.process.pid, args, loads, server.metrics_text)
        for label, figure in figures.items():
            figure["start_seconds"] = round(server.ready_seconds or 0.0, 1)
            if figure["errors"] and figure["errors"] == figure["requests"]:
                figure["log_tail"] = server.log_tail(1500)
        return figures
    finally:
        server.stop()


def measure_server(name: str, url: str, pid: int | None, args: argparse.Namespace,
                   loads: dict[str, tuple[list[bytes], dict[str, str]]], metrics: Any) -> dict[str, Any]:
    """Drive each load against a running server (its CPU counted when its `pid` is known): its figures."""
    duration = args.naive_duration if name == "naive" and args.naive_duration is not None else args.duration
    figures: dict[str, Any] = {}
    for body in loads if name != "naive" else ["multipart"]:
        label = name if body == "multipart" else f"{name}-raw"
        print(f"[{label}] {args.concurrency} clients, {args.warmup:g}s warm-up + {duration:g}s",
              file=sys.stderr, flush=True)
        bodies, headers = loads[body]
        result = asyncio.run(drive(f"{url}/classify", bodies, args.concurrency, args.warmup, duration,
                                   args.timeout, args.client, pid, headers))
        server = url if name == "service" and args.service_url else SERVERS[name]
        figures[label] = {"server": server, "body": body, **result.summary()}
    if name == "service":
        figures[next(iter(figures))]["batching"] = batch_size_stats(metrics())
    return figures


def running_service(args: argparse.Namespace, loads: dict[str, tuple[list[bytes], dict[str, str]]]) -> dict[str, Any]:
    """The service rows from a server already running at --service-url (deployed, or a test's own)."""
    print(f"[service] measuring the running server at {args.service_url}", file=sys.stderr, flush=True)
    server = RunningServer(args.service_url, args.service_pid)
    return measure_server("service", server.url, server.pid, args, loads, server.metrics_text)


def raw_worker(model: str, batch: int, seconds: float) -> dict[str, Any]:
    import numpy as np

    from contract.calibration import calibrated_predict
    from contract.predictor import load_network, load_predictor

    started = time.perf_counter()
    predictor = load_predictor(model)
    load_seconds = time.perf_counter() - started
    # the call the service's micro-batcher makes (service/inference/registry.py): logits, then the calibration
    model_call = calibrated_predict(predictor.logits, predictor.card.calibration, None)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    for _ in range(2):
        model_call(images)
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        model_call(images)
        calls += 1
    elapsed = time.perf_counter() - started
    single = images[:1]
    model_call(single)
    one = []
    for _ in range(50):
        t0 = time.perf_counter()
        model_call(single)
        one.append(time.perf_counter() - t0)
    import bentoml
    import keras
    import tensorflow as tf

    ref = bentoml.models.get(model)
    network = load_network(Path(ref.path) / predictor.card.model_file, predictor.card.format)
    network.predict(single, verbose=0)
    keras_one = []
    for _ in range(5):
        t0 = time.perf_counter()
        network.predict(single, verbose=0)
        keras_one.append(time.perf_counter() - t0)
    return {
        "model": predictor.tag,
        "batch": batch,
        "calls": calls,
        "seconds": round(elapsed, 3),
        "images_per_s": round(calls * batch / elapsed, 1),
        "load_seconds": round(load_seconds, 2),
        "tf_function_1_image_ms": round(1000 * float(np.median(one)), 3),
        "keras_predict_1_image_ms": round(1000 * float(np.median(keras_one)), 2),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "bentoml": bentoml.__version__},
    }


def run_raw(args: argparse.Namespace) -> dict[str, Any]:
    print(f"[raw] batches of {args.raw_batch} for {args.raw_seconds:g}s in a subprocess ...", file=sys.stderr, flush=True)
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--raw-worker", "--model", args.model,
        "--raw-batch", str(args.raw_batch), "--raw-seconds", str(args.raw_seconds),
    ]
    done = subprocess.run(
        cmd, cwd=PROJECT_ROOT, env=server_env({"CIFAR10_MODEL": args.model}), capture_output=True, text=True,
        timeout=args.start_timeout + 10 * args.raw_seconds + 60,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RAW "):
            return json.loads(line[4:])
    raise RuntimeError(f"raw throughput run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------
# report


def ratios_and_targets(results: dict[str, Any], p99_target_ms: float = TARGETS["p99_ms"]
                       ) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    def rate(name: str, key: str = "throughput_rps") -> float | None:
        return results[name][key] if name in results else None

    def ratio(top: float | None, bottom: float | None) -> float | None:
        return round(top / bottom, 3) if top is not None and bottom else None

    service = results.get("service")
    ratios = {
        "service/ceiling": ratio(rate("service"), rate("ceiling")),
        "service/naive": ratio(rate("service"), rate("naive")),
        "service/raw": ratio(rate("service"), rate("raw", "images_per_s")),
        "service-raw/service": ratio(rate("service-raw"), rate("service")),
        "service-raw/ceiling-raw": ratio(rate("service-raw"), rate("ceiling-raw")),
        "p99 service-raw/ceiling-raw": ratio(rate("service-raw", "p99_ms"), rate("ceiling-raw", "p99_ms")),
    }

    def at_least(key: str, name: str) -> dict[str, Any]:
        value = ratios[key]
        return {"name": name, "value": value, "met": None if value is None else value >= TARGETS[key]}

    targets = [
        at_least("service/ceiling", "throughput >= 70% of the no-model ceiling"),
        at_least("service/naive", "throughput >= 10x the naive server"),
        {"name": f"p99 latency <= {p99_target_ms:g} ms", "value": service["p99_ms"] if service else None,
         "met": None if not service else service["p99_ms"] <= p99_target_ms},
        {"name": "no errors", "value": sum(results[n]["errors"] for n in ("service", "service-raw") if n in results),
         "met": None if not service else all(results[n]["errors"] == 0 for n in ("service", "service-raw") if n in results)},
        at_least("service-raw/service", "raw body >= 1.5x the multipart requests/s"),
        at_least("service-raw/ceiling-raw", "raw body >= 90% of its no-model ceiling"),
        {"name": "raw body p99 <= 2x its ceiling's p99", "value": ratios["p99 service-raw/ceiling-raw"],
         "met": None if ratios["p99 service-raw/ceiling-raw"] is None
         else ratios["p99 service-raw/ceiling-raw"] <= TARGETS["p99 service-raw/ceiling-raw"]},
    ]
    return ratios, targets


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def report(summary: dict[str, Any]) -> str:
    """The table, the ratios, the targets and the machine, as the README quotes them."""
    results, args = summary["results"], summary["args"]
    lines = [
        f"serving benchmark: {args['model']}, {args['concurrency']} concurrent clients ({args['client']}), "
        f"{args['duration']:g}s after {args['warmup']:g}s warm-up, {summary['images']}",
        "",
        f"{'server':<12} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'non-2xx':>8} "
        f"{'requests':>9} {'srv CPU ms/req':>15} {'cli CPU ms/req':>15}",
    ]
    lines += [server_row(name, results.get(name)) for name in ("ceiling", "ceiling-raw", "naive", "service", "service-raw")]
    lines += raw_rows(results)
    lines += ["", "ratios:"] + [f"  {key:<28} {fmt(value, '.3f')}" for key, value in summary["ratios"].items()]
    enforced = " [enforced: --check]" if args["check"] else " [reported only]"
    lines += ["", f"targets (concurrency 16, default model, 2-core machine){enforced}:"]
    for target in summary["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "n/a"}[target["met"]]
        lines.append(f"  {target['name']:<44} {fmt(target['value'], 'g'):>10}  {verdict}")
    m = summary["machine"]
    lines += [
        "",
        f"command: {summary['command']}",
        f"machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['usable_cpus']} usable), {m['platform']}, "
        f"Python {m['python']}, load average at start {' '.join(str(x) for x in m['load_average_at_start'])}",
    ]
    if results.get("raw"):
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in results["raw"]["versions"].items()))
    return "\n".join(lines)


def server_row(name: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"{name:<12} {'(skipped)':>8}"
    return (
        f"{name:<12} {fmt(r['throughput_rps']):>8} {fmt(r['p50_ms']):>8} {fmt(r['p95_ms']):>8} "
        f"{fmt(r['p99_ms']):>8} {r['errors']:>7} {r['non_2xx']:>8} {r['requests']:>9} "
        f"{fmt(r['server_cpu_ms_per_request'], '.2f'):>15} {fmt(r['client_cpu_ms_per_request'], '.2f'):>15}"
    )


def raw_rows(results: dict[str, Any]) -> list[str]:
    """The in-process model row and the service's micro-batching, where measured."""
    raw = results.get("raw")
    rows = [f"{'raw':<12} {'(skipped)':>8}"] if not raw else [
        f"{'raw':<12} {fmt(raw['images_per_s']):>8} images/s in process, batches of {raw['batch']} "
        f"({raw['calls']} calls in {raw['seconds']:g}s); one image: tf.function {raw['tf_function_1_image_ms']:g} ms, "
        f"Keras model.predict {raw['keras_predict_1_image_ms']:g} ms"]
    batching = (results.get("service") or {}).get("batching")
    if batching:
        rows.append(f"service micro-batching: {batching['model_calls']:.0f} model calls, "
                    f"{batching['mean_batch']:g} images per call on average (warm-up included)")
    return rows


def parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar10-cnn:latest", help="stored model tag (CIFAR10_MODEL of every server)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (one request in flight each)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds of the same load first")
    parser.add_argument("--naive-duration", type=float, default=None, help="measured seconds for the naive server (default --duration)")
    parser.add_argument("--images", type=Path, default=None, help="image folder or .tar(.gz) (test split preferred); default: generated JPEGs")
    parser.add_argument("--num-images", type=int, default=500, help="how many images to cycle through")
    parser.add_argument("--client", choices=sorted(SENDERS), default="aiohttp", help="HTTP client library of the load generator")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (a timeout is an error)")
    parser.add_argument("--raw-batch", type=int, default=1024, help="batch size of the in-process raw run")
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="seconds of the in-process raw run")
    parser.add_argument("--body", choices=[*BODIES, "both"], default="both", help="how images are sent to /classify: multipart, the raw body, or both back to back on each server")
    parser.add_argument("--skip", action="append", choices=["ceiling", "naive", "raw"], default=[], help="leave out a reference run (repeatable)")
    parser.add_argument("--env", action="append", type=parse_env, default=[], metavar="KEY=VALUE", help="extra environment for the real service and the ceiling (same settings), e.g. CIFAR10_WORKERS=2")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds a server may take to answer /readyz")
    parser.add_argument("--service-url", default=None, metavar="URL", help="measure the service already running there (deployed, or started by the caller) instead of starting one; --env does not apply to it")
    parser.add_argument("--service-pid", type=int, default=None, metavar="PID", help="with --service-url: its main process, so its CPU per request is counted")
    parser.add_argument("--p99-target-ms", type=float, default=TARGETS["p99_ms"], help="the p99 latency target of the service (multipart)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a serving target is not met")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every figure to this JSON file")
    parser.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.num_images < 1 or args.raw_batch < 1:
        parser.error("--concurrency, --duration, --num-images and --raw-batch must be positive")
    if args.service_pid is not None and not args.service_url:
        parser.error("--service-pid needs --service-url")
    return args


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs the `finally` blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.raw_worker:
        print("RAW " + json.dumps(raw_worker(args.model, args.raw_batch, args.raw_seconds)), flush=True)
        return 0
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["serve.py", *argv])
    info = machine()
    images, described = load_images(args.images, args.num_images)
    loads = {
        "multipart": ([multipart_body(name, data) for name, data in images], MULTIPART_HEADERS),
        "raw": ([data for _, data in images], RAW_HEADERS),
    }
    loads = {body: load for body, load in loads.items() if args.body in (body, "both")}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as logs:
        for name in ("ceiling", "naive", "service"):
            if name in args.skip:
                continue
            if name == "service" and args.service_url:
                results.update(running_service(args, loads))
            else:
                results.update(run_server(name, args, loads, Path(logs)))
    if "raw" not in args.skip:
        results["raw"] = run_raw(args)
    ratios, targets = ratios_and_targets(results, args.p99_target_ms)
    summary = {
        "command": command,
        "machine": info,
        "images": described,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "raw_worker"},
        "results": results,
        "ratios": ratios,
        "targets": targets,
    }
    summary["args"]["env"] = dict(args.env)
    print(report(summary), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    failed = [t["name"] for t in targets if t["met"] is False]
    if args.check and failed:
        print("targets not met: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
