"""Soak benchmark: a real `bentoml serve` on loopback under a steady mix of valid and invalid uploads.

    python benchmarks/soak.py --duration 300 --concurrency 32 [--model cifar10-cnn:VERSION]

Starts the service itself on a free 127.0.0.1 port (the model: --model, else $CIFAR10_MODEL, else
the latest `cifar10-cnn` in $BENTOML_HOME), then runs `--concurrency` async httpx clients for
`--duration` seconds. About 80% of requests are real CIFAR-10 JPEGs (from --images, a tar archive
or a folder; generated images when it is absent), some of them as 4-image /classify_batch
requests; about 20% are invalid files (text, truncated JPEG, zero bytes) that must get a 4xx.

Targets (exit status 1 when one is missed): no error on a valid request, no 5xx at all, and
resident memory of the server's process tree at the end within --max-memory-growth (10%) of the
value after warm-up. The warm-up (60 s of the same load by default) lets the worker's memory reach
its working level: allocator pools and caches grow to the load's high-water mark in the first minute
or two and then stay flat; the printed RSS timeline shows the whole curve, and a leak keeps climbing
after the baseline. Nothing leaves the machine: the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: the project's packages without installing
    sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks.harness import SERVICE_IMPORT, RunningServer, Server, ServerProcess, machine, percentile, server_env
from benchmarks.images import load_images

DEFAULT_IMAGES = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BATCH_SIZE = 4  # images per /classify_batch request in the mix


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model tag to serve (default: $CIFAR10_MODEL or cifar10-cnn:latest)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load after warm-up starts (default 300)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="CIFAR-10 JPEGs: a .tar(.gz) or a folder")
    parser.add_argument("--max-images", type=int, default=2000, help="how many images to sample from --images")
    parser.add_argument("--invalid-fraction", type=float, default=0.2, help="share of invalid uploads (default 0.2)")
    parser.add_argument("--batch-fraction", type=float, default=0.1, help="share of valid requests sent as a batch")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of load before the memory baseline (default: min(60, duration/5))")
    parser.add_argument("--max-memory-growth", type=float, default=0.10, help="allowed RSS growth after warm-up (0.10 = 10%%)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--server-log", type=Path, help="write the server's output here (default: a temp file)")
    parser.add_argument("--url", help="soak the server already running there instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: its main process, so its memory is measured")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 5)
    if args.concurrency < 1 or args.duration <= 0 or not 0 <= args.invalid_fraction <= 1:
        parser.error("--concurrency must be >= 1, --duration > 0 and --invalid-fraction in [0, 1]")
    return args


# ----------------------------------------------------------------------------------------- data


def invalid_payloads(valid: bytes) -> dict[str, bytes]:
    return {
        "text": b"this is not an image, just some text\n" * 8,
        "truncated": valid[: max(1, len(valid) // 2)],
        "zero_bytes": b"",
    }


# ----------------------------------------------------------------------------------------- load


@dataclass
class Stats:
    requests: int = 0
    valid_requests: int = 0
    invalid_requests: int = 0
    images: int = 0
    valid_errors: int = 0
    server_errors: int = 0
    invalid_not_4xx: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def note_error(self, text: str) -> None:
        if len(self.error_examples) < 10:
            self.error_examples.append(text[:300])


async def client_loop(
    url: str, deadline: float, images: list[bytes], invalid: dict[str, bytes], args: argparse.Namespace,
    stats: Stats, seed: int, headers: dict[str, str],
) -> None:
    rng = random.Random(seed)
    invalid_items = list(invalid.items())
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits, headers=headers) as client:
        while time.monotonic() < deadline:
            is_valid = rng.random() >= args.invalid_fraction
            if is_valid and rng.random() < args.batch_fraction:
                files = [("images", (f"{i}.jpg", rng.choice(images), "image/jpeg")) for i in range(BATCH_SIZE)]
                path, count, kind = "/classify_batch", BATCH_SIZE, "batch"
            elif is_valid:
                files = [("image", ("cifar.jpg", rng.choice(images), "image/jpeg"))]
                path, count, kind = "/classify", 1, "valid"
            else:
                kind, data = rng.choice(invalid_items)
                files = [("image", (f"{kind}.jpg", data, "image/jpeg"))]
                path, count = "/classify", 0
            started = time.perf_counter()
            try:
                response = await client.post(path, files=files)
                status = response.status_code
            except httpx.HTTPError as exc:
                status, response = None, None
                stats.note_error(f"{kind} {path}: {type(exc).__name__}: {exc}")
            elapsed_ms = (time.perf_counter() - started) * 1000
            stats.requests += 1
            key = str(status) if status is not None else "exception"
            stats.statuses[key] = stats.statuses.get(key, 0) + 1
            if status is not None and status >= 500:
                stats.server_errors += 1
                stats.note_error(f"{kind} {path}: HTTP {status}: {response.text[:200] if response else ''}")
            if is_valid:
                stats.valid_requests += 1
                if status == 200:
                    stats.images += count
                    stats.latencies_ms.append(elapsed_ms)
                else:
                    stats.valid_errors += 1
                    if status is not None and status < 500:
                        stats.note_error(f"{kind} {path}: HTTP {status}: {response.text[:200] if response else ''}")
            else:
                stats.invalid_requests += 1
                if status is None or not 400 <= status < 500:
                    stats.invalid_not_4xx += 1


async def run_load(server: Server, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    invalid = invalid_payloads(images[0])
    headers = {"Authorization": f"Bearer {os.environ['CIFAR10_API_KEY']}"} if os.environ.get("CIFAR10_API_KEY") else {}
    warm_stats, stats = Stats(), Stats()
    start = time.monotonic()
    warm_end, end = start + args.warmup, start + args.duration
    memory: dict[str, Any] = {"samples": []}

    async def sample_memory() -> None:
        while time.monotonic() < end:
            memory["samples"].append((time.monotonic() - start, server.rss_bytes()))
            await asyncio.sleep(1.0)

    async def phase(deadline: float, target: Stats, offset: int) -> None:
        await asyncio.gather(*(
            client_loop(server.url, deadline, images, invalid, args, target, args.seed + offset + i, headers)
            for i in range(args.concurrency)
        ))

    sampler = asyncio.create_task(sample_memory())
    if args.warmup > 0:
        await phase(warm_end, warm_stats, 0)
    memory["after_warmup"] = server.rss_bytes()
    measured_start = time.monotonic()
    await phase(end, stats, 10_000)
    measured_s = time.monotonic() - measured_start
    memory["end"] = server.rss_bytes()
    sampler.cancel()
    samples = memory.pop("samples")
    memory["peak"] = max([rss for _, rss in samples] + [memory["after_warmup"], memory["end"]])
    memory["timeline"] = timeline(samples, points=10)
    return {"warmup": warm_stats, "measured": stats, "measured_s": measured_s, "memory": memory}


def timeline(samples: list[tuple[float, int]], points: int) -> list[tuple[int, float]]:
    """About `points` evenly spaced (seconds, MB) samples: whether memory levels off or keeps growing."""
    if not samples:
        return []
    step = max(1, len(samples) // points)
    picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    return [(round(t), round(rss / 2**20, 1)) for t, rss in picked]


# --------------------------------------------------------------------------------------- report


def build_report(result: dict[str, Any], args: argparse.Namespace, source: str,
                 server: Server) -> dict[str, Any]:
    warm: Stats = result["warmup"]
    measured: Stats = result["measured"]
    memory = result["memory"]
    total = {name: getattr(warm, name) + getattr(measured, name) for name in ("requests", "valid_requests", "invalid_requests", "images", "valid_errors", "server_errors", "invalid_not_4xx")}
    statuses: dict[str, int] = {}
    for stats in (warm, measured):
        for key, count in stats.statuses.items():
            statuses[key] = statuses.get(key, 0) + count
    growth = (memory["end"] - memory["after_warmup"]) / memory["after_warmup"] if memory["after_warmup"] else None
    targets = {
        "valid_errors == 0": total["valid_errors"] == 0,
        "5xx == 0": total["server_errors"] == 0,
    }
    if growth is not None or not args.url:  # a running server without its pid: memory not measured
        targets[f"memory growth < {args.max_memory_growth:.0%}"] = growth is not None and growth < args.max_memory_growth
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "server_command": shlex.join(server.command),
        "machine": machine(),
        "images": source,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "totals": total,
        "statuses": dict(sorted(statuses.items())),
        "measured": {
            "seconds": round(result["measured_s"], 2),
            "requests": measured.requests,
            "requests_per_s": round(measured.requests / result["measured_s"], 2) if result["measured_s"] else None,
            "images_per_s": round(measured.images / result["measured_s"], 2) if result["measured_s"] else None,
            "valid_latency_ms": {
                "p50": _round(percentile(measured.latencies_ms, 50)),
                "p95": _round(percentile(measured.latencies_ms, 95)),
                "p99": _round(percentile(measured.latencies_ms, 99)),
                "mean": _round(statistics.fmean(measured.latencies_ms) if measured.latencies_ms else None),
            },
        },
        "memory_mb": {
            "after_warmup": round(memory["after_warmup"] / 2**20, 1),
            "end": round(memory["end"] / 2**20, 1),
            "peak": round(memory["peak"] / 2**20, 1),
            "growth": None if growth is None else round(growth, 4),
            "timeline": memory["timeline"],
        },
        "error_examples": warm.error_examples + measured.error_examples,
        "targets": targets,
        "passed": all(targets.values()),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def print_report(report: dict[str, Any]) -> None:
    m, t, meas, mem = report["machine"], report["totals"], report["measured"], report["memory_mb"]
    lat = meas["valid_latency_ms"]
    lines = [
        "CIFAR-10 service soak benchmark",
        f"  command:    {report['command']}",
        f"  server:     {report['server_command']}",
        f"  machine:    {m['cpu_count']} CPUs ({m['cpu']}), {m['memory_gb']} GB RAM, {m['platform']}, Python {m['python']}",
        f"  images:     {report['images']}",
        f"  settings:   duration {report['settings']['duration']}s (warm-up {report['settings']['warmup']}s), "
        f"concurrency {report['settings']['concurrency']}, invalid {report['settings']['invalid_fraction']:.0%}",
        f"  requests:   {t['requests']} ({t['valid_requests']} valid, {t['invalid_requests']} invalid), "
        f"{t['images']} images classified; statuses {report['statuses']}",
        f"  throughput: {meas['requests_per_s']} requests/s, {meas['images_per_s']} images/s "
        f"(after warm-up: {meas['requests']} requests in {meas['seconds']}s)",
        f"  latency:    valid requests p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms",
        f"  errors:     {t['valid_errors']} on valid requests, {t['server_errors']} 5xx, "
        f"{t['invalid_not_4xx']} invalid uploads not answered with a 4xx",
        f"  memory:     server RSS {mem['after_warmup']} MB after warm-up, {mem['end']} MB at the end "
        f"(growth {mem['growth']:+.1%}), peak {mem['peak']} MB" if mem["growth"] is not None else "  memory:     not measured",
    ]
    if mem.get("timeline"):
        lines.append("  rss (s: MB): " + ", ".join(f"{t}: {mb:.0f}" for t, mb in mem["timeline"]))
    for example in report["error_examples"][:5]:
        lines.append(f"  error:      {example}")
    for name, ok in report["targets"].items():
        lines.append(f"  target:     {name}: {'ok' if ok else 'MISSED'}")
    lines.append(f"  result:     {'PASS' if report['passed'] else 'FAIL'}")
    print("\n".join(lines), flush=True)


def running_server(args: argparse.Namespace) -> Server:
    """The server to soak: the one at --url, or a new one on loopback (stopped by the caller)."""
    if args.url:
        return RunningServer(args.url, args.server_pid)
    log_path = args.server_log or Path(os.environ.get("TMPDIR", "/tmp")) / f"cifar10-soak-{os.getpid()}.log"
    print(f"starting the server (log: {log_path}) ...", flush=True)
    env = server_env({"CIFAR10_MODEL": args.model} if args.model else {})
    server = ServerProcess.start(SERVICE_IMPORT, env, log_path, timeout=args.startup_timeout)
    server.require_running()
    return server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    named, source = load_images(args.images if args.images.exists() else None, args.max_images, args.seed)
    images = [data for _, data in named]
    server: Server | None = None
    try:
        server = running_server(args)
        print(f"server ready at {server.url}; {args.duration:.0f}s of load, {args.concurrency} clients", flush=True)
        result = asyncio.run(run_load(server, images, args))
        report = build_report(result, args, source, server)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if isinstance(server, ServerProcess):
            server.stop()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
