"""Where a server's CPU samples went, from py-spy's raw output (`benchmarks/peers.py --profile DIR`):

    python benchmarks/profile_summary.py DIR/ours-workers=1-protocol-16.txt --top 20

Each sample is put in the area of the innermost frame that belongs to one (the model, image decoding, the
HTTP server, the web framework and its middleware, our service, the event loop), and the functions with
the most samples of their own are listed. Samples are wall-clock samples of busy threads: on 2 cores they
say where the CPU goes, in shares.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

AREAS = {  # area -> substrings of a frame's file; the innermost frame that matches one decides
    "model (TensorFlow)": ("tensorflow/", "keras/", "contract/predictor.py"),
    "image decode (Pillow)": ("PIL/", "contract/images.py"),
    "HTTP server (uvicorn, h11, httptools)": ("uvicorn/", "httptools/", "h11/"),
    "web framework, middleware (Starlette, FastAPI, BentoML, OpenTelemetry, Prometheus)":
        ("starlette/", "fastapi/", "bentoml/", "_bentoml_impl/", "opentelemetry/", "prometheus_client/", "pydantic"),
    "our service": ("/service/",),
    "serving peer (MLServer, KServe, PyTriton, LitServe, Ray)":
        ("mlserver/", "kserve/", "pytriton/", "litserve/", "ray/", "zmq/"),
    "JSON": ("json/",),
    "event loop, threads, multiprocessing": ("asyncio/", "uvloop/", "concurrent/", "threading.py", "multiprocessing/",
                                             "selectors.py", "queue.py"),
}


def read_stacks(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def area_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, markers in AREAS.items():
            if any(marker in frame for marker in markers):
                return area
    return "other"


def summarize(stacks: Counter[str], top: int) -> str:
    total = sum(stacks.values()) or 1
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        areas[area_of(frames)] += count
        own[frames[-1]] += count
    lines = [f"{total} samples", "by area (innermost frame):"]
    lines += [f"  {100 * count / total:5.1f}%  {area}" for area, count in areas.most_common()]
    lines += [f"top {top} functions by own samples:"]
    lines += [f"  {100 * count / total:5.1f}%  {frame}" for frame, count in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    for path in args.profiles:
        print(f"== {path.name}: {summarize(read_stacks(path), args.top)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
