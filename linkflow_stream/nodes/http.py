"""``http``: one HTTP request. Non-2xx fails the node with a class the retry logic understands.

Config: ``method``, ``url``, ``query``, ``headers``, one body of ``json`` / ``form`` / ``text``,
and ``auth`` (``{"type": "basic", "username", "password"}`` or ``{"type": "bearer", "token"}``).
Header values, passwords and tokens may be ``{"secret": "NAME"}``. Redirects are followed (at
most five), each hop through the SSRF guard (``network_guard``). A redirect to another origin
(scheme, host or port) drops ``Authorization``, ``Cookie``, ``Proxy-Authorization`` and every
header whose value is a secret, for the rest of the chain; a same-origin redirect keeps them.
The node keeps no cookies between requests. The output is ``{"status", "headers", "body"}``;
JSON bodies are decoded, text stays text, anything else is base64 with ``"body_encoding"``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar

import aiohttp
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from linkflow_stream.core import circuit
from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure
from linkflow_stream.core.strict_json import loads
from linkflow_stream.core.trace_context import TRACEPARENT
from linkflow_stream.nodes.network_guard import (
    AddressRefused,
    GuardedResolver,
    GuardedSocketFactory,
    check_literal,
)
from linkflow_stream.nodes.secrets import Secrets, check_reference, is_reference

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
BODIES = ("json", "form", "text")
FIELDS = frozenset({"method", "url", "query", "headers", "auth", "circuit_breaker", *BODIES})
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
"""Dropped on a redirect to another origin, together with every header whose value is a secret."""
_PROPAGATOR = TraceContextTextMapPropagator()
TEXT_TYPES = ("text/", "application/xml", "application/javascript", "application/x-www-form-urlencoded")


def _check_url(url: Any) -> None:
    if not isinstance(url, str):
        raise ConfigError("url", "an http(s) URL is required")
    try:
        parsed = URL(url)
        valid = parsed.scheme in ("http", "https") and bool(parsed.host) and parsed.port is not None
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError("url", f"{url!r} is not an absolute http(s) URL")


def origin(url: URL) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default one when the URL names none): the origin of ``url``."""
    return url.scheme.lower(), (url.host or "").lower(), url.port


def _check_auth(auth: Any) -> None:
    if auth is None:
        return
    if not isinstance(auth, dict) or auth.get("type") not in ("basic", "bearer"):
        raise ConfigError("auth", 'must be {"type": "basic", ...} or {"type": "bearer", ...}')
    wanted = {"type", "username", "password"} if auth["type"] == "basic" else {"type", "token"}
    if set(auth) != wanted:
        raise ConfigError("auth", f"{auth['type']} auth takes exactly {', '.join(sorted(wanted))}")
    for key in wanted - {"type"}:
        check_reference(f"auth.{key}", auth[key])


