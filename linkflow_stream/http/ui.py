"""The web UI on the execution API's port: ``/`` redirects to ``/ui/``; every page is one shell.

The UI is a single-page app of plain ES modules (``http/assets/ui``) that is a client of the
JSON API and its WebSockets, nothing more: the pages hold no data, so they are served without a
key (``http.auth.is_open``) and the page asks for one when the API answers 401. Every asset
ships in the package; the one third-party file, the DAG layout library, is copied in from
``ui/node_modules`` by ``make ui`` (pinned by ``ui/package-lock.json``; ADR 0038). No script,
style or font comes from elsewhere, and the page's Content-Security-Policy says so.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

from linkflow_stream.core.errors import NotFoundError

UI_PAGES = (
    "/ui/",
    "/ui/executions",
    "/ui/executions/{id}",
    "/ui/workflows",
    "/ui/workflows/{id}",
    "/ui/ops",
)
"""The routes that answer the app's shell; the app draws the page the path names."""
ASSET_ROUTE = "/ui/assets/{name}"
SLASHED_ROUTE = "/ui/{page:.+}/"
"""A page's address with a trailing slash: redirected to the page."""
ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
LAYOUT_LIBRARY = "dagre.esm.js"
"""Copied from ``ui/node_modules/@dagrejs/dagre/dist`` by ``make ui`` (gitignored)."""
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".txt": "text/plain",
    ".svg": "image/svg+xml",
}
UI_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Scripts and styles from this server only (no inline script), API calls and WebSockets to it only."""


def assets_dir() -> Traversable:
    return resources.files("linkflow_stream.http").joinpath("assets/ui")


def asset(name: str) -> tuple[bytes, str]:
    """The packaged asset ``name`` and its content type; 404 for anything else (no paths: the
    name is one file name, so nothing outside the folder is reachable)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if not ASSET_NAME.fullmatch(name) or ".." in name or suffix not in CONTENT_TYPES:
        raise NotFoundError(f"the UI has no asset {name!r}")
    found = assets_dir().joinpath(name)
    if not found.is_file():
        hint = " (the DAG layout library is built by `make ui`)" if name == LAYOUT_LIBRARY else ""
        raise NotFoundError(f"the UI has no asset {name!r}{hint}")
    return found.read_bytes(), CONTENT_TYPES[suffix]


def ui_routes() -> list[web.RouteDef]:
    """``GET /``, the pages and the assets."""

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def page(request: web.Request) -> web.Response:
        body, kind = asset("index.html")
        return web.Response(
            body=body,
            content_type=kind,
            charset="utf-8",
            headers={"Content-Security-Policy": UI_POLICY, "Cache-Control": "no-cache"},
        )

    async def one_asset(request: web.Request) -> web.Response:
        body, kind = asset(request.match_info["name"])
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if kind == "text/html":  # /ui/assets/index.html is the shell too: the same policy
            headers["Content-Security-Policy"] = UI_POLICY
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=headers)

    async def canonical(request: web.Request) -> web.Response:
        """A page's address typed with a trailing slash (or ``/ui`` without one) goes to the
        page: the app reads the path, and a link pasted either way should open it."""
        raw = request.rel_url.raw_path  # as sent: an id with %2F or %3F stays one id
        path = raw.rstrip("/") if raw != "/ui" else "/ui/"
        query = request.rel_url.raw_query_string
        raise web.HTTPMovedPermanently(path + (f"?{query}" if query else ""))

    return [
        web.get("/", root),
        web.get("/ui", canonical),
        *(web.get(path, page) for path in UI_PAGES),
        web.get(SLASHED_ROUTE, canonical),
        web.get(ASSET_ROUTE, one_asset),
    ]
