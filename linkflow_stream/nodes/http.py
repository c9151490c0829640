"""``http``: one HTTP request. Non-2xx fails the node with a class the retry logic understands."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from linkflow_stream.events import Dispatch
from linkflow_stream.nodes.base import ConfigError, NodeContext, NodeFailure
from linkflow_stream.nodes.network_guard import GuardedResolver, check_literal

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_REDIRECTS = 5


class HttpNode:
    type_name: ClassVar[str] = "http"
    dispatch: ClassVar[Dispatch] = Dispatch.TASK

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_response_bytes: int = 10 * 1024 * 1024,
        default_timeout_seconds: float = 30.0,
    ) -> None:
        self.default_timeout_seconds = default_timeout_seconds
        self.allow_private = allow_private
        self.max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    def validate(self, config: dict[str, Any]) -> None:
        method = config.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ConfigError("method", f"must be one of {', '.join(sorted(METHODS))}")
        url = config.get("url")
        if not isinstance(url, str):
            raise ConfigError("url", "an http(s) URL is required")
        try:
            parsed = URL(url)
            valid = parsed.scheme in ("http", "https") and bool(parsed.host) and parsed.port is not None
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError("url", f"{url!r} is not an absolute http(s) URL")
        headers = config.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError("headers", "must be an object of string values")
        unknown = set(config) - {"method", "url", "headers", "json"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(allow_private=self.allow_private), limit=256
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        method = str(config.get("method", "GET")).upper()
        url = URL(config["url"])
        headers = {**config.get("headers", {}), "Idempotency-Key": ctx.idempotency_key}
        body = config.get("json")
        try:
            for _ in range(MAX_REDIRECTS + 1):
                check_literal(url.host or "", allow_private=self.allow_private)
                async with self._client().request(
                    method,
                    url,
                    headers=headers,
                    json=body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=ctx.timeout_seconds),
                ) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = url.join(URL(resp.headers["Location"]))
                        if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                            method, body = "GET", None
                        continue
                    return await self._output(resp)
            raise NodeFailure("http_4xx", f"more than {MAX_REDIRECTS} redirects")
        except TimeoutError as exc:
            raise NodeFailure("timeout", f"no response within {ctx.timeout_seconds}s") from exc
        except aiohttp.ClientError as exc:
            raise NodeFailure("connection", f"{type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError:
            raise

    async def _output(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        raw = await resp.content.read(self.max_response_bytes + 1)
        if len(raw) > self.max_response_bytes:
            raise NodeFailure("resource_limit", f"response larger than {self.max_response_bytes} bytes")
        text = raw.decode(resp.charset or "utf-8", errors="replace")
        body: Any = text
        if resp.content_type.endswith("json") and text:
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        out = {"status": resp.status, "headers": dict(resp.headers), "body": body}
        if resp.status == 429:
            raise NodeFailure("http_429", f"HTTP 429 from {resp.url}")
        if resp.status >= 500:
            raise NodeFailure("http_5xx", f"HTTP {resp.status} from {resp.url}")
        if resp.status >= 400:
            raise NodeFailure("http_4xx", f"HTTP {resp.status} from {resp.url}")
        if resp.status >= 300:
            raise NodeFailure("http_4xx", f"HTTP {resp.status} from {resp.url} without a usable Location")
        return out
