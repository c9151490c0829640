"""What a process without the ``api`` role still serves on ``LINKFLOW_API_PORT``: ``/healthz``,
``/readyz`` and ``/metrics``, the same three routes (and answers) as the execution API's, for a
probe and for Prometheus (an executor-only process exports its pool's figures too)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web


def ops_app(readiness: Callable[[], Mapping[str, bool]], metrics: Callable[[], bytes]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = dict(readiness())
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503
        )

    async def render(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type": "version=0.0.4"},
        )

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", render)])
    return app