class HttpNode:
    type_name: ClassVar[str] = "http"
    dispatch: ClassVar[Dispatch] = Dispatch.TASK
    reads_data: ClassVar[bool] = False
    """``execute`` reads its config only (the input mapping computed it), so its task need not
    carry every node output of the run (``runtime.step``, ADR 0039)."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_response_bytes: int = 10 * 1024 * 1024,
        default_timeout_seconds: float = 30.0,
        secrets: Secrets | None = None,
    ) -> None:
        self.default_timeout_seconds = default_timeout_seconds
        self.allow_private = allow_private
        self.max_response_bytes = max_response_bytes
        self.secrets = secrets or Secrets({})
        self._session: aiohttp.ClientSession | None = None

    def validate(self, config: dict[str, Any]) -> None:
        unknown = set(config) - FIELDS
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")
        method = config.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ConfigError("method", f"must be one of {', '.join(sorted(METHODS))}")
        _check_url(config.get("url"))
        query = config.get("query", {})
        if not isinstance(query, dict) or not all(isinstance(v, str | int | float) for v in query.values()):
            raise ConfigError("query", "must be an object of string or number values")
        headers = config.get("headers", {})
        if not isinstance(headers, dict):
            raise ConfigError("headers", "must be an object")
        for name, value in headers.items():
            check_reference(f"headers.{name}", value)
        bodies = [b for b in BODIES if b in config]
        if len(bodies) > 1:
            raise ConfigError(bodies[1], f"only one body: {' or '.join(BODIES)}")
        if "form" in config and not isinstance(config["form"], dict):
            raise ConfigError("form", "must be an object")
        if "text" in config and not isinstance(config["text"], str):
            raise ConfigError("text", "must be a string")
        _check_auth(config.get("auth"))
        circuit.check_config(config)  # the executor's breaker reads it (runtime/breakers.py)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(allow_private=self.allow_private),
                socket_factory=GuardedSocketFactory(allow_private=self.allow_private),
                limit=256,
            )
            # One session serves every execution on this worker: a cookie one response set must
            # not be sent with another execution's requests.
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, ctx: NodeContext, config: dict[str, Any]) -> dict[str, str]:
        headers = {k: self.secrets.resolve(v) for k, v in config.get("headers", {}).items()}
        auth = config.get("auth")
        if auth and auth["type"] == "bearer":
            headers["Authorization"] = f"Bearer {self.secrets.resolve(auth['token'])}"
        elif auth:
            pair = f"{self.secrets.resolve(auth['username'])}:{self.secrets.resolve(auth['password'])}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        headers["Idempotency-Key"] = ctx.idempotency_key
        if not any(name.lower() == TRACEPARENT for name in headers):
            # The current span (the executor's process span of this attempt, when tracing is on)
            # as W3C ``traceparent``: the called service joins the run's trace. Nothing is added
            # when there is no current span. A traceparent the node's config sets is kept.
            _PROPAGATOR.inject(headers)
        return headers

    @staticmethod
    def _credentials(config: dict[str, Any]) -> frozenset[str]:
        """Lower-case names of the headers a redirect to another origin must not carry."""
        secret = {name.lower() for name, value in config.get("headers", {}).items() if is_reference(value)}
        return CREDENTIAL_HEADERS | secret

    @staticmethod
    def _redirect_target(resp: aiohttp.ClientResponse, url: URL, location: str) -> URL:
        """Where a redirect points, resolved against ``url``; only http(s) URLs with a host."""
        try:
            target: URL | None = url.join(URL(location))
        except ValueError:
            target = None
        if target is None or target.scheme not in ("http", "https") or not target.host:
            raise NodeFailure(
                "http_4xx", f"HTTP {resp.status} from {url} redirects to {location!r}, not an http(s) URL"
            )
        return target

    @staticmethod
    def _body(config: dict[str, Any], headers: dict[str, str]) -> bytes | None:
        if "json" in config:
            headers.setdefault("Content-Type", "application/json")
            return json.dumps(config["json"]).encode()
        if "form" in config:
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
            return URL.build(query={k: str(v) for k, v in config["form"].items()}).raw_query_string.encode()
        if "text" in config:
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            return str(config["text"]).encode()
        return None

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        method = str(config.get("method", "GET")).upper()
        url = URL(config["url"]).update_query({k: str(v) for k, v in config.get("query", {}).items()})
        headers = self._headers(ctx, config)
        body = self._body(config, headers)
        credentials = self._credentials(config)
        came_from: URL | None = None
        try:
            for _ in range(MAX_REDIRECTS + 1):
                check_literal(url.host or "", allow_private=self.allow_private)
                ctx.usage["request_bytes"] = ctx.usage.get("request_bytes", 0) + len(body or b"")
                async with self._client().request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=ctx.timeout_seconds),
                ) as resp:
                    location = resp.headers.get("Location") if resp.status in REDIRECT_STATUSES else None
                    if location is None:
                        return await self._output(ctx, resp)
                    came_from, url = url, self._redirect_target(resp, url, location)
                    if origin(url) != origin(came_from):
                        # Once dropped, dropped for the rest of the chain, back at the first origin too.
                        headers = {k: v for k, v in headers.items() if k.lower() not in credentials}
                    if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                        method, body = "GET", None
                        headers.pop("Content-Type", None)
        except NodeFailure as exc:
            if came_from is None or exc.error_type != "validation":
                raise
            raise NodeFailure(
                exc.error_type, f"{exc.message} (redirected there from {came_from})", retryable=exc.retryable
            ) from exc
        except TimeoutError as exc:
            raise NodeFailure("timeout", f"no response within {ctx.timeout_seconds}s") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise NodeFailure("validation", str(exc.os_error)) from exc
            raise NodeFailure("connection", f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.InvalidURL as exc:  # e.g. an IPv4 literal in a legacy form such as 127.1
            raise NodeFailure("validation", f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise NodeFailure("connection", f"{type(exc).__name__}: {exc}") from exc
        raise NodeFailure("http_4xx", f"more than {MAX_REDIRECTS} redirects")

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, or just past the cap (``read(n)`` returns *at most* n bytes per call)."""
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_response_bytes:
            chunk = await resp.content.read(self.max_response_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def _output(self, ctx: NodeContext, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        raw = await self._read_capped(resp)
        ctx.usage["response_bytes"] = ctx.usage.get("response_bytes", 0) + len(raw)
        if len(raw) > self.max_response_bytes:
            raise NodeFailure("resource_limit", f"response larger than {self.max_response_bytes} bytes")
        out: dict[str, Any] = {"status": resp.status, "headers": dict(resp.headers), "body": None}
        content_type = resp.content_type or ""
        if raw and content_type.endswith("json"):
            try:  # RFC 8259 JSON: a NaN or Infinity some services send would break every reader
                out["body"] = loads(raw.decode(resp.charset or "utf-8"))  # of the run (ADR 0049)
            except (ValueError, RecursionError):  # not JSON after all: its text
                out["body"] = raw.decode(resp.charset or "utf-8", errors="replace")
        elif raw and (content_type.startswith(TEXT_TYPES) or not content_type):
            out["body"] = raw.decode(resp.charset or "utf-8", errors="replace")
        elif raw:
            out["body"], out["body_encoding"] = base64.b64encode(raw).decode(), "base64"
        if resp.status == 429:
            raise NodeFailure("http_429", f"HTTP 429 from {resp.url}")
        if resp.status >= 500:
            raise NodeFailure("http_5xx", f"HTTP {resp.status} from {resp.url}")
        if resp.status >= 400:
            raise NodeFailure("http_4xx", f"HTTP {resp.status} from {resp.url}")
        if resp.status >= 300:
            raise NodeFailure("http_4xx", f"HTTP {resp.status} from {resp.url} without a usable Location")
        return out
