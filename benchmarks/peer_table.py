"""benchmarks/peers.py's report: the table as printed (each server at its best per workload and client
count, the settings tried, the ratio to ours, the rows of peers that could not run) and its PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORKLOAD_TITLES = {
    "protocol": "protocol: OIP v2 infer, one UINT8 [1,32,32,3] image per request",
    "e2e": "end to end: one JPEG file per request, decoded by the server",
}
OURS = "ours"


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def best_runs(runs: list[dict[str, Any]], workload: str, clients: int) -> dict[str, dict[str, Any]]:
    """Per server, its run with the most requests/s (that agreed with ours) for this workload and client count."""
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run["workload"] != workload or run["clients"] != clients:
            continue
        current = best.get(run["server"])
        if current is None or run["throughput_rps"] > current["throughput_rps"]:
            best[run["server"]] = run
    return best


def section(summary: dict[str, Any], workload: str, clients: int) -> list[str]:
    best = best_runs(summary["runs"], workload, clients)
    ours = best.get(OURS, {}).get("throughput_rps")
    lines = [f"{WORKLOAD_TITLES[workload]}, {clients} clients",
             f"  {'server':<10} {'version':<15} {'best of':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
             f"{'CPU ms/req':>11} {'x ours':>7}  form"]
    for name, run in sorted(best.items(), key=lambda item: (item[0] != OURS, -item[1]["throughput_rps"])):
        ratio = run["throughput_rps"] / ours if ours else None
        lines.append(
            f"  {name:<10} {run['version']:<15} {run['setting']:<10} {fmt(run['throughput_rps']):>8} "
            f"{fmt(run['p50_ms']):>8} {fmt(run['p99_ms']):>8} {run['errors']:>7} "
            f"{fmt(run['server_cpu_ms_per_request'], '.2f'):>11} {fmt(ratio, '.2f'):>7}  {run['form']}")
    return lines


def tried_lines(summary: dict[str, Any]) -> list[str]:
    """Every server's settings and what each gave (req/s per workload and client count)."""
    counts = "/".join(str(clients) for clients in summary["clients"])
    lines = [f"settings tried (req/s; protocol {counts} clients, then end to end {counts} clients; - not run):"]
    by_setting: dict[tuple[str, str], dict[tuple[str, int], float]] = {}
    for run in summary["runs"]:
        by_setting.setdefault((run["server"], run["setting"]), {})[(run["workload"], run["clients"])] = run["throughput_rps"]
    for (server, setting), figures in by_setting.items():
        cells = [fmt(figures.get((workload, clients))) for workload in WORKLOAD_TITLES for clients in summary["clients"]]
        lines.append(f"  {server:<10} {setting:<10} {' / '.join(cells)}")
    return lines


def report(summary: dict[str, Any]) -> str:
    lines = [f"serving peers: {summary['model']}, {summary['duration']:g} s after {summary['warmup']:g} s warm-up per "
             f"run, {summary['client']} clients, {summary['images']}; max batch {summary['max_batch_size']}, max wait "
             f"{summary['max_latency_ms']} ms everywhere", ""]
    for workload in WORKLOAD_TITLES:
        for clients in summary["clients"]:
            if best_runs(summary["runs"], workload, clients):
                lines += section(summary, workload, clients) + [""]
    lines += tried_lines(summary) + [""]
    lines += ["agreement with our /classify (max |p - ours| over the check images, per server and workload):"]
    lines += [f"  {row['server']:<10} {row['setting']:<10} {row['workload']:<9} {row['max_difference']:.2e}"
              f"{'' if row['agrees'] else '  DISAGREES: a harness bug'}" for row in summary["checks"]]
    lines += ["", "not run:"] + [f"  {name}: {reason}" for name, reason in summary["not_run"].items()]
    m = summary["machine"]
    lines += ["", f"command: {summary['command']}",
              f"machine: {m['cpu']} ({m['cpu_flags']}), {m['cpu_count']} CPUs ({m['usable_cpus']} usable), "
              f"{m['platform']}, Python {m['python']}, load average at start "
              f"{' '.join(str(x) for x in m['load_average_at_start'])}",
              "versions: " + ", ".join(f"{name} {version}" for name, version in summary["versions"].items())]
    return "\n".join(lines)


def chart(summary: dict[str, Any], path: Path) -> None:
    """Requests/s of each server at its best, one panel per workload and client count, p99 over each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(workload, clients) for workload in WORKLOAD_TITLES for clients in summary["clients"]
              if best_runs(summary["runs"], workload, clients)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for axis, (workload, clients) in zip(axes[0], panels):
        best = best_runs(summary["runs"], workload, clients)
        names = sorted(best, key=lambda name: (name != OURS, -best[name]["throughput_rps"]))
        rates = [best[name]["throughput_rps"] for name in names]
        bars = axis.bar(names, rates, color=["tab:green" if name == OURS else "tab:gray" for name in names])
        for bar, name in zip(bars, names):
            axis.annotate(f"p99 {best[name]['p99_ms']:.0f} ms", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
        axis.set_title(f"{workload}, {clients} clients", fontsize=10)
        axis.set_ylabel("requests/s")
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
    figure.suptitle(f"the same model through each server, at its best ({summary['machine']['cpu']}, "
                    f"{summary['machine']['cpu_count']} CPUs)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
