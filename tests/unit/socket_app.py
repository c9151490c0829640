"""An ``Api`` WebSocket handler served alone over a real aiohttp server, on fake views: what the
handler tests of ``/watch`` and ``/logs/stream`` share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from linkflow_stream.http.api import Api, ApiDeps
from linkflow_stream.http.auth import authentication
from linkflow_stream.http.errors import errors_as_json

Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


@asynccontextmanager
async def serving(views: object, path: str, handler: Callable[[Api], Handler]) -> AsyncIterator[TestClient]:
    """A client of a server whose one route ``path`` is ``handler(api)``, the api reading ``views``
    (no auth, the API's error middleware)."""
    deps = ApiDeps(
        publisher=cast(Any, None),
        views=cast(Any, views),
        workflows=cast(Any, None),
        registry={},
        readiness=dict,
    )
    app = web.Application(middlewares=[errors_as_json, authentication(None)])
    app.router.add_get(path, handler(Api(deps)))
    async with TestClient(TestServer(app)) as client:
        yield client
