"""The http node against a real local HTTP server (no engine needed: the executor is called directly)."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.resolver import DefaultResolver
from opentelemetry.sdk.trace import TracerProvider
from pydantic import SecretStr

from linkflow_stream.core.node_contract import NodeContext, NodeFailure
from linkflow_stream.core.trace_context import TraceParent
from linkflow_stream.dev.testing import TargetServer, serve
from linkflow_stream.nodes.http import HttpNode
from linkflow_stream.nodes.network_guard import AddressRefused, GuardedSocketFactory
from linkflow_stream.nodes.secrets import Secrets

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    yield from serve()


@pytest.fixture(scope="module")
def other() -> Iterator[TargetServer]:
    """A second server: another origin (same host, another port) for redirects to go to."""
    yield from serve()


@pytest.fixture
async def node() -> AsyncIterator[HttpNode]:
    http = HttpNode(
        allow_private=True,
        max_response_bytes=64 * 1024,
        secrets=Secrets({"API_TOKEN": SecretStr("t0ken"), "PASSWORD": SecretStr("pa55")}),
    )
    yield http
    await http.close()


def ctx(timeout: float = 5.0) -> NodeContext:
    return NodeContext("exec_1", "wf", "h", 2, timeout)


async def call(node: HttpNode, config: dict[str, Any], context: NodeContext | None = None) -> Any:
    node.validate(config)
    return await node.execute(context or ctx(), config, {})


async def failure(node: HttpNode, config: dict[str, Any], context: NodeContext | None = None) -> NodeFailure:
    with pytest.raises(NodeFailure) as info:
        await call(node, config, context)
    return info.value


async def test_json_request_and_response(node: HttpNode, server: TargetServer) -> None:
    out = await call(
        node,
        {
            "method": "POST",
            "url": f"{server.url}/echo",
            "query": {"q": "a b", "n": 3},
            "json": {"k": [1, 2]},
            "headers": {"X-Trace": "t1"},
        },
    )
    assert out["status"] == 200
    assert out["body"]["echo"] == {"k": [1, 2]}
    assert out["body"]["query"] == {"q": "a b", "n": "3"}
    hit = server.hits("/echo")[-1]
    assert hit["headers"]["Idempotency-Key"] == "exec_1/h/2"
    assert hit["headers"]["X-Trace"] == "t1"


async def test_form_and_text_bodies(node: HttpNode, server: TargetServer) -> None:
    await call(node, {"method": "POST", "url": f"{server.url}/form", "form": {"a": "1", "b": "x y"}})
    assert server.hits("/form")[-1]["body"] == "a=1&b=x+y"
    assert server.hits("/form")[-1]["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    await call(node, {"method": "PUT", "url": f"{server.url}/text", "text": "hello"})
    assert server.hits("/text")[-1]["body"] == "hello"


async def test_bearer_and_basic_auth_from_secrets(node: HttpNode, server: TargetServer) -> None:
    await call(
        node, {"url": f"{server.url}/bearer", "auth": {"type": "bearer", "token": {"secret": "API_TOKEN"}}}
    )
    assert server.hits("/bearer")[-1]["headers"]["Authorization"] == "Bearer t0ken"
    await call(
        node,
        {
            "url": f"{server.url}/basic",
            "auth": {"type": "basic", "username": "ann", "password": {"secret": "PASSWORD"}},
            "headers": {"X-Key": {"secret": "API_TOKEN"}},
        },
    )
    hit = server.hits("/basic")[-1]["headers"]
    assert hit["Authorization"] == "Basic " + base64.b64encode(b"ann:pa55").decode()
    assert hit["X-Key"] == "t0ken"
    missing = await failure(node, {"url": f"{server.url}/x", "headers": {"X": {"secret": "NOT_SET"}}})
    assert (missing.error_type, missing.retryable) == ("validation", False)
    assert "NOT_SET" in missing.message


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [
        (404, "http_4xx", False),
        (400, "http_4xx", False),
        (429, "http_429", True),
        (500, "http_5xx", True),
        (503, "http_5xx", True),
    ],
)
async def test_status_codes_fail_with_their_class(
    node: HttpNode, server: TargetServer, status: int, error_class: str, retryable: bool
) -> None:
    err = await failure(node, {"url": f"{server.url}/status/{status}"})
    assert (err.error_type, err.retryable) == (error_class, retryable)


async def test_redirects_are_followed_and_bounded(node: HttpNode, server: TargetServer) -> None:
    out = await call(node, {"url": f"{server.url}/redirect?to={server.url}/landed"})
    assert out["body"]["path"] == "/landed"
    err = await failure(node, {"url": f"{server.url}/loop"})
    assert "more than 5 redirects" in err.message
    assert len(server.hits("/loop")) == 6


async def test_a_redirect_to_the_metadata_address_is_refused(node: HttpNode, server: TargetServer) -> None:
    err = await failure(node, {"url": f"{server.url}/redirect?to=http://169.254.169.254/latest/meta-data/"})
    assert err.error_type == "validation"
    assert "metadata" in err.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/",
        "http://localhost:1/",
        "http://10.1.2.3/",
        "http://[::1]:1/",
        "http://192.168.0.1/",
        "http://169.254.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0:1/",
        "http://198.18.0.1/",
        "http://224.0.0.1/",
        "http://[::ffff:127.0.0.1]:1/",
        "http://[64:ff9b::7f00:1]:1/",
        "http://[2002:7f00:1::]:1/",
        "http://0x7f.1:1/",
    ],
)
async def test_private_addresses_are_refused_by_default(url: str) -> None:
    strict = HttpNode()
    try:
        err = await failure(strict, {"url": url})
    finally:
        await strict.close()
    assert err.error_type == "validation"
    assert "refused" in err.message


async def test_large_bodies_hit_the_cap_and_binary_is_base64(node: HttpNode, server: TargetServer) -> None:
    err = await failure(node, {"url": f"{server.url}/big?n={200 * 1024}"})
    assert err.error_type == "resource_limit"
    out = await call(node, {"url": f"{server.url}/binary"})
    assert out["body_encoding"] == "base64"
    assert base64.b64decode(out["body"]) == bytes(range(256))


async def test_a_json_answer_with_nan_or_infinity_is_kept_as_text(
    node: HttpNode, server: TargetServer
) -> None:
    """Python services may send NaN; parsed, it would be stored and sent back as a bare token that
    breaks every JSON reader of the run (ADR 0049). A JavaScript client would not parse it either."""
    for text in ('{"x": NaN}', "[Infinity]", '{"x": 1e999}'):
        out = await call(node, {"url": f"{server.url}/json-text?text={quote(text)}"})
        assert out["body"] == text, out
    plain = quote('{"x": 1.5}')
    out = await call(node, {"url": f"{server.url}/json-text?text={plain}"})
    assert out["body"] == {"x": 1.5}


async def test_slow_responses_time_out(node: HttpNode, server: TargetServer) -> None:
    started = asyncio.get_running_loop().time()
    err = await failure(node, {"url": f"{server.url}/slow?s=3"}, ctx(timeout=0.5))
    assert err.error_type == "timeout" and err.retryable
    assert asyncio.get_running_loop().time() - started < 2


async def test_connection_refused_is_retryable(node: HttpNode) -> None:
    err = await failure(node, {"url": "http://127.0.0.1:1/"})
    assert (err.error_type, err.retryable) == ("connection", True)


async def test_byte_counts_are_recorded(node: HttpNode, server: TargetServer) -> None:
    context = ctx()
    await call(node, {"method": "POST", "url": f"{server.url}/big?n=5000", "text": "0123456789"}, context)
    assert context.usage == {"request_bytes": 10, "response_bytes": 5000}


async def test_a_body_larger_than_one_read_arrives_whole(node: HttpNode, server: TargetServer) -> None:
    out = await call(node, {"url": f"{server.url}/big?n={60 * 1024}"})
    assert len(out["body"]) == 60 * 1024, "the body was cut at a socket read boundary"


AUTH_CONFIG: dict[str, Any] = {
    "auth": {"type": "bearer", "token": {"secret": "API_TOKEN"}},
    "headers": {
        "X-Key": {"secret": "API_TOKEN"},
        "Cookie": "sid=from-config",
        "Proxy-Authorization": "Basic cHJveHk6cHc=",
        "X-Trace": "t1",
    },
}
CREDENTIALS = ("Authorization", "X-Key", "Cookie", "Proxy-Authorization")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_redirect_to_another_origin_drops_the_credentials(
    node: HttpNode, server: TargetServer, other: TargetServer, host: str
) -> None:
    """Origin A redirects to origin B (another port, or another host on A's port): B must not get
    A's bearer token, a header that came from a secret, a cookie or proxy credentials. The other
    headers still arrive, so the request did reach B."""
    target_server = other if host == "127.0.0.1" else server
    target = f"http://{host}:{target_server.server_address[1]}/b-{host}"
    out = await call(node, {"url": f"{server.url}/redirect?to={target}", **AUTH_CONFIG})
    assert out["body"]["path"] == f"/b-{host}"
    sent = server.hits("/redirect")[-1]["headers"]
    assert sent["Authorization"] == "Bearer t0ken" and sent["X-Key"] == "t0ken", "A got the credentials"
    arrived = target_server.hits(f"/b-{host}")[-1]["headers"]
    assert [h for h in CREDENTIALS if h in arrived] == []
    assert arrived["X-Trace"] == "t1"
    assert arrived["Idempotency-Key"] == "exec_1/h/2"


async def test_a_same_origin_redirect_keeps_the_credentials(node: HttpNode, server: TargetServer) -> None:
    await call(node, {"url": f"{server.url}/redirect?to=/same-origin", **AUTH_CONFIG})
    arrived = server.hits("/same-origin")[-1]["headers"]
    assert arrived["Authorization"] == "Bearer t0ken"
    assert arrived["X-Key"] == "t0ken"
    assert arrived["Cookie"] == "sid=from-config"
    assert arrived["Proxy-Authorization"] == "Basic cHJveHk6cHc="


async def test_credentials_dropped_once_stay_dropped(
    node: HttpNode, server: TargetServer, other: TargetServer
) -> None:
    """A -> B -> A: B chose where the chain goes back to, so A does not get the credentials again."""
    back = quote(f"{other.url}/redirect?to={server.url}/back-at-a", safe="")
    await call(node, {"url": f"{server.url}/redirect?to={back}", **AUTH_CONFIG})
    arrived = server.hits("/back-at-a")[-1]["headers"]
    assert [h for h in CREDENTIALS if h in arrived] == []


async def test_a_redirect_to_a_non_http_url_fails_as_http_4xx(node: HttpNode, server: TargetServer) -> None:
    err = await failure(node, {"url": f"{server.url}/redirect?to=file:///etc/passwd"})
    assert (err.error_type, err.retryable) == ("http_4xx", False)
    assert "'file:///etc/passwd', not an http(s) URL" in err.message


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.170.2/v2/credentials",
        "http://[fd00:ec2::254]/latest/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
async def test_metadata_addresses_are_refused_with_private_networks_allowed(
    node: HttpNode, server: TargetServer, url: str
) -> None:
    """``node`` allows private networks; credentials endpoints stay refused, directly or by redirect."""
    assert node.allow_private
    for config in ({"url": url}, {"url": f"{server.url}/redirect?to={url}"}):
        err = await failure(node, config)
        assert (err.error_type, err.retryable) == ("validation", False)
        assert "refused even with LINKFLOW_HTTP_ALLOW_PRIVATE_NETWORKS=true" in err.message
    assert "(redirected there from http://127.0.0.1:" in err.message


async def test_the_address_connected_to_is_checked_whatever_resolved_it(server: TargetServer) -> None:
    """The guard's last word is the socket factory, on the address the connector is about to
    connect to: even a connector whose resolver checks nothing does not reach 127.0.0.1, so a DNS
    answer that changes between a check and the connect cannot slip through."""
    connector = aiohttp.TCPConnector(
        resolver=DefaultResolver(), socket_factory=GuardedSocketFactory(allow_private=False)
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (f"{server.url}/unguarded", f"http://localhost:{server.server_address[1]}/unguarded"):
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                await session.get(url)
            assert isinstance(info.value.os_error, AddressRefused)
    assert server.hits("/unguarded") == [], "a request reached the server"


class _CookieHandler(BaseHTTPRequestHandler):
    """``/login`` sets a session cookie; every other path answers with the Cookie header it got."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = b"{}" if self.path == "/login" else repr(self.headers.get("Cookie")).encode()
        self.send_response(200)
        if self.path == "/login":
            self.send_header("Set-Cookie", "session=s3cret; Path=/")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


async def test_a_cookie_from_one_execution_is_not_sent_by_the_next(node: HttpNode) -> None:
    """One session serves every execution on a worker: a session cookie a response set for one
    run must not go out with another run's requests (a host name, since aiohttp's cookie jar
    ignores cookies from IP addresses)."""
    cookie_server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieHandler)
    thread = threading.Thread(target=cookie_server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://localhost:{cookie_server.server_address[1]}"
        await call(node, {"url": f"{base}/login"})
        out = await call(node, {"url": f"{base}/whoami"}, NodeContext("exec_2", "wf2", "h", 1, 5.0))
        assert out["body"] == "None", f"the second execution sent the cookie {out['body']}"
    finally:
        cookie_server.shutdown()
        cookie_server.server_close()


async def test_the_current_span_goes_out_as_traceparent_and_a_configured_one_is_kept(
    node: HttpNode, server: TargetServer
) -> None:
    await call(node, {"url": f"{server.url}/untraced"})
    (untraced,) = server.hits("/untraced")
    assert not any(k.lower() == "traceparent" for k in untraced["headers"]), "no span, no header"

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("process") as span:
        await call(node, {"url": f"{server.url}/traced"})
        await call(node, {"url": f"{server.url}/own", "headers": {"Traceparent": CONFIGURED}})
    context = span.get_span_context()
    (traced,) = server.hits("/traced")
    sent_with = TraceParent.parse(traced["headers"]["traceparent"])
    assert sent_with == TraceParent(f"{context.trace_id:032x}", f"{context.span_id:016x}", sampled=True)
    (own,) = server.hits("/own")
    sent = [v for k, v in own["headers"].items() if k.lower() == "traceparent"]
    assert sent == [CONFIGURED]


CONFIGURED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
