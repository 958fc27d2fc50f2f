"""jackd2's registry: the slots of dead servers are freed, live ones are kept."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

from rtgen.io.jackshm import _SERVER_LEN, _SERVERS_AT, MAGIC, MAX_SERVERS, reclaim_dead_servers, registered_servers


def _registry(path: Path, servers: list[tuple[int, bytes]]) -> None:
    hdr = struct.pack("<IHHIIII", MAGIC, 0, 0, 1, 70744, _SERVERS_AT + MAX_SERVERS * _SERVER_LEN, 268)
    body = bytearray(MAX_SERVERS * _SERVER_LEN)
    for i, (pid, name) in enumerate(servers):
        struct.pack_into("<i", body, i * _SERVER_LEN, pid)
        body[i * _SERVER_LEN + 4 : i * _SERVER_LEN + 4 + len(name)] = name
    path.write_bytes(hdr + bytes(body) + bytes(4096))


def test_dead_servers_slots_are_freed_and_live_ones_kept(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    reg = tmp_path / "jack-shm-registry"
    _registry(reg, [(dead, b"jack-0:rtgen-test-1:"), (os.getpid(), b"jack-0:live:"), (dead, b"jack-0:other:")])
    before = reg.read_bytes()
    assert [(n, alive) for _, n, alive in registered_servers(reg)] == [
        ("jack-0:rtgen-test-1:", False), ("jack-0:live:", True), ("jack-0:other:", False)
    ]  # fmt: skip
    assert reclaim_dead_servers(reg) == 2
    assert registered_servers(reg) == [(os.getpid(), "jack-0:live:", True)]
    after = reg.read_bytes()
    assert len(after) == len(before) and after[:_SERVERS_AT] == before[:_SERVERS_AT]  # header untouched
    assert after[_SERVERS_AT + MAX_SERVERS * _SERVER_LEN :] == before[_SERVERS_AT + MAX_SERVERS * _SERVER_LEN :]


def test_a_file_that_is_not_a_registry_is_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"\0" * 4096)
    assert reclaim_dead_servers(other) == 0 and registered_servers(other) == []
    assert reclaim_dead_servers(tmp_path / "missing") == 0
