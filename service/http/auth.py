"""Optional API key, as pure ASGI middleware (`Service.add_asgi_middleware`).

With `CIFAR10_API_KEY` set, every request needs `Authorization: Bearer <key>` except the ones an
orchestrator or a monitoring system makes without credentials: the probes (/livez, /readyz,
/healthz, /v2/health/live, /v2/health/ready), Prometheus' /metrics, and the API description
(/docs.json, /schema.json, /v2/openapi.json, the Swagger
page at / and its static files, the /ui page and its assets), which holds nothing secret. Inference and /metadata (GET and
POST) are protected, and so is any other path: deny by default. Without the variable the
middleware lets everything through.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.limits import drain, send_json

OPEN_PATHS = frozenset({
    "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json", "/",
    "/v2/health/live", "/v2/health/ready", "/v2/openapi.json", "/ui",
})
OPEN_PREFIXES = ("/static_content/", "/assets/", "/ui/")
CHALLENGE = (b"www-authenticate", b'Bearer realm="cifar10"')


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if any."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class ApiKeyMiddleware:
    """401 with a one-line JSON error unless the request carries the key (or the path is open)."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_drain_bytes: int = 1024 * 1024) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self.max_drain_bytes = max_drain_bytes

    def authorized(self, scope: Scope) -> bool:
        if self._key is None or is_open(scope["path"]):
            return True
        token = bearer_token(scope)
        # compare_digest: the time taken does not reveal how much of the key matched
        return token is not None and hmac.compare_digest(token.encode("latin-1", "replace"), self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        has_header = any(name == b"authorization" for name, _ in scope.get("headers", ()))
        message = (
            "invalid API key"
            if has_header
            else "missing API key: send the header 'Authorization: Bearer <key>' (the value of CIFAR10_API_KEY)"
        )
        await drain(receive, self.max_drain_bytes)  # so an uploading client reads the 401, not a reset
        await send_json(send, 401, {"error": message}, headers=[CHALLENGE])
