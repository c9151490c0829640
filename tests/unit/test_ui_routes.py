"""The web UI's routes without an engine: the redirect, the shell on every page path, the assets
(and nothing outside them), the open paths, and the WebSocket key as a subprotocol."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import WSServerHandshakeError, web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from linkflow_stream.core.errors import NotFoundError
from linkflow_stream.http import ui
from linkflow_stream.http.auth import WS_KEY_PREFIX, authentication, foreign_origin, is_open, presented_key
from linkflow_stream.http.errors import errors_as_json
from linkflow_stream.http.ui import LAYOUT_LIBRARY, UI_PAGES, UI_POLICY, asset, assets_dir, ui_routes


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[errors_as_json])
    app.add_routes(ui_routes())
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_the_root_redirects_to_the_ui(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/ui/"


@pytest.mark.parametrize("path", [p.replace("{id}", "exec_abc") for p in UI_PAGES])
async def test_every_page_path_answers_the_shell_with_its_policy(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == UI_POLICY
    text = await resp.text()
    assert '<script type="module" src="/ui/assets/app.js">' in text
    assert "http://" not in text and "https://" not in text, "nothing is loaded from elsewhere"


@pytest.mark.parametrize(
    ("typed", "page"),
    [
        ("/ui", "/ui/"),
        ("/ui/executions/", "/ui/executions"),
        ("/ui/executions/exec_abc/", "/ui/executions/exec_abc"),
        ("/ui/workflows/?team=a", "/ui/workflows?team=a"),
        ("/ui/ops/", "/ui/ops"),
        ("/ui/executions/a%3Fb%2Fc/", "/ui/executions/a%3Fb%2Fc"),
    ],
)
async def test_a_page_typed_with_or_without_its_slash_goes_to_the_page(
    client: TestClient[web.Request, web.Application], typed: str, page: str
) -> None:
    resp = await client.get(typed, allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"] == page
    followed = await client.get(typed)
    assert followed.status == 200 and followed.content_type == "text/html"


async def test_every_html_answer_carries_the_policy(client: TestClient[web.Request, web.Application]) -> None:
    """The shell is reachable as an asset too: without the policy there it would run unguarded."""
    htmls = [e.name for e in assets_dir().iterdir() if e.name.endswith(".html")]
    assert "index.html" in htmls
    for name in htmls:
        resp = await client.get(f"/ui/assets/{name}")
        assert resp.status == 200 and resp.content_type == "text/html"
        assert resp.headers["Content-Security-Policy"] == UI_POLICY, name


async def test_assets_are_served_with_their_types(client: TestClient[web.Request, web.Application]) -> None:
    js = await client.get("/ui/assets/app.js")
    assert js.status == 200 and js.content_type == "text/javascript"
    css = await client.get("/ui/assets/style.css")
    assert css.status == 200 and css.content_type == "text/css"


@pytest.mark.parametrize(
    "name", ["..%2Fdocs.html", "nope.js", ".hidden.js", "app.py", "a%2F..%2F..%2Fapi.py"]
)
async def test_nothing_but_an_asset_is_reachable(
    client: TestClient[web.Request, web.Application], name: str
) -> None:
    resp = await client.get(f"/ui/assets/{name}")
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "not_found"


def test_the_scripts_import_only_their_siblings() -> None:
    """No module reaches for a URL: every import is ``./<file>.js`` of the packaged folder."""
    for entry in assets_dir().iterdir():
        if entry.name.endswith(".js") and entry.name != "dagre.esm.js":
            text = entry.read_text()
            for line in text.splitlines():
                if line.startswith("import "):
                    target = line.rsplit('"', 2)[1]
                    assert target.startswith("./"), (entry.name, line)
                    name = target.removeprefix("./")
                    if name != LAYOUT_LIBRARY or assets_dir().joinpath(name).is_file():
                        asset(name)  # it exists (the layout library only after `make ui`: not needed here)
            urls = set(re.findall(r"\w+://[^\s\"'`]+", text)) - {"http://www.w3.org/2000/svg"}
            assert not urls, (entry.name, urls)  # the SVG namespace is a name, not a fetch


def test_a_missing_layout_library_names_the_build_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui, "assets_dir", lambda: tmp_path)  # a package where `make ui` never ran
    with pytest.raises(NotFoundError, match="built by `make ui`"):
        asset(LAYOUT_LIBRARY)
    with pytest.raises(NotFoundError) as other:
        asset("gone.js")
    assert "make ui" not in str(other.value)


def test_the_ui_and_the_root_are_open_and_the_api_is_not() -> None:
    assert (
        is_open("/")
        and is_open("/ui")
        and is_open("/ui/")
        and is_open("/ui/executions/x")
        and is_open("/ui/assets/app.js")
    )
    assert not is_open("/api/executions") and not is_open("/uix") and not is_open("/api/executions/x/watch")


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}


def test_a_websocket_key_comes_as_a_subprotocol_and_a_header_wins() -> None:
    protocols = f"linkflow, {WS_KEY_PREFIX}lfk_0123456789ab_s3cret"
    offered = make_mocked_request("GET", "/x", headers={**UPGRADE, "Sec-WebSocket-Protocol": protocols})
    assert presented_key(offered) == "Bearer lfk_0123456789ab_s3cret"
    both = make_mocked_request(
        "GET",
        "/x",
        headers={**UPGRADE, "Authorization": "Bearer lfk_a", "Sec-WebSocket-Protocol": "bearer.lfk_b"},
    )
    assert presented_key(both) == "Bearer lfk_a"
    plain = make_mocked_request("GET", "/x", headers={**UPGRADE, "Sec-WebSocket-Protocol": "linkflow"})
    assert presented_key(plain) == ""


def test_the_subprotocol_key_counts_only_on_a_websocket_upgrade() -> None:
    """On a plain request ``bearer.<key>`` is no key: only a WebSocket cannot send Authorization."""
    offered = {"Sec-WebSocket-Protocol": f"linkflow, {WS_KEY_PREFIX}lfk_0123456789ab_s3cret"}
    assert presented_key(make_mocked_request("GET", "/x", headers=offered)) == ""
    assert presented_key(make_mocked_request("GET", "/x", headers={**offered, "Upgrade": "h2c"})) == ""
    upgrade = make_mocked_request("GET", "/x", headers={**offered, "Upgrade": "WebSocket"})
    assert presented_key(upgrade) == "Bearer lfk_0123456789ab_s3cret"


@pytest.mark.parametrize(
    ("host", "origin", "foreign"),
    [
        ("127.0.0.1:8084", None, False),  # not a browser: a CLI or a script
        ("127.0.0.1:8084", "http://127.0.0.1:8084", False),
        ("LOCALHOST:8084", "http://localhost:8084", False),
        ("flows.example.com", "https://flows.example.com", False),  # TLS ends at a proxy
        ("flows.example.com", "http://flows.example.com", False),
        ("[::1]:8084", "http://[::1]:8084", False),
        ("127.0.0.1:8084", "http://evil.example", True),
        ("127.0.0.1:8084", "http://127.0.0.1:9999", True),
        ("127.0.0.1:8084", "http://localhost:8084", True),  # another origin, whatever it resolves to
        ("flows.example.com", "https://flows.example.com:8443", True),
        ("127.0.0.1:8084", "null", True),  # a sandboxed frame or a file:// page
        ("127.0.0.1:8084", "", True),
    ],
)
def test_a_foreign_origin_is_told_apart_from_this_servers_own(
    host: str, origin: str | None, foreign: bool
) -> None:
    headers = {**UPGRADE, "Host": host, **({"Origin": origin} if origin is not None else {})}
    assert (foreign_origin(make_mocked_request("GET", "/x", headers=headers)) is not None) is foreign


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")  # the principal's str key
async def test_a_websocket_from_another_sites_page_is_refused_with_keys_off() -> None:
    """Browsers let any page open a WebSocket anywhere: with keys off, only the Origin check keeps a
    page on another site from reading runs through ws://127.0.0.1:8084 (the user's own engine)."""

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.close()
        return ws

    app = web.Application(middlewares=[errors_as_json, authentication(None)])
    app.router.add_get("/api/ws", echo)
    async with TestClient(TestServer(app)) as c:
        own = f"http://{c.host}:{c.port}"
        for headers in ({}, {"Origin": own}):
            async with c.ws_connect("/api/ws", headers=headers) as ws:
                assert (await ws.receive_str()) == "hello"
        with pytest.raises(WSServerHandshakeError) as refused:
            await c.ws_connect("/api/ws", headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403
        answer = await c.get("/api/ws", headers={**UPGRADE, "Origin": "http://evil.example"})
        assert answer.status == 403
        assert (await answer.json())["error"]["type"] == "forbidden"


@pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (it builds the UI: make ui)"
)
def test_every_module_of_the_ui_parses(tmp_path: Path) -> None:
    """A syntax error in a module would blank the page: ``node --check`` finds it without a browser."""
    for entry in assets_dir().iterdir():
        if entry.name.endswith(".js"):
            copy = tmp_path / (entry.name.removesuffix(".js") + ".mjs")  # .mjs: parsed as an ES module
            copy.write_text(entry.read_text())
            done = subprocess.run(["node", "--check", str(copy)], capture_output=True, text=True, check=False)
            assert done.returncode == 0, f"{entry.name}: {done.stderr}"
