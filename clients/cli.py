"""`cifar-client`: classify images with, or inspect, a running CIFAR-10 service."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from clients.client import CIFAR10Client, ServiceError, default_url
from service.schemas import Classification, ModelMetadata, ModelState

app = typer.Typer(help="Client for the CIFAR-10 BentoML service.", no_args_is_help=True, add_completion=False)
console = Console()
errors = Console(stderr=True)
Answer = TypeVar("Answer")  # what one read from the server returns: the card, or the served models

UrlOption = Annotated[
    Optional[str], typer.Option("--url", help="service URL (default: $CIFAR10_URL or http://localhost:3000)")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="seconds to wait for the server", min=0.1)]
ApiKeyOption = Annotated[
    Optional[str],
    typer.Option("--api-key", envvar="CIFAR10_API_KEY", show_envvar=True, help="API key, sent as 'Authorization: Bearer <key>'"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the raw JSON")]
ModelOption = Annotated[Optional[str], typer.Option("--model", help="a served model's name (default: the server's first)")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


@contextmanager
def _connected(url: Optional[str], timeout: float, api_key: Optional[str]) -> Iterator[CIFAR10Client]:
    """A client for the command; the server's refusal or an unreachable server: one line on stderr, exit code 1."""
    url = url or default_url()
    try:
        with CIFAR10Client(url, timeout=timeout, api_key=api_key or "") as client:
            yield client
    except ServiceError as exc:
        raise _fail(f"server refused the request: {exc}") from None
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the service at {url}: {exc}") from None


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="image files to classify (PNG, JPEG, GIF, BMP, WebP, TIFF)")],
    url: UrlOption = None,
    top_k: Annotated[int, typer.Option("--top-k", help="how many best classes to show", min=1, max=10)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON answers instead of a table")] = False,
    timeout: TimeoutOption = 30.0,
    api_key: ApiKeyOption = None,
    model: ModelOption = None,
) -> None:
    """Classify one or more images (several go in one /classify_batch request)."""
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise _fail(f"no such file: {', '.join(missing)}")
    with _connected(url, timeout, api_key) as client:
        if len(images) == 1:
            results = [client.classify(images[0], top_k, model)]
        else:
            results = client.classify_batch(images, top_k, model)
    if as_json:
        payload = [{"file": str(p), **r.model_dump()} for p, r in zip(images, results)]
        typer.echo(json.dumps(payload if len(payload) > 1 else payload[0], indent=2))
        return
    table = Table(title=f"CIFAR-10 predictions ({results[0].model})")
    table.add_column("file")
    table.add_column("label", style="bold")
    table.add_column("confidence", justify="right")
    table.add_column(f"top {top_k}")
    table.add_column("in distribution (score)")
    for path, result in zip(images, results):
        ranked = ", ".join(f"{p.label} {p.probability:.1%}" for p in result.top_k)
        table.add_row(path.name, result.label, f"{result.confidence:.1%}", ranked, _in_distribution(result))
    console.print(table)


def _in_distribution(result: Classification) -> str:
    """The out-of-distribution verdict and its score; an uncalibrated model gives none."""
    if result.in_distribution is None or result.in_distribution_score is None:
        return "- (uncalibrated model)"
    verdict = "yes" if result.in_distribution else "[bold red]NO: probably none of the classes[/bold red]"
    return f"{verdict} ({result.in_distribution_score:.3f})"


@app.command()
def metadata(
    model: ModelOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
    api_key: ApiKeyOption = None,
) -> None:
    """Show which model the service runs, how it was trained and where it infers."""
    _read_and_show(url, timeout, api_key, as_json, read=lambda client: client.metadata(model),
                   raw=lambda info: info.model_dump_json(indent=2), table=_metadata_table)


