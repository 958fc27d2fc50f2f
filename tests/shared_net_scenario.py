"""Run by ``tests/test_shared_net.py`` inside ``unshare --net`` with ``10.77.0.1/32`` on the namespace's loopback:
the page and OSC bound to ``0.0.0.0`` there, reached from 10.77.0.1 (a peer "on the network") and from 127.0.0.1.

Usage: ``python tests/shared_net_scenario.py OUT.json``. Writes what it saw; the test judges it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import RecordingController
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from test_web import serving

from rtgen.control import osc

PEER = "10.77.0.1"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def http_status(url: str, cookie: str | None = None) -> tuple[int, str | None]:
    """(status, Set-Cookie) of GET ``url``."""
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.headers.get("Set-Cookie")
    except urllib.error.HTTPError as err:
        err.close()
        return err.code, None


def ws_attempt(url: str, headers: dict[str, str]) -> Any:
    """The error replies to a tempo and a subscription over the WebSocket, or the handshake's failure."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def run() -> Any:
        try:
            async with connect(url, additional_headers=headers, open_timeout=5) as ws:
                await ws.send(json.dumps({"address": "/rtgen/tempo", "args": [101]}))
                await ws.send(json.dumps({"address": "/rtgen/subscribe", "args": [PEER, 9]}))
                got: list[Any] = []
                while not any(m["address"] == "/rtgen/error" for m in got):
                    got.extend(json.loads(await asyncio.wait_for(ws.recv(), 5)))
                return [m["args"][0] for m in got if m["address"] == "/rtgen/error"]
        except InvalidStatus as err:
            return err.response.status_code

    return asyncio.run(run())


def osc_from(source: str, port: int, bpm: float) -> list[str]:
    """Send ``/rtgen/tempo bpm`` and a wrong tempo from ``source`` to the OSC server; the replies within 0.5 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(0.5)
        for arg in (bpm, "x"):
            b = OscMessageBuilder(address="/rtgen/tempo")
            b.add_arg(arg)
            s.sendto(b.build().dgram, ("127.0.0.1" if source.startswith("127.") else PEER, port))
        replies = []
        try:
            while True:
                replies.append(OscMessage(s.recv(65535)).address)
        except TimeoutError:
            return replies


def osc_subscribe(source: str, port: int, host: str) -> list[Any]:
    """What ``source`` gets back within 0.5 s for ``/rtgen/subscribe host 9``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(0.5)
        b = OscMessageBuilder(address="/rtgen/subscribe")
        b.add_arg(host)
        b.add_arg(9)
        s.sendto(b.build().dgram, (PEER, port))
        try:
            return OscMessage(s.recv(65535)).params
        except TimeoutError:
            return []


def web(result: dict[str, Any], lines: Lines) -> None:
    ctl = RecordingController()
    with serving("0.0.0.0", ctl) as (server, _):
        token = server.token
        assert token is not None
        base = f"http://{PEER}:{server.port}"
        result["pairing_url"] = server.pairing_url
        result["no_token"] = {p: http_status(f"{base}{p}")[0] for p in ("/", "/app.js", "/api/status", "/ws")}
        wrong = "A" * len(token)
        result["wrong_token"] = http_status(f"{base}/?token={wrong}")[0]
        result["wrong_cookie"] = http_status(f"{base}/api/status", cookie=f"rtgen_token={wrong}")[0]
        time.sleep(1.1)  # past the folding interval of the refusals above
        lines.lines.clear()
        for _ in range(50):
            http_status(f"{base}/api/status")
        result["log_lines_for_50_refused"] = sum("without the pairing token" in line for line in lines.lines)
        status, set_cookie = http_status(f"{base}/?token={token}")
        result["with_token"] = status
        cookie = (set_cookie or "").split(";", 1)[0]
        result["set_cookie"] = set_cookie
        result["api_with_cookie"] = http_status(f"{base}/api/status", cookie=cookie)[0]
        result["ws_without"] = ws_attempt(f"ws://{PEER}:{server.port}/ws", {})
        calls_before = len(ctl.calls)
        result["ws_with_cookie"] = ws_attempt(
            f"ws://{PEER}:{server.port}/ws", {"Cookie": cookie, "Origin": f"http://{PEER}:{server.port}"}
        )
        result["ws_calls"] = ctl.calls[calls_before:]
        result["unpaired"] = server.unpaired
        result["browser"] = browser(f"http://{PEER}:{server.port}/", token)


def browser(url: str, token: str) -> str:
    """What a phone's browser sees: the page without the token, then opened by the pairing URL (its WebSocket
    must connect on the cookie alone)."""
    import shutil

    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        return "skipped: needs chromium and playwright"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        try:
            page = b.new_page()
            response = page.goto(url)
            if response is None or response.status != 401:
                return f"without the token: {response.status if response else None}"
            page.goto(f"{url}?token={token}")
            page.wait_for_selector("#conn.on", timeout=15_000)
            page.reload()  # the cookie alone, without the token in the address
            page.goto(url)
            page.wait_for_selector("#conn.on", timeout=15_000)
            return "connected"
        finally:
            b.close()


def osc_allow(result: dict[str, Any], allow: list[str], key: str) -> None:
    import ipaddress

    ctl = RecordingController()
    server = osc.OscServer("0.0.0.0", 0, ctl, [ipaddress.ip_network(a) for a in allow])  # type: ignore[arg-type]
    server.start()
    try:
        seen: dict[str, Any] = {}
        for source, bpm in ((PEER, 111.0), ("127.0.0.1", 122.0)):
            replies = osc_from(source, server.port, bpm)
            time.sleep(0.1)
            seen[source] = {"replies": replies, "tempi": [c[1][0] for c in ctl.calls if c[0] == "set_tempo"]}
            ctl.calls.clear()
        seen["subscribe_other"] = osc_subscribe(PEER, server.port, "127.0.0.1")
        seen["subscribe_self"] = osc_subscribe(PEER, server.port, PEER)
        seen["subscribers"] = [list(t) for t in server.feedback.subscribers]
        seen["dropped"] = server.dropped
        seen["who"] = server.who_may_steer
        result[key] = seen
    finally:
        server.close()


def main(out: Path) -> int:
    lines = Lines()
    logging.getLogger("rtgen").addHandler(lines)
    logging.getLogger("rtgen").setLevel(logging.INFO)
    result: dict[str, Any] = {"errors": []}
    for name, step in (
        ("web", lambda: web(result, lines)),
        ("osc_loopback_only", lambda: osc_allow(result, ["127.0.0.1"], "osc_loopback_only")),
        ("osc_peer_allowed", lambda: osc_allow(result, ["10.77.0.0/24"], "osc_peer_allowed")),
    ):
        try:
            step()
        except Exception as err:  # the test reports it
            result["errors"].append(f"{name}: {type(err).__name__}: {err}")
    result["log"] = lines.lines[-50:]
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
