"""jackd2's server registry: free the slots of servers that died without unregistering.

jackd2 keeps at most 8 servers in ``/dev/shm/jack-shm-registry``. A server killed before it
unregisters leaves its slot taken, and jackd2 only reclaims a dead server's slot for a new server
of the *same name*: after eight such deaths no server starts ("Too many servers already active").
Test suites and benchmarks name their servers uniquely, so they free dead slots themselves.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from pathlib import Path

REGISTRY = Path("/dev/shm/jack-shm-registry")
MAGIC = 0x4A41434B  # "JACK"
MAX_SERVERS = 8
_SERVERS_AT = 24  # after magic, protocol, type, size, hdr_len, entry_len
_SERVER_LEN = 264  # pid_t + the server's name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def registered_servers(registry: Path = REGISTRY) -> list[tuple[int, str, bool]]:
    """``(pid, name, alive)`` of every taken slot."""
    try:
        data = registry.read_bytes()
    except OSError:
        return []
    if len(data) < _SERVERS_AT + MAX_SERVERS * _SERVER_LEN or struct.unpack_from("<I", data)[0] != MAGIC:
        return []
    out = []
    for i in range(MAX_SERVERS):
        off = _SERVERS_AT + i * _SERVER_LEN
        pid = struct.unpack_from("<i", data, off)[0]
        if pid > 0:
            name = data[off + 4 : off + _SERVER_LEN].split(b"\0", 1)[0].decode(errors="replace")
            out.append((pid, name, _alive(pid)))
    return out


def reclaim_dead_servers(registry: Path = REGISTRY) -> int:
    """Free the slots of servers whose process is gone; returns how many were freed.

    Only slots of dead processes are touched (a registering server only takes free slots), so this is
    safe beside running servers.
    """
    freed = 0
    with contextlib.suppress(OSError, ValueError), registry.open("r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        if len(m) < _SERVERS_AT + MAX_SERVERS * _SERVER_LEN or struct.unpack_from("<I", m)[0] != MAGIC:
            return 0
        for i in range(MAX_SERVERS):
            off = _SERVERS_AT + i * _SERVER_LEN
            pid = struct.unpack_from("<i", m, off)[0]
            if pid > 0 and not _alive(pid):
                m[off : off + _SERVER_LEN] = bytes(_SERVER_LEN)
                freed += 1
    return freed
