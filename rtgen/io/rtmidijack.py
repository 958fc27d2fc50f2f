"""python-rtmidi's JACK clients from the inside: their ring buffer, their client, their futex.

python-rtmidi 1.5 (RtMidi 5.0) does three things on JACK that an instrument cannot live with,
and offers no way around them:

* ``send_message`` spins (``sched_yield``, holding the GIL) while the client's 16 KB ring buffer
  is full. When the server stops running the client's cycle, the whole process stops with it.
* Opening and closing a client hold the GIL while libjack waits for the server: up to the server's
  client timeout (5 s by default) when its graph is stuck.
* libjack keeps one table of client futexes per process, indexed by reference number. A foreign
  client that leaves while one of ours is half-way through opening stays in that table: jack2's
  ``JackLibClient::ClientNotifyImp`` skips the removal while the opening client has no client
  control yet. The next client of ours given that number keeps the departed client's futex, waits
  on it for ever, and the server's graph stalls behind it ("client ... was not finished, state =
  Triggered"). Only closing every client of the process resets the table.

:class:`RtmidiJack` finds the RtMidi ``JackMidiData`` of a MidiIn/MidiOut (every pointer is
checked against libjack's own answers before it is trusted) so that rtgen can look at the ring
buffer before a send, close a client through ctypes (which releases the GIL), and check that a
client waits on the futex the server signals (``/proc/self/maps`` against ``/dev/shm``).
Another python-rtmidi or RtMidi release gets ``None`` from :meth:`RtmidiJack.of` and the plain
python-rtmidi behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import rtmidi

from rtgen.errors import PortError

log = logging.getLogger(__name__)

_THISPTR_OFFSET = (
    48  # python-rtmidi 1.5: MidiIn/MidiOut {PyObject head, vtab, _port, _error_callback, _deleted, thisptr}
)
_RTAPI_OFFSET = 8  # RtMidi {vptr, MidiApi *rtapi_}
_APIDATA_OFFSET = 8  # MidiApi {vptr, void *apiData_, ...}
# RtMidi 5.0 JackMidiData {jack_client_t *client; jack_port_t *port; jack_ringbuffer_t *buff; int buffMaxWrite; ...}
_CLIENT, _PORT, _BUFF, _MAX_WRITE = 0, 8, 16, 24
_RING_READ_PTR = 16  # jack_ringbuffer_t {char *buf; size_t write_ptr; size_t read_ptr; ...}
SIZE_PREFIX = 4  # RtMidi writes an int length before each message

ShutdownCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
"""The type of a ``jack_on_shutdown`` callback."""
_libjack: ctypes.CDLL | None = None
_libjack_gil: ctypes.PyDLL | None = None


def _loaded_libjack() -> str | None:
    """Path of the libjack python-rtmidi's clients use, if this process has loaded it.

    python-rtmidi's wheel bundles its own copy; libfluidsynth or another JACK binding may have loaded the
    system's as well. The copy next to python-rtmidi wins: a client belongs to the copy that opened it.
    """
    found: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if os.path.basename(path).startswith("libjack") and path not in found:
                    found.append(path)
    except OSError:
        return None
    home = os.path.dirname(os.path.dirname(os.path.realpath(rtmidi.__file__)))
    for path in found:
        if os.path.realpath(path).startswith(home + os.sep):
            return path
    return found[0] if found else None


def load_libjack() -> ctypes.CDLL:
    """libjack through ctypes (calls release the GIL): the copy python-rtmidi's clients use.

    Raises:
        PortError: libjack cannot be loaded.
    """
    global _libjack
    if _libjack is None:
        # the same copy as rtmidi's clients, or libjack's per-process state would exist twice
        path = _loaded_libjack() or ctypes.util.find_library("jack") or "libjack.so.0"
        try:
            lib = ctypes.CDLL(path)
        except OSError as err:
            raise PortError(f"cannot load libjack ({path}): {err}") from err
        _declare(lib)
        _libjack = lib
    return _libjack


def _load_libjack_gil() -> ctypes.PyDLL:
    """The same libjack with the GIL kept: for the sub-microsecond ring-buffer reads of the real-time thread."""
    global _libjack_gil
    if _libjack_gil is None:
        lib = load_libjack()
        gil = ctypes.PyDLL(lib._name, handle=lib._handle)
        _declare(gil)
        _libjack_gil = gil
    return _libjack_gil


def _declare(lib: ctypes.CDLL) -> None:
    vp, size, i32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    for name, res, args in (
        ("jack_client_open", vp, [ctypes.c_char_p, i32, ctypes.POINTER(i32)]),
        ("jack_client_close", i32, [vp]),
        ("jack_on_shutdown", None, [vp, ShutdownCallback, vp]),
        ("jack_get_buffer_size", ctypes.c_uint32, [vp]),
        ("jack_get_sample_rate", ctypes.c_uint32, [vp]),
        ("jack_get_client_name", ctypes.c_char_p, [vp]),
        ("jack_last_frame_time", ctypes.c_uint32, [vp]),
        ("jack_port_name", ctypes.c_char_p, [vp]),
        ("jack_port_unregister", i32, [vp, vp]),
        ("jack_port_get_all_connections", ctypes.POINTER(ctypes.c_char_p), [vp, vp]),
        ("jack_connect", i32, [vp, ctypes.c_char_p, ctypes.c_char_p]),
        ("jack_free", None, [vp]),
        ("jack_ringbuffer_write_space", size, [vp]),
        ("jack_ringbuffer_read_space", size, [vp]),
    ):
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def _pointer(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


@functools.cache
def _close_port_symbol() -> Any:
    """``RtMidiOut::closePort`` of python-rtmidi's extension through ctypes (which releases the GIL), if exported."""
    try:
        fn = ctypes.CDLL(rtmidi._rtmidi.__file__)._ZN9RtMidiOut9closePortEv
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = None
    return fn


