"""GET /ui: a page to classify photos in the browser and read the served model's card.

Plain HTML, CSS and JavaScript from service/ui/static (no build step, nothing loaded from elsewhere).
Only the files named in ASSETS are served, so no part of a URL ever reaches the file system. The
page and its assets are open (see service.auth); the page itself asks for the API key when the
service answers 401 and sends it on every request it makes.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from service.errors import RequestError

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = "index.html"
# The only files served under /ui/, with their content types.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The browser may load and connect to this service only: no CDN, no fonts, no scripts in the page.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag) on every load: a new version shows at once
}


def static_file(name: str, media_type: str) -> Response:
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=HEADERS)


async def page(_: Request) -> Response:
    """GET /ui: the page."""
    return static_file(PAGE, "text/html; charset=utf-8")


async def page_slash(_: Request) -> Response:
    """GET /ui/: the page's address is /ui (its relative links count on it)."""
    return RedirectResponse("../ui", status_code=308)


async def asset(request: Request) -> Response:
    """GET /ui/{asset}: one of the allow-listed files, or a 404."""
    name = request.path_params["asset"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise RequestError(f"no UI asset {name!r}; there are {sorted(ASSETS)}", 404)
    return static_file(name, media_type)


UI_ROUTES = [
    Route("/ui", page, methods=["GET"]),
    Route("/ui/", page_slash, methods=["GET"]),
    Route("/ui/{asset}", asset, methods=["GET"]),
]
