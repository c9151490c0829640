"""Authentication and roles for both HTTP APIs: who a request acts as, and whether it may.

With auth on, every route but the probes (``/healthz``, ``/readyz``, ``/metrics``) and the API's
description (``/openapi.json``, ``/docs``) and the web UI's shell (``/``, ``/ui/...``) needs
``Authorization: Bearer <key>`` (a WebSocket may offer the subprotocol ``bearer.<key>`` instead);
the key gives the request its ``Principal`` (team and role).
Reads need ``viewer``, writes ``operator``, and the routes an app marks ``admin`` (keys, workers,
the cross-team queue status) need ``admin``. Team scoping (404 for another team's things) is the
handlers' part, through :func:`principal_of`. With auth off, every request is ``ANONYMOUS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from linkflow_stream.core.auth import ANONYMOUS, Principal, Role, split_key
from linkflow_stream.http.errors import ForbiddenError, UnauthorizedError
from projections.keys import KeyView

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/", "/ui"})
"""Served without a key: the probes, and the API's description (the same for every caller; ADR 0024),
and ``/`` and ``/ui`` (redirects to the UI)."""
UI_PREFIX = "/ui/"
"""The web UI's pages and assets (ADR 0038) take no key: they hold no data and are the same for
every caller; the page asks for a key and sends it with each API call it makes."""
WS_PROTOCOL = "linkflow"
"""The WebSocket subprotocol the engine's WebSockets answer with (a browser that offers any
subprotocol needs one chosen back)."""
WS_KEY_PREFIX = "bearer."
"""A browser cannot set ``Authorization`` on a WebSocket, so it offers the key as a second
subprotocol, ``bearer.<key>`` (a key is all token characters: ``lfk_<hex>_<base64url>``). It stays
out of URLs, so out of access logs and browser history; the engine never chooses it back."""
WEBHOOK_PREFIX = "/webhook/"
"""Webhook triggers take no API key: each checks its workflow's own token (``X-LinkFlow-Token``)."""
PRINCIPAL = "linkflow.principal"
SYNC_SECONDS = 2.0
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_open(path: str) -> bool:
    """Whether a request to ``path`` (or a route pattern) is served without an API key."""
    return path in OPEN_PATHS or path.startswith((WEBHOOK_PREFIX, UI_PREFIX))


def is_websocket_upgrade(request: web.Request) -> bool:
    """Whether the request asks to become a WebSocket (``Upgrade: websocket``)."""
    return request.headers.get("Upgrade", "").strip().lower() == "websocket"


def presented_key(request: web.Request) -> str:
    """The ``Authorization`` header, or a WebSocket's ``bearer.<key>`` subprotocol as one.

    The subprotocol counts only on a WebSocket upgrade: it exists because a browser cannot set
    ``Authorization`` there. On a plain request it would be a second, undocumented way to send a
    key, one that proxies and logs do not know to treat as a credential."""
    header = request.headers.get("Authorization")
    if header:
        return header
    if not is_websocket_upgrade(request):
        return ""
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(WS_KEY_PREFIX):
            return "Bearer " + offered.removeprefix(WS_KEY_PREFIX)
    return ""


def foreign_origin(request: web.Request) -> str | None:
    """The ``Origin`` of a WebSocket upgrade when it is not this server's own, else ``None``.

    Browsers do not apply the same-origin policy to WebSockets: any page a user visits may open
    ``ws://127.0.0.1:8084/...`` and, with keys off (the default on loopback), read runs. A browser
    always sends ``Origin`` on a WebSocket, so one that names another site is refused; a request
    without it (a CLI, a script) is not a browser's and passes. The own origin is the host and
    port the request was sent to (its ``Host``); the scheme is not compared, so a TLS-terminating
    proxy that forwards ``Host`` (https outside, http inside) still matches. A ``Host`` without a
    port takes the default port of the Origin's scheme."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    try:
        theirs = URL(origin)
        scheme = theirs.scheme if theirs.scheme in ("http", "https") else "http"
        ours = URL(f"{scheme}://{request.host}")
        same = (
            theirs.scheme in ("http", "https")
            and bool(theirs.host)
            and (theirs.host or "").lower() == (ours.host or "").lower()
            and theirs.port == ours.port
        )
    except ValueError:
        same = False
    return None if same else origin


def principal_of(request: web.Request) -> Principal:
    """Who this request acts as (set by the middleware; a route outside it is a bug, not anonymous)."""
    found = request.get(PRINCIPAL)
    if not isinstance(found, Principal):
        msg = f"no principal on {request.method} {request.path}: the auth middleware did not run"
        raise TypeError(msg)
    return found


def role_for(method: str, pattern: str, admin_routes: Collection[tuple[str, str]]) -> Role:
    """The role a request to this route needs: ``admin`` for the app's admin routes, else
    ``viewer`` to read and ``operator`` to write. HEAD needs what GET needs (aiohttp serves it
    with the GET handler). The OpenAPI document states the same, from this."""
    method = "GET" if method == "HEAD" else method
    if (method, pattern) in admin_routes:
        return Role.ADMIN
    return Role.VIEWER if method in READ_METHODS else Role.OPERATOR


def authentication(
    keys: KeyView | None,
    sync: Callable[[float], Awaitable[bool]] | None = None,
    admin_routes: Collection[tuple[str, str]] = (),
) -> Middleware:
    """The middleware: ``keys`` ``None`` means auth is disabled. ``admin_routes`` holds the
    (method, route pattern) pairs that need ``admin``; ``sync`` catches the key view up before a
    key it has never seen is refused (one created a moment ago elsewhere)."""
    admin = frozenset(admin_routes)

    def needed(request: web.Request) -> Role:
        pattern = request.match_info.route.resource.canonical if request.match_info.route.resource else ""
        return role_for(request.method, pattern, admin)

    async def check(text: str) -> Principal:
        if keys is None:
            return ANONYMOUS
        scheme, _, key = text.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise UnauthorizedError(
                "this API needs a key: send `Authorization: Bearer <key>` (on a WebSocket: the "
                f"subprotocol `{WS_KEY_PREFIX}<key>`) (an admin creates keys with "
                "`linkflow keys create --team T --role viewer|operator|admin`)"
            )
        parts = split_key(key)
        if parts is None:
            raise UnauthorizedError("unknown or revoked API key")
        record = keys.check_parts(*parts)
        if record is None and sync is not None and not keys.knows(parts[0]):
            await sync(SYNC_SECONDS)
            record = keys.check_parts(*parts)
        if record is None:
            raise UnauthorizedError("unknown or revoked API key")
        return Principal(role=record.role, team=record.team, key_id=record.id)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_websocket_upgrade(request) and (origin := foreign_origin(request)) is not None:
            raise ForbiddenError(
                f"a WebSocket from the page at {origin} is refused: only pages this engine serves "
                "(or clients that send no Origin) may open one"
            )
        if is_open(request.path):
            return await handler(request)
        principal = await check(presented_key(request))
        role = needed(request)
        if not principal.role.allows(role):
            raise ForbiddenError(
                f"this key's role, {principal.role.value}, cannot {request.method} {request.path}: "
                f"it needs {role.value}"
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware
