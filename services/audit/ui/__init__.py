"""The analysts' page (issue 8 item 7): static HTML, CSS and JavaScript served by the audit service at
`/ui`. Nothing is fetched from elsewhere (no CDN; the charts are SVG drawn by app.js). The page itself
holds no data and needs no key; it asks the analyst for theirs (kept in sessionStorage) and calls the
JSON API with `Authorization: Bearer`, so what it may show is decided by the API's key and scope checks.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

HERE = Path(__file__).resolve().parent
_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# Only this origin's own files: a page showing audit data must not load or send anything elsewhere.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

ui_router = APIRouter()


@ui_router.get("/ui", include_in_schema=False)
def page() -> Response:
    return Response((HERE / "index.html").read_bytes(), media_type="text/html; charset=utf-8", headers=_HEADERS)


@ui_router.get("/ui/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    if name not in _FILES:
        return Response(status_code=404)
    return Response((HERE / name).read_bytes(), media_type=_FILES[name], headers=_HEADERS)
