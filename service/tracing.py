"""OpenTelemetry on the request path only while BentoML collects traces.

BentoML wraps every request in OpenTelemetry's ASGI middleware whatever its tracing settings. With tracing
off (its default: no exporter, sample rate 0) that middleware still makes a server span and a span for each
read and write of the body, none of them recorded or sent anywhere: about 140 µs of Python per request, on
the event loop that also answers every other request (docs/performance.md). So while tracing is off the
service excludes every URL from it. The trace and span ids of unsampled spans then no longer appear at the
end of the access log's lines, nor BentoML's `X-BentoML-Request-ID` header on its API routes.

Turning tracing on (BentoML's `tracing` settings, in BENTOML_CONFIG or BENTOML_CONFIG_OPTIONS: an exporter
and a sample rate above 0) leaves the middleware as BentoML configures it, ids and headers included.
"""

from __future__ import annotations

from typing import Any

EVERY_URL = [".*"]  # OpenTelemetry searches these patterns in the request's URL


def tracing_is_on() -> bool:
    """Whether BentoML would send any trace anywhere: an exporter, and a sample rate above 0 (unset is 0)."""
    from bentoml._internal.configuration.containers import BentoMLContainer  # no public reader of the settings

    tracing = BentoMLContainer.tracing
    return bool(tracing.exporter_type.get()) and (tracing.sample_rate.get() or 0.0) > 0.0


def service_tracing() -> dict[str, Any]:
    """`@bentoml.service`'s tracing argument: every URL left out while tracing is off, else nothing."""
    return {} if tracing_is_on() else {"tracing": {"excluded_urls": EVERY_URL}}