def _metadata_table(info: ModelMetadata) -> Table:
    table = Table(title=f"Model {info.tag}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = {
        "created": info.creation_time.isoformat(timespec="seconds"),
        "architecture": f"{info.architecture} ({info.parameters:,} parameters)" if info.parameters else str(info.architecture),
        "optimizer": str(info.config.get("optimizer", info.labels.get("optimizer", "?"))),
        "test accuracy": _percent(info.metrics.test_accuracy),
        "classes": ", ".join(info.class_names),
        "input": f"{info.input_shape} {info.input_dtype}",
        "preprocessing": str(info.preprocessing),
        "device": info.device,
        "batching": f"max {info.batching.max_batch_size} images / {info.batching.max_latency_ms} ms, "
        f"{info.batching.workers} worker(s)",
        "versions": ", ".join(f"{k} {v}" for k, v in info.framework_versions.items()),
        **_calibration_rows(info),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _read_and_show(
    url: Optional[str],
    timeout: float,
    api_key: Optional[str],
    as_json: bool,
    *,
    read: Callable[[CIFAR10Client], Answer],
    raw: Callable[[Answer], str],
    table: Callable[[Answer], Table],
) -> None:
    """Read one answer from the server; print it as raw JSON (--json) or as a table for people."""
    with _connected(url, timeout, api_key) as client:
        answer = read(client)
    if as_json:
        typer.echo(raw(answer))
    else:
        console.print(table(answer))


def _calibration_rows(info: ModelMetadata) -> dict[str, str]:
    """The card's calibration and the threshold this server applies (CIFAR10_OOD_THRESHOLD or the card's)."""
    calibration = info.calibration
    if calibration is None:
        return {"calibration": "none: probabilities as the model gives them, no out-of-distribution flag"}
    threshold = calibration.threshold if info.ood_threshold is None else info.ood_threshold
    rows = {
        "calibration": f"temperature {calibration.temperature:.4g}, fitted on {calibration.val_size} validation images",
        "out-of-distribution": f"{calibration.score} < {threshold:.4g} is flagged "
        f"(card's threshold {calibration.threshold:.4g}: {_percent(calibration.val_flag_rate)} of validation flagged)",
    }
    if calibration.test is not None:
        test = calibration.test
        rows["test calibration"] = (f"ECE {_percent(test.ece_before)} -> {_percent(test.ece_after)}, NLL "
                                    f"{test.nll_before:.4f} -> {test.nll_after:.4f}, {_percent(test.flag_rate)} flagged")
    return rows


def _percent(value: float | None) -> str:
    return f"{value:.2%}" if value is not None else "unknown"


@app.command()
def models(
    url: UrlOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
    api_key: ApiKeyOption = None,
) -> None:
    """List the served models and their versions (the first is the default)."""
    _read_and_show(url, timeout, api_key, as_json, read=CIFAR10Client.models, raw=_models_json, table=_models_table)


def _models_json(states: list[ModelState]) -> str:
    return json.dumps([state.model_dump(exclude_none=True) for state in states], indent=2)


def _models_table(states: list[ModelState]) -> Table:
    table = Table(title="served models")
    for column in ("name", "version", "state"):
        table.add_column(column)
    for state in states:
        table.add_row(state.name, state.version or "-", state.state + (f" ({state.reason})" if state.reason else ""))
    return table


@app.command()
def load(
    name: Annotated[str, typer.Argument(help="the model's store name, e.g. cifar10-cnn")],
    version: Annotated[Optional[str], typer.Option("--version", help="a stored version (default: the newest)")] = None,
    url: UrlOption = None,
    timeout: TimeoutOption = 30.0,
    api_key: ApiKeyOption = None,
) -> None:
    """Switch a served model to a newly stored version, with no downtime (server: CIFAR10_MODEL_CONTROL=1)."""
    with _connected(url, timeout, api_key) as client:
        state = client.load(name, version)
    console.print(f"serving {state.name}:{state.version}")


@app.command()
def unload(
    name: Annotated[str, typer.Argument(help="the model's store name")],
    url: UrlOption = None,
    timeout: TimeoutOption = 30.0,
    api_key: ApiKeyOption = None,
) -> None:
    """Take a model out of service (server: CIFAR10_MODEL_CONTROL=1)."""
    with _connected(url, timeout, api_key) as client:
        state = client.unload(name)
    console.print(f"{state.name} is {state.state}")


if __name__ == "__main__":
    app()