def _layout_known() -> bool:
    return getattr(rtmidi, "__version__", "").startswith("1.5.") and rtmidi.get_rtmidi_version() == "5.0.0"


class RtmidiJack:
    """The JACK side of one python-rtmidi MidiIn/MidiOut (see the module docstring).

    Attributes:
        client_name: the JACK client's name as the server gave it (``rtgen``, ``rtgen-01``, ...).
    """

    def __init__(self, rt: Any, data: int, client: int, output: bool, client_name: str) -> None:
        self._rt = rt
        self._data = data
        self._client = client
        self._output = output
        self._ring = _pointer(data + _BUFF) if output else 0
        self.client_name = client_name
        self._gil = _load_libjack_gil()
        self._last_read = -1
        self._progress_at = 0.0

    @classmethod
    def of(cls, rt: Any) -> RtmidiJack | None:
        """The JACK internals of ``rt`` (an open rtmidi MidiIn/MidiOut), or None when they cannot be trusted."""
        if not _layout_known():
            return None
        try:
            if rt.get_current_api() != rtmidi.API_UNIX_JACK:
                return None
            lib = load_libjack()
        except (PortError, AttributeError, rtmidi.RtMidiError):
            return None
        this = _pointer(id(rt) + _THISPTR_OFFSET)
        api = _pointer(this + _RTAPI_OFFSET) if this else 0
        data = _pointer(api + _APIDATA_OFFSET) if api else 0
        client = _pointer(data + _CLIENT) if data else 0
        if not client:
            return None
        raw_name = lib.jack_get_client_name(client)
        if not raw_name:
            return None
        name = raw_name.decode(errors="replace")
        port = _pointer(data + _PORT)
        if port:
            port_name = lib.jack_port_name(port) or b""
            if not port_name.decode(errors="replace").startswith(name + ":"):
                log.debug("rtmidi's JACK data does not look as expected (port %r of client %r)", port_name, name)
                return None
        output = isinstance(rt, rtmidi.MidiOut)
        if output:
            ring = _pointer(data + _BUFF)
            max_write = ctypes.c_int.from_address(data + _MAX_WRITE).value
            if not ring or max_write <= 0 or lib.jack_ringbuffer_write_space(ring) > max_write:
                log.debug("rtmidi's JACK ring buffer does not look as expected (max write %d)", max_write)
                return None
        return cls(rt, data, client, output, name)

    def period_ns(self) -> int:
        """The server's period (buffer size over sample rate) in nanoseconds; 0 for a closed client."""
        if not self._client:
            return 0
        lib = load_libjack()
        rate = int(lib.jack_get_sample_rate(self._client))
        return int(lib.jack_get_buffer_size(self._client)) * 1_000_000_000 // rate if rate > 0 else 0

    def room(self) -> int:
        """Bytes the ring buffer can take now (0 for an input or a closed client): a send needs its length + 4."""
        ring = self._ring
        return int(self._gil.jack_ringbuffer_write_space(ring)) if ring and self._client else 0

    def waiting_s(self, now: float) -> float:
        """How long (monotonic seconds) messages have waited in the ring buffer with none taken; 0 if it moves.

        Measured between calls: the server's progress is seen at each call (the supervisor polls).
        """
        ring = self._ring
        if not ring or not self._client:
            return 0.0
        read = ctypes.c_size_t.from_address(ring + _RING_READ_PTR).value
        if read != self._last_read or not self._gil.jack_ringbuffer_read_space(ring):
            self._last_read = read
            self._progress_at = now
            return 0.0
        return max(0.0, now - self._progress_at)

    def futex_is_current(self) -> bool | None:
        """Does this client wait on the futex the server signals? None when that cannot be told here.

        libjack maps ``/dev/shm/jack_sem.<uid>_<server>_<client>``; a client that inherited a
        departed client's table entry has no mapping of its own file (see the module docstring).
        """
        server = os.environ.get("JACK_DEFAULT_SERVER") or "default"
        path = f"/dev/shm/jack_sem.{os.getuid()}_{server}_{self.client_name}"
        try:
            inode = os.stat(path).st_ino
            maps = Path("/proc/self/maps").read_text(errors="replace")
        except OSError:
            return None
        for line in maps.splitlines():
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5] == path:
                return int(fields[4]) == inode
        return False

    def wake_pending(self) -> bool | None:
        """Is this client's wake-up signalled but not taken? None when that cannot be told here.

        The server (or the client before ours in the graph) wakes a client each cycle by setting the futex in
        ``/dev/shm/jack_sem.<uid>_<server>_<client>`` to 1; the client's process thread takes it back to 0
        within microseconds. A client whose thread waits on another futex (a departed client's, see the module
        docstring), or whose thread died or sleeps on a futex unmapped under it, never takes it: the value stays
        1 for good. Read from outside the client (one ``pread``), so it tells what :meth:`futex_is_current`
        cannot: libjack's table can be right again while the thread still sleeps on the departed client's futex.
        """
        if not self._client:
            return None
        server = os.environ.get("JACK_DEFAULT_SERVER") or "default"
        try:
            fd = os.open(f"/dev/shm/jack_sem.{os.getuid()}_{server}_{self.client_name}", os.O_RDONLY)
        except OSError:
            return None
        try:
            raw = os.pread(fd, 4, 0)  # jack2's FutexData {int futex; ...}
        except OSError:
            return None
        finally:
            os.close(fd)
        return len(raw) == 4 and int.from_bytes(raw, "little", signed=True) != 0

    def connections(self) -> list[str]:
        """Full names of the ports connected to this client's port (read from the server's graph)."""
        port = _pointer(self._data + _PORT) if self._client else 0
        if not port:
            return []
        lib = load_libjack()
        names = lib.jack_port_get_all_connections(self._client, port)
        if not names:
            return []
        found = []
        for i in itertools.count():
            if not names[i]:
                break
            found.append(names[i].decode(errors="replace"))
        lib.jack_free(ctypes.cast(names, ctypes.c_void_p))
        return found

    def connect(self, peers: list[str]) -> list[str]:
        """Connect this client's port to ``peers`` (the sources of an input, the destinations of an output); the
        ones that failed (a peer gone meanwhile)."""
        port = _pointer(self._data + _PORT) if self._client else 0
        if not port:
            return list(peers)
        lib = load_libjack()
        own = lib.jack_port_name(port)
        failed = []
        for peer in peers:
            src, dst = (own, peer.encode()) if self._output else (peer.encode(), own)
            if lib.jack_connect(self._client, src, dst) not in (0, errno.EEXIST):
                failed.append(peer)
        return failed

    def close(self) -> None:
        """Close the port and the client through ctypes (the GIL released), then let python-rtmidi free the rest.

        Safe on a dead server and on a stuck graph: whatever libjack waits for, the other threads run.
        """
        client, data = self._client, self._data
        self._client = 0
        if client:
            lib = load_libjack()
            if self._output:
                close_port = _close_port_symbol()
                this = _pointer(id(self._rt) + _THISPTR_OFFSET)
                if close_port is not None and this:
                    close_port(this)  # waits up to a second for the process callback: GIL released
            port = _pointer(data + _PORT)
            if port:
                lib.jack_port_unregister(client, port)
                ctypes.c_void_p.from_address(data + _PORT).value = None
            lib.jack_client_close(client)
            ctypes.c_void_p.from_address(data + _CLIENT).value = None  # RtMidi's destructor closes nothing now
        rt, self._rt = self._rt, None
        close_client(rt)


def close_client(client: Any) -> None:
    """Close an rtmidi MidiIn/MidiOut and free it (errors of a dead server are logged, not raised)."""
    if client is None:
        return
    try:
        if hasattr(client, "cancel_callback"):
            client.cancel_callback()
        client.close_port()
    except Exception as err:
        log.debug("closing a MIDI client failed: %s", err)
    finally:
        client.delete()
