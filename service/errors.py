"""Errors a client's request causes, each carrying the HTTP status it is answered with."""

from __future__ import annotations


class RequestError(Exception):
    """A request the service refuses; answered as `{"error": message}` with `status_code`."""

    default_status = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code or self.default_status


class ModelError(RequestError):
    """A model that cannot be used as asked: unknown, not loaded, not loadable."""

    default_status = 404


class ProtocolError(RequestError):
    """A malformed Open Inference Protocol request."""
