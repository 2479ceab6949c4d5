"""Settings of our service compared in paired rounds: every setting's server up at once, each driven in turn,
the order reversed every round, with where the CPU went (per worker thread) and how much other load there was.

    python benchmarks/peers_rounds.py --model cifar10-fast:latest --images ../shared/data/cifar10-jpeg.tar.gz \\
        --rounds 2 one-worker two-workers:CIFAR10_WORKERS=2 older@/tmp/old-checkout

A setting is `NAME[@CHECKOUT][:VAR=VALUE,...]`: the environment variables its server gets, and the checkout
it runs from (default: this one). Idle servers cost nothing, so the settings see the same machine, round
after round; `benchmarks/peers.py` (one server at a time, the peers too) gives the table. `others` is the
machine's busy cores not used by the server or the load generator: a run with more than 0.15 of them had
other load on the machine and is left out of the means.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: the project's packages without installing
    sys.path.insert(0, str(PROJECT_ROOT))

import psutil

from benchmarks import peer_requests as requests
from benchmarks.harness import SERVICE_IMPORT, ServerProcess, drive, server_env, tree_cpu
from benchmarks.peers import Inputs, load_inputs, our_forms, settle

OTHER_LOAD_LIMIT = 0.15  # cores of other load above which a run is left out of the means


@dataclass(frozen=True)
class Setting:
    name: str
    checkout: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Setting:
        """`NAME[@CHECKOUT][:VAR=VALUE,...]`."""
        head, _, variables = text.partition(":")
        name, _, checkout = head.partition("@")
        pairs = [item.split("=", 1) for item in variables.split(",") if item]
        if not name or any(len(pair) != 2 for pair in pairs):
            raise argparse.ArgumentTypeError(f"{text!r}: expected NAME[@CHECKOUT][:VAR=VALUE,...]")
        return cls(name, Path(checkout).resolve() if checkout else PROJECT_ROOT, dict(pairs))


def busy_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far: busy is all but idle and I/O wait."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - times.iowait, total


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every thread of a process and its descendants, by `pid:thread name` (Python
    threads are called `python`; TensorFlow's inter-op threads `tf_Compute`), numbered names merged."""
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return {}
    seconds: dict[str, float] = {}
    for process in processes:
        for task in Path(f"/proc/{process.pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip().rstrip("0123456789_")
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended meanwhile
                continue
            key = f"{process.pid}:{name}"
            seconds[key] = seconds.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def start(setting: Setting, model: str, logs: Path) -> ServerProcess:
    env = server_env({"CIFAR10_MODEL": model, **setting.env, "PYTHONPATH": str(setting.checkout)})
    return ServerProcess.start(SERVICE_IMPORT, env, logs / f"{setting.name}.log", timeout=240, cwd=setting.checkout)


def measure(server: ServerProcess, workload: str, inputs: Inputs, args: argparse.Namespace) -> dict[str, Any]:
    """One run, with the machine's, the server's and each server thread's cores over it (warm-up included)."""
    forms = our_forms(args.model.split(":", 1)[0])
    bodies = inputs.bodies(workload, forms)
    url = server.url + (forms.protocol if workload == "protocol" else forms.e2e)
    accept = requests.has_probabilities if workload == "protocol" else None
    pid = server.process.pid
    machine0, threads0, server0 = busy_cpu_seconds(), thread_cpu(pid), tree_cpu(pid) or 0.0
    started = time.perf_counter()
    result = asyncio.run(drive(url, bodies.bodies, args.clients, args.warmup, args.duration, args.timeout, "aiohttp",
                               pid, bodies.headers, accept)).summary()
    machine1, threads1, server1 = busy_cpu_seconds(), thread_cpu(pid), tree_cpu(pid) or 0.0
    seconds = time.perf_counter() - started
    machine_cores = (os.cpu_count() or 1) * (machine1[0] - machine0[0]) / max(0.01, machine1[1] - machine0[1])
    server_cores = (server1 - server0) / seconds
    client_cores = result["client_cpu_ms_per_request"] * result["throughput_rps"] / 1000
    threads = {name: round((value - threads0.get(name, 0.0)) / seconds, 2) for name, value in threads1.items()
               if value - threads0.get(name, 0.0) > 0.05 * seconds}
    return {**result, "workload": workload, "machine_cores": round(machine_cores, 2),
            "server_cores": round(server_cores, 2), "others": round(machine_cores - server_cores - client_cores, 2),
            "threads": threads}


def line(run: dict[str, Any]) -> str:
    return (f"r{run['round']} {run['workload']:8s} {run['setting']:14s} {run['throughput_rps']:7.1f} req/s  p50 "
            f"{run['p50_ms']:6.1f}  p99 {run['p99_ms']:6.1f} ms  errors {run['errors']}  server "
            f"{run['server_cpu_ms_per_request']} CPU ms/req  cores: machine {run['machine_cores']:.2f} server "
            f"{run['server_cores']:.2f} others {run['others']:.2f}  threads {run['threads']}")


def means(runs: list[dict[str, Any]], settings: list[Setting], workloads: list[str]) -> list[str]:
    lines = [f"means of the runs with under {OTHER_LOAD_LIMIT} cores of other load:"]
    for workload in workloads:
        for setting in settings:
            got = [r for r in runs if r["setting"] == setting.name and r["workload"] == workload]
            kept = [r for r in got if r["others"] < OTHER_LOAD_LIMIT]
            if not kept:
                lines.append(f"  {workload:8s} {setting.name:14s} no run without other load")
                continue
            rps, p99 = (sum(r[key] for r in kept) / len(kept) for key in ("throughput_rps", "p99_ms"))
            lines.append(f"  {workload:8s} {setting.name:14s} {rps:7.1f} req/s  p99 {p99:6.1f} ms  "
                         f"({len(kept)} of {len(got)} runs: {', '.join(str(r['throughput_rps']) for r in got)})")
    return lines


def run_rounds(args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    inputs = load_inputs(args.images, args.num_images, 1)
    servers: dict[str, ServerProcess] = {}
    runs: list[dict[str, Any]] = []
    try:
        for setting in args.settings:
            servers[setting.name] = start(setting, args.model, logs)
        for server in servers.values():
            settle(server.process.pid, timeout=120.0)
        for round_ in range(args.rounds):
            order = args.settings if round_ % 2 == 0 else args.settings[::-1]
            for workload in args.workloads:
                for setting in order:
                    run = measure(servers[setting.name], workload, inputs, args) | {"round": round_, "setting": setting.name}
                    runs.append(run)
                    print(line(run), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", type=Setting.parse, help="NAME[@CHECKOUT][:VAR=VALUE,...]")
    parser.add_argument("--model", default="cifar10-fast:latest", help="stored model tag")
    parser.add_argument("--images", type=Path, default=None, help="image folder or .tar(.gz); default: generated JPEGs")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workloads", type=lambda text: text.split(","), default=["protocol", "e2e"])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if len({setting.name for setting in args.settings}) != len(args.settings):
        parser.error("every setting needs its own name")
    return args


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from contract.predictor import read_card

    args = parse_args(argv)
    args.model = str(read_card(args.model)[0].tag)  # `name:latest` resolved once
    with tempfile.TemporaryDirectory(prefix="peers-rounds-") as logs:
        runs = run_rounds(args, Path(logs))
    print("\n".join(means(runs, args.settings, args.workloads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
