"""An OSC controller of the daemon under test: a steady load of changes, status requests, feedback counted."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import numpy as np

from rtgen.errors import RtgenError


class OscLoad:
    """A controller that hammers the daemon: status requests, temperature and density changes, at ``rate``/s.

    Also subscribes a second socket to the daemon's feedback and counts what comes back on both.

    Attributes:
        target: the daemon's OSC address.
        sock: the socket it sends from (replies come back to it).
        sent, replies, feedback: messages sent, replies and feedback messages received.
    """

    def __init__(self, port: int, rate: float, seed: int = 0) -> None:
        self.target = ("127.0.0.1", port)
        self.rate = rate
        self.sent = 0
        self.replies = 0
        self.feedback = 0
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.fb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.fb.bind(("127.0.0.1", 0))
        self.fb.settimeout(0.2)
        self._threads = [
            threading.Thread(target=self._count, args=(self.sock, "replies"), daemon=True),
            threading.Thread(target=self._count, args=(self.fb, "feedback"), daemon=True),
        ]

    @staticmethod
    def message(address: str, *args: Any) -> bytes:
        """One OSC datagram."""
        from pythonosc.osc_message_builder import OscMessageBuilder

        b = OscMessageBuilder(address)
        for a in args:
            b.add_arg(a)
        return bytes(b.build().dgram)

    def send(self, address: str, *args: Any) -> None:
        """Send one message to the daemon (not counted in :attr:`sent`: that is the load's)."""
        self.sock.sendto(self.message(address, *args), self.target)

    def _count(self, sock: socket.socket, what: str) -> None:
        while not self._stop.is_set():
            try:
                sock.recv(65536)
            except OSError:
                continue
            setattr(self, what, getattr(self, what) + 1)

    def run(self, seconds: float) -> float:
        """Subscribe, then send for ``seconds``; returns the achieved rate (messages/s)."""
        for t in self._threads:
            t.start()
        self.send("/rtgen/subscribe", "127.0.0.1", int(self.fb.getsockname()[1]))
        gap = 1.0 / self.rate
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            kind = self.sent % 3
            if kind == 0:
                data = self.message("/rtgen/status")
            elif kind == 1:
                data = self.message("/rtgen/temperature", float(self._rng.uniform(0.5, 1.5)))
            else:
                data = self.message("/rtgen/density", float(self._rng.uniform(0.5, 2.0)))
            self.sock.sendto(data, self.target)
            self.sent += 1
            ahead = self.sent * gap - elapsed
            if ahead > 0:
                time.sleep(ahead)
        return self.sent / (time.perf_counter() - t0)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask ``/rtgen/status`` on a fresh socket and return the parsed state.

        Raises:
            TimeoutError: nothing came back within ``timeout``.
            RtgenError: only other messages came back until ``timeout``.
        """
        from pythonosc.osc_message import OscMessage

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(timeout)
            s.sendto(self.message("/rtgen/status"), self.target)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = OscMessage(s.recv(65536))
                if msg.address == "/rtgen/status":
                    return dict(json.loads(msg.params[0]))
        raise RtgenError("the daemon did not answer /rtgen/status")

    def close(self) -> None:
        """Stop the counting threads and close the sockets."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(1)
        self.sock.close()
        self.fb.close()
