"""Where a client connects and how it says who it is: shared by both clients and the CLI."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from linkflow_stream.client._errors import ClientError

DEFAULT_URL = "http://127.0.0.1:8084"
"""The execution API of ``make run``."""
URL_ENV = "LINKFLOW_URL"
KEY_ENV = "LINKFLOW_API_KEY"
DEFAULT_TIMEOUT = 30.0
"""Seconds a call may take (plus any ``wait`` it asks for) before it is ``ConnectionFailed``."""


def base_url(url: str | None) -> str:
    """``url``, else ``$LINKFLOW_URL``, else ``DEFAULT_URL``; only http(s) (urllib would open
    ``file:`` URLs too)."""
    chosen = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    parts = urlsplit(chosen)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"the engine's URL must be http(s)://host:port, not {chosen!r}", error_type="usage")
    return chosen


def base_headers(api_key: str | None) -> dict[str, str]:
    """Headers every call sends: JSON, and the key (``api_key``, else ``$LINKFLOW_API_KEY``)."""
    key = api_key if api_key is not None else os.environ.get(KEY_ENV)
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers
