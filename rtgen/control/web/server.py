"""The web control surface: a page over HTTP and a WebSocket, served off the real-time thread.

One thread of its own runs an asyncio loop with a ``websockets`` server on one TCP port: ``GET /`` (and the
page's script and style) from the package's ``static/`` folder, ``GET /api/addresses`` (the OSC address table
with the widget each address gets), ``GET /api/status`` and the WebSocket at ``/ws``.

Both directions speak OSC as JSON, ``{"address": "/rtgen/tempo", "args": [120]}``:

* the page sends one message per frame; it goes through :meth:`rtgen.control.osc.OscControl.handle`, the OSC table's
  own validators and handlers, so it becomes the same typed command on the same queue as a UDP message would;
  an error comes back as ``/rtgen/error``;
* the server sends a JSON *array* of messages per frame: the OSC feedback (``/rtgen/note``, ``/rtgen/beat``,
  ``/rtgen/chord``, ``/rtgen/section``, ``/rtgen/learned``, ``/rtgen/error``, ``/rtgen/jack``) and
  ``/rtgen/status`` ten times a second, its one argument the status object itself.

Bound beyond loopback, every request needs the session's pairing token (:attr:`WebServer.token`, printed at
start as a URL and a QR code): ``?token=...`` on the first page load, which sets a cookie the page's own requests
and WebSocket then carry. Anything without it gets 401. On loopback no token is asked for; there the ``Host``
header must name loopback (DNS rebinding) and a WebSocket's ``Origin`` must be the page's own.

The feedback comes the way an OSC client gets it: while a page is open, the server subscribes a UDP socket of
its own on 127.0.0.1 to the daemon's :class:`~rtgen.control.osc.Feedback`, whose sender thread already keeps sockets
away from the real-time thread. Nothing here runs on, or waits for, the real-time thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hmac
import http.cookies
import itertools
import json
import logging
import secrets
import socket
import threading
import time
import urllib.parse
from importlib import resources
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from rtgen.config import CC_CONTROLS, MODES, PART_NAMES, GenerationConfig, PartConfig, field_range
from rtgen.contract import NOTE_NAMES, SCALES
from rtgen.control import osc
from rtgen.errors import RtgenError
from rtgen.logs import Folded

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 0.1
CLOSE_TIMEOUT_S = 1.0
MAX_FRAME_BYTES = 1024 * 1024  # the transport's limit: a larger frame closes the connection (1009)
MAX_MESSAGE_CHARS = 8 * 1024  # a control message is a few dozen bytes: a longer one is answered, never parsed
MAX_BRACKETS = 32  # "[" and "{" in a message: bounds its nesting before json.loads recurses into it
FLOOD_RATE = 500.0  # messages a second read from one page (a fader sends ~60); a faster page is read no faster
FLOOD_BURST = 100.0
MAX_CLIENTS = 8
_SUBSCRIPTIONS = frozenset({f"{osc.PREFIX}/subscribe", f"{osc.PREFIX}/unsubscribe"})
HIDDEN = frozenset({f"{osc.PREFIX}/status", *_SUBSCRIPTIONS})
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
TOKEN_NAME = "token"  # the query parameter of the pairing URL
COOKIE_NAME = "rtgen_token"  # the cookie the page then carries (cookies are per host, not per port: not "token")
_UNROUTED = ("192.0.2.1", 9)  # TEST-NET-1: connecting a UDP socket there picks the outgoing address, sends nothing


def _widget(address: str, types: str) -> dict[str, Any]:
    """How the page draws the control of ``address``: a specific widget where one fits, else a generic one."""
    name = address.removeprefix(f"{osc.PREFIX}/")
    gen = {"tempo": 1.0, "temperature": 0.05, "top_p": 0.05, "density": 0.05, "swing": 0.05}
    if name in gen:
        return {"kind": "range", "range": list(field_range(GenerationConfig, name)), "step": gen[name], "state": name}
    if name == "mode":
        return {"kind": "choice", "choices": list(MODES), "state": "mode"}
    if name == "key":
        return {"kind": "key", "tonics": list(NOTE_NAMES), "scales": list(SCALES), "state": "key"}
    part_ranges = {"instrument": ("program", 1.0), "volume": ("volume", 0.01), "pan": ("pan", 0.01)}
    if name in part_ranges:
        field, step = part_ranges[name]
        return {"kind": "part-range", "parts": list(PART_NAMES), "range": list(field_range(PartConfig, field)),
                "step": step, "state": field}  # fmt: skip
    if name == "style":
        from rtgen.patterns.styles import style_names

        return {"kind": "part-choice", "choices": {p: list(style_names(p)) for p in PART_NAMES}, "state": "style"}
    if name == "part/enable":
        return {"kind": "part-toggle", "parts": list(PART_NAMES), "state": "enabled"}
    if name == "split":
        return {"kind": "text", "presets": ["auto", "C4"], "placeholder": "C4", "state": "split"}
    if name == "section":
        return {"kind": "text", "presets": ["A", "B", "C", "D"], "placeholder": "section", "state": "section"}
    if name in ("learn", "unlearn"):  # a button beside each control the player's CCs can move
        return {"kind": name, "controls": list(CC_CONTROLS), "state": "cc"}
    if name == "record/start":
        return {"kind": "text", "placeholder": "session.mid", "state": "recording"}
    if not types:
        return {"kind": "button"}
    if types == "i":
        return {"kind": "number", "placeholder": name}
    return {"kind": "text", "placeholder": name}


def control_table() -> list[dict[str, Any]]:
    """The OSC address table (as :func:`rtgen.control.osc.address_table` declares it) with each address's widget.

    Served at ``/api/addresses``; the page builds its controls from it. Addresses a page has no use for
    (status, subscribe, unsubscribe) are left out.
    """
    return [
        {"address": a, "types": t, "description": d, "control": _widget(a, t)}
        for a, t, d in osc.address_table()
        if a not in HIDDEN
    ]


def _host_name(header: str) -> str:
    """``127.0.0.1`` of ``127.0.0.1:9080``, ``::1`` of ``[::1]:9080``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _PageReplies:
    """:class:`rtgen.control.osc.Replies` for the page: a reply goes to the page that sent the message."""

    def __init__(self, server: WebServer) -> None:
        self.server = server

    def reply(self, target: tuple[str, int], address: str, args: list[Any]) -> None:
        """Queue ``address args`` to the page ``target`` = ("web", client id); safe from any thread."""
        self.server.send_to(target[1], {"address": address, "args": args})

    def subscribe(self, host: str, port: int) -> bool:
        """``/rtgen/subscribe`` from a page subscribes that UDP peer to the daemon's feedback, as over OSC."""
        return self.server.feedback.subscribe(host, port)

    def unsubscribe(self, host: str, port: int) -> None:
        """``/rtgen/unsubscribe``, as over OSC."""
        self.server.feedback.unsubscribe(host, port)


class _FeedbackProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: WebServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.server.feedback_datagram(data, addr)


class WebServer:
    """The page, its API and its WebSocket on ``host:port``, run by an asyncio loop on a thread of its own.

    Args:
        host: bind address (127.0.0.1 unless a phone on the network is to steer: then pairing is required).
        port: TCP port (0 = any free port; see :attr:`port`).
        controller: what the commands steer (the daemon), through the OSC table.
        feedback: the daemon's OSC feedback, which the server subscribes to while a page is open.

    Attributes:
        token: the pairing token every request needs when bound beyond loopback (kept for the session), or None.

    Raises:
        OSError: the port cannot be bound (the message names host and port and how to choose another).
    """

    def __init__(self, host: str, port: int, controller: osc.Controller, feedback: osc.Feedback) -> None:
        try:
            self.sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
        except OSError as err:
            raise OSError(
                f"cannot bind the web port {host}:{port}: {err}; choose another with --web PORT or [web] port"
            ) from err
        self.host = host
        self.token = None if osc.is_loopback(host) else secrets.token_urlsafe(16)
        self.unpaired = 0
        self._unpaired_log = Folded(log)
        self.controller = controller
        self.feedback = feedback
        self.control = osc.OscControl(controller, _PageReplies(self))
        self.files = {path: (resources.files("rtgen.control.web").joinpath("static", name).read_bytes(), ctype)
                      for path, (name, ctype) in STATIC.items()}  # fmt: skip
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.clients: dict[int, ServerConnection] = {}
        self.feedback_received = 0
        self.commands = 0
        self._flooding = Folded(log)
        self._ids = itertools.count(1)
        self._outbox: list[dict[str, Any]] = []
        self._direct: dict[int, list[dict[str, Any]]] = {}
        self._flush_scheduled = False
        self._subscribed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        """The page's address (``http://127.0.0.1:9080/``), without the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def pairing_url(self) -> str:
        """The address a phone opens: this machine's address on the network and the token
        (``http://192.168.1.5:9080/?token=...``); the plain :attr:`url` on loopback."""
        if self.token is None:
            return self.url
        host = _reachable_host(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?{TOKEN_NAME}={self.token}"

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve on a background thread; returns once the server accepts connections.

        Raises:
            RtgenError: the server did not come up (the reason is in the message).
        """
        self._thread = threading.Thread(target=self._run, name="rtgen-web", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0) or self._error is not None:
            raise RtgenError(f"the web server did not start: {self._error or 'timed out'}")
        paired = "every request needs the pairing token" if self.token else "loopback only, no token"
        log.info("web control surface on %s (%s)", self.url, paired)

    def close(self) -> None:
        """Close every page's connection, stop the loop and unsubscribe from the feedback (idempotent)."""
        loop, stop = self._loop, self._stop
        if self._thread is not None and loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
            self._thread.join(timeout=5.0)
        self._thread = None
        self._unsubscribe()
        self.sock.close()
        self.udp.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by start(); after start-up, logged
            self._error = err
            if self._ready.is_set():
                log.exception("the web server stopped")
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _FeedbackProtocol(self), sock=self.udp)
        try:
            server = await serve(
                self._session, sock=self.sock, process_request=self._http, max_size=MAX_FRAME_BYTES,
                ping_interval=20, ping_timeout=20, server_header=None, close_timeout=1,
            )  # fmt: skip
            status = asyncio.create_task(self._publish_status())
            self._ready.set()
            await self._stop.wait()
            status.cancel()
            server.close()
            # an HTTP client that keeps its connection open must not hold up the daemon's exit
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT_S)
        finally:
            transport.close()

    # --- HTTP -------------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Serve the page and the API; let ``/ws`` through to the WebSocket handshake."""
        host = request.headers.get("Host", "")
        if osc.is_loopback(self.host) and not osc.is_loopback(_host_name(host)):
            # a page of another site whose name resolves to 127.0.0.1 (DNS rebinding) must not steer
            return connection.respond(403, f"host {host!r} not allowed\n")
        path, _, query = request.path.partition("?")
        cookie = None
        if self.token is not None:
            given = urllib.parse.parse_qs(query).get(TOKEN_NAME, [""])[0]
            if given:
                cookie = given  # the pairing URL: the page's own requests carry it from now on
            else:
                given = _cookie(request.headers.get("Cookie", ""))
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.unpaired += 1
                self._unpaired_log.warning("web: refused %s from %s without the pairing token", path[:100],
                                           connection.remote_address)  # fmt: skip
                return connection.respond(401, "this page needs the pairing token rtgen printed at start\n")
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"http://{host}":
                return connection.respond(403, f"origin {origin!r} not allowed\n")  # another site's page
            if len(self.clients) >= MAX_CLIENTS:
                return connection.respond(503, f"at most {MAX_CLIENTS} pages at once\n")
            return None
        if path == "/api/addresses":
            return _response(json.dumps(control_table()).encode(), "application/json")
        if path == "/api/status":
            try:
                state = self.controller.status()
            except RtgenError as err:
                return connection.respond(503, f"{err}\n")
            return _response(json.dumps(state, sort_keys=True).encode(), "application/json")
        found = self.files.get(path)
        if found is None:
            return connection.respond(404, f"no such page: {path}\n")
        return _response(*found, cookie=cookie)

    # --- the WebSocket ----------------------------------------------------------------------------
    async def _session(self, connection: ServerConnection) -> None:
        """One page: register it, subscribe to the feedback if it is the first, run its messages."""
        cid = next(self._ids)
        self.clients[cid] = connection
        self._subscribe()
        log.info("web page %d connected from %s", cid, connection.remote_address)
        try:
            await connection.send(json.dumps([self._status_message()]))
            budget, then = FLOOD_BURST, time.monotonic()
            async for raw in connection:
                now = time.monotonic()
                budget = min(FLOOD_BURST, budget + (now - then) * FLOOD_RATE) - 1.0
                then = now
                if budget < 0.0:  # a flood: read no faster than FLOOD_RATE (TCP holds the sender back)
                    self._flooding.warning("web page %d sends more than %g messages a second", cid, FLOOD_RATE)
                    await asyncio.sleep(-budget / FLOOD_RATE)
                self._command(cid, raw)
        except ConnectionClosed:
            pass
        finally:
            del self.clients[cid]
            self._direct.pop(cid, None)
            if not self.clients:
                self._unsubscribe()
            log.info("web page %d disconnected", cid)

    def _command(self, cid: int, raw: str | bytes) -> None:
        """One frame from a page, ``{"address": ..., "args": [...]}``, through the OSC table; never raises.

        Every refused frame is answered: a binary frame, a message over :data:`MAX_MESSAGE_CHARS` or with more
        than :data:`MAX_BRACKETS` brackets is refused before anything parses it.
        """
        self.commands += 1
        try:
            reason = self._refusal(raw)
            if reason is None:
                msg = json.loads(raw)
                address = msg.get("address") if isinstance(msg, dict) else None
                args = msg.get("args", []) if isinstance(msg, dict) else None
                if not isinstance(address, str) or not isinstance(args, list):
                    reason = 'expected {"address": "/rtgen/...", "args": [...]}'
                elif address == f"{osc.PREFIX}/status" and not args:  # the status object itself, not a JSON string
                    self.send_to(cid, self._status_message())
                elif address in _SUBSCRIPTIONS and not self._from_loopback(cid):
                    reason = "a page on the network gets the feedback over its WebSocket; it subscribes nothing"
                else:
                    self.control.handle(address, args, ("web", cid))
        except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = f"not JSON: {err}"
        except Exception as err:  # a bug must not close the page's connection (1011)
            log.exception("web page %d: a message failed", cid)
            reason = f"internal error: {err}"
        if reason is not None:
            self.control.error(("web", cid), "?", reason)

    def _from_loopback(self, cid: int) -> bool:
        connection = self.clients.get(cid)
        return connection is not None and osc.is_loopback(str(connection.remote_address[0]))

    @staticmethod
    def _refusal(raw: str | bytes) -> str | None:
        """Why the frame ``raw`` is refused unread, or None."""
        if isinstance(raw, bytes):
            return f"a binary frame ({len(raw)} bytes): send JSON text"
        if len(raw) > MAX_MESSAGE_CHARS:
            return f"a {len(raw)}-character message: at most {MAX_MESSAGE_CHARS}"
        if raw.count("[") + raw.count("{") > MAX_BRACKETS:
            return f"more than {MAX_BRACKETS} brackets: nested too deep"
        return None

    def send_to(self, cid: int, message: dict[str, Any]) -> None:
        """Queue ``message`` to page ``cid`` (thread-safe: background loaders reply from their own thread)."""
        loop = self._loop
        if loop is None:
            return

        def put() -> None:
            self._direct.setdefault(cid, []).append(message)
            self._schedule_flush()

        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(put)

    def _broadcast(self, message: dict[str, Any]) -> None:
        self._outbox.append(message)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # what arrives in one loop iteration (a chord's notes) goes out as one frame
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox:
            frame = json.dumps(self._outbox)
            self._outbox = []
            broadcast(self.clients.values(), frame)
        for cid, messages in self._direct.items():
            connection = self.clients.get(cid)
            if connection is not None and messages:
                broadcast([connection], json.dumps(messages))
        self._direct.clear()

    # --- feedback and status ----------------------------------------------------------------------
    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = self.feedback.subscribe(*self.udp.getsockname()[:2])
            if not self._subscribed:
                log.warning("web: the OSC feedback has no room for another subscriber; the roll stays empty")

    def _unsubscribe(self) -> None:
        if self._subscribed:
            with contextlib.suppress(OSError):
                self.feedback.unsubscribe(*self.udp.getsockname()[:2])
            self._subscribed = False

    def feedback_datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        """An OSC feedback datagram from the daemon: forwarded to every page as JSON."""
        if addr[1] != self.feedback.sock.getsockname()[1] or not osc.is_loopback(str(addr[0])):
            return  # anyone on this machine can send to our port; only the daemon's feedback counts
        try:
            for dgram in osc.split_datagram(data):
                address, args = osc.parse_message(dgram)
                self.feedback_received += 1
                self._broadcast({"address": address, "args": args})
        except ValueError as err:
            log.warning("web: cannot parse a feedback datagram: %s", err)

    def _status_message(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = self.controller.status()
        except RtgenError as err:
            state = {"error": str(err)}
        state["web"] = {"pages": len(self.clients), "feedback": self.feedback_received, "commands": self.commands,
                        "errors": self.control.errors}  # fmt: skip
        return {"address": f"{osc.PREFIX}/status", "args": [state]}

    async def _publish_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self.clients:
                self._broadcast(self._status_message())


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _response(body: bytes, content_type: str, cookie: str | None = None) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),  # the pairing URL's token must not leave in a Referer
        ]
    )
    if cookie is not None:
        headers["Set-Cookie"] = f"{COOKIE_NAME}={cookie}; Path=/; HttpOnly; SameSite=Strict"
    return Response(200, "OK", headers, body)


def _cookie(header: str) -> str:
    """The pairing token in a ``Cookie`` header, or ""."""
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    try:
        jar.load(header)
    except http.cookies.CookieError:
        return ""
    morsel = jar.get(COOKIE_NAME)
    return morsel.value if morsel is not None else ""


def _reachable_host(host: str) -> str:
    """An address of this machine a phone can reach: ``host`` itself, or for a wildcard bind the address of the
    interface the default route leaves by (no packet is sent), else the host name."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_UNROUTED)
            return str(probe.getsockname()[0])
    except OSError:  # no route (an offline machine, a test's namespace)
        return socket.gethostname()
