"""One Ableton Link session, run inside a network namespace with loopback alone (``tests/test_link.py``).

Not a test module: ``test_link.py`` runs ``python tests/link_scenario.py OUT.json SCENARIO`` under
``unshare --net`` after ``ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo``.
In there it starts:

* a real-time JACK server of its own (``jackd -R -P 70 -d dummy -r 48000 -p 256``, see
  :class:`rtgen.bench.harness.JackServer`);
* a second, real Link peer in this process (the same ``linkpython-extern`` binding): start/stop sync
  on, 120 BPM; it starts the transport on a bar line, sets 97 BPM two bars later, plays four bars
  more and stops;
* ``rtgen run --clock link`` (a subprocess) with its MIDI output recorded by a JACK client in this
  process (:class:`StampingRecorder`: every event at its JACK frame time, put on ``perf_counter``);
* after the stop, ``/rtgen/tempo 133`` over OSC to the daemon, and the peer watches its session.

That is scenario ``follow``. In scenario ``lead`` the peer only watches: ``/rtgen/play`` over OSC must
start the session's transport (rtgen plays from its first bar line), ``/rtgen/stop`` must stop it.

Every time is put on Link's clock (µs): the peer's beat times natively; the recorded events from
their JACK frame times through ``perf_counter`` and the same sandwich measurement against Link's clock
that rtgen itself uses (:class:`rtgen.timing.link.ClockMap`). The result is
a JSON file; ``test_link.py`` judges it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import link  # noqa: E402
import numpy as np  # noqa: E402
from pythonosc.osc_message import OscMessage  # noqa: E402
from pythonosc.osc_message_builder import OscMessageBuilder  # noqa: E402
from pythonosc.udp_client import SimpleUDPClient  # noqa: E402

from rtgen.bench.harness import JackRecorder, JackServer, daemon_command, daemon_env  # noqa: E402
from rtgen.bench.measure import cpu_seconds  # noqa: E402
from rtgen.timing.link import ClockMap  # noqa: E402

QUANTUM = 4.0
FIRST_BPM = 120.0
SECOND_BPM = 97.0
PROPOSED_BPM = 133.0
BARS_FIRST = 2
BARS_SECOND = 4
OSC_PORT = 9000  # the namespace has its own ports: nothing else listens here


class Peer:
    """The second Link peer, and a thread that writes down the time of every beat on Link's clock.

    A beat's time is taken from the last capture before the beat (every 10 ms), so a tempo change is
    reflected in every beat after it.
    """

    def __init__(self, bpm: float) -> None:
        self.link = link.Link(bpm)
        self.link.startStopSyncEnabled = True
        self.link.enabled = True
        self.clock = self.link.clock()
        self.beats: dict[int, int] = {}  # beat -> Link µs
        self.tempi: list[tuple[int, float]] = []  # (Link µs, tempo) whenever it changed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last_tempo = 0.0
        while not self._stop.is_set():
            now = self.clock.micros()
            state = self.link.captureSessionState()
            tempo = state.tempo()
            if tempo != last_tempo:
                self.tempi.append((now, tempo))
                last_tempo = tempo
            if state.isPlaying():
                b = math.ceil(state.beatAtTime(now, QUANTUM))
                for beat in (b, b + 1):
                    self.beats[beat] = int(state.timeAtBeat(float(beat), QUANTUM))
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.link.enabled = False


def main(out_path: Path, scenario: str) -> int:
    """Set up the namespace's session, run ``scenario`` (``follow`` or ``lead``), write the result."""
    tmp = Path(tempfile.mkdtemp(prefix="rtgen-link-"))
    name = f"rtgen-link-{os.getpid()}"
    client = f"rtgen-link-{os.getpid()}"
    result: dict[str, Any] = {"errors": [], "scenario": scenario}
    server = JackServer(name, log_dir=tmp, realtime=True, sync=False).start()
    result["jack_mode"] = server.mode
    peer = Peer(FIRST_BPM)
    rec: StampingRecorder | None = None
    daemon: subprocess.Popen[bytes] | None = None
    log_path = tmp / "daemon.log"
    try:
        rec = StampingRecorder(name, f"{client}-rec")
        config = tmp / "daemon.toml"
        config.write_text(f'[midi]\nclient_name = "{client}"\n')
        env = daemon_env(name)
        cmd = [
            *daemon_command("run"), "--config", str(config), "--model",
            str(REPO / "exported_models" / "default"), "--backend", "jack", "--no-synth", "--no-input",
            "--clock", "link", "--tempo", str(FIRST_BPM), "--osc-port", str(OSC_PORT),
            "--duration", "60", "--record", str(tmp / "daemon.mid"),
        ]  # fmt: skip
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 25
        port = None
        while port is None:
            ports = [p for p in rec.midi_output_ports() if p.startswith(f"{client}:")]
            port = ports[0] if ports else None
            if port is None:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon's output port did not appear (exit {daemon.poll()})")
                time.sleep(0.05)
        rec.client.connect(port, rec.port_name)
        deadline = time.monotonic() + 10
        while peer.link.numPeers() < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not join the peer's Link session")
            time.sleep(0.02)
        time.sleep(0.3)  # rtgen's first captures
        result["joined_us"] = peer.clock.micros()
        if scenario == "follow":
            _follow(peer, result)
        else:
            _lead(peer, result, daemon.pid)
        result["daemon_alive_before_sigterm"] = daemon.poll() is None
        daemon.send_signal(signal.SIGTERM)
        try:
            result["daemon_exit"] = daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            result["daemon_exit"] = "killed"
        time.sleep(0.3)
        result["events"], result["xruns_us"] = _events_on_link_clock(rec, peer)
        result["beats"] = sorted(peer.beats.items())
        result["tempi"] = peer.tempi
        result["jack_period_us"] = rec.period * 1e6 / rec.rate
        result["jack_xruns"] = server.xruns()
        result["daemon_record_sounding"] = _sounding_in_recording(tmp / "daemon.mid")
        result["daemon_record_tempi"] = _tempi_in_recording(tmp / "daemon.mid")
        result["daemon_record_onsets"] = _onsets_in_recording(tmp / "daemon.mid")
    except Exception as err:  # reported to the test with the daemon's log
        result["errors"].append(f"{type(err).__name__}: {err}")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(5)
        result["daemon_log"] = log_path.read_text(errors="replace")[-6000:] if log_path.exists() else ""
        if rec is not None:
            rec.close()
        peer.close()
        server.close()
    out_path.write_text(json.dumps(result))
    return 0


def _sounding_in_recording(path: Path) -> list[list[int]] | None:
    """(channel, pitch) left sounding in the daemon's own ``--record`` file, counting real note-offs: beside
    the JACK recorder's, it tells a note-off rtgen never sent from one lost on the way (None: no file)."""
    import mido

    from rtgen.bench.harness import sounding_notes

    if not path.exists():
        return None
    messages = [tuple(m.bytes()) for m in mido.merge_tracks(mido.MidiFile(path).tracks) if not m.is_meta]
    return [list(key) for key in sorted(sounding_notes(messages))]


def _tempi_in_recording(path: Path) -> list[float] | None:
    """The tempo map of the daemon's ``--record`` file, in BPM (None: no file)."""
    import mido

    if not path.exists():
        return None
    return [round(mido.tempo2bpm(m.tempo), 3) for m in mido.MidiFile(path).tracks[0] if m.type == "set_tempo"]


def _onsets_in_recording(path: Path) -> tuple[int, list[int]] | None:
    """The ticks per beat and the absolute tick of every note-on of the daemon's ``--record`` file (None: no file)."""
    import mido

    if not path.exists():
        return None
    mid = mido.MidiFile(path)
    onsets: list[int] = []
    for track in mid.tracks:
        tick = 0
        for m in track:
            tick += m.time
            if m.type == "note_on" and m.velocity > 0:
                onsets.append(tick)
    return mid.ticks_per_beat, sorted(onsets)


def _first_bar_at_or_after(peer: Peer, t_us: int) -> int:
    state = peer.link.captureSessionState()
    bar = math.ceil(state.beatAtTime(t_us, QUANTUM) / QUANTUM - 1e-9) * QUANTUM
    return int(state.timeAtBeat(bar, QUANTUM))


def _follow(peer: Peer, result: dict[str, Any]) -> None:
    """The peer leads: start on a bar line, 120 then 97 BPM, stop; then rtgen proposes a tempo."""
    # beat 0 half a second ahead: with rtgen in the session Link maps it to the next bar line after that
    state = peer.link.captureSessionState()
    start_us = peer.clock.micros() + 500_000
    state.setIsPlayingAndRequestBeatAtTime(True, start_us, 0.0, QUANTUM)
    peer.link.commitSessionState(state)
    result["start_us"] = start_us
    first_bar = _first_bar_at_or_after(peer, start_us)
    result["first_bar_us"] = first_bar
    _sleep_until_us(peer, first_bar + int(BARS_FIRST * QUANTUM * 60e6 / FIRST_BPM))
    state = peer.link.captureSessionState()
    now = peer.clock.micros()
    state.setTempo(SECOND_BPM, now)
    peer.link.commitSessionState(state)
    result["tempo_change_us"] = now
    _sleep_until_us(peer, now + int(BARS_SECOND * QUANTUM * 60e6 / SECOND_BPM))
    result["status_playing"] = _status()
    state = peer.link.captureSessionState()
    now = peer.clock.micros()
    state.setIsPlaying(False, now)
    peer.link.commitSessionState(state)
    result["stop_us"] = now
    time.sleep(1.5)  # every note-off is out by now
    result["status_stopped"] = _status()

    osc = SimpleUDPClient("127.0.0.1", OSC_PORT)
    sent = peer.clock.micros()
    osc.send_message("/rtgen/tempo", [PROPOSED_BPM])
    seen = _wait_for(peer, lambda s: abs(s.tempo() - PROPOSED_BPM) < 0.01, 3.0)
    result["proposed_tempo_seen_ms"] = None if seen is None else (seen - sent) / 1000


def _lead(peer: Peer, result: dict[str, Any], pid: int) -> None:
    """rtgen leads: ``/rtgen/play`` starts the session, ``/rtgen/stop`` stops it."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(1.0)  # the session is stopped: rtgen must be silent, and idle
    result["stopped_cpu_percent"] = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    osc = SimpleUDPClient("127.0.0.1", OSC_PORT)
    result["play_sent_us"] = peer.clock.micros()
    osc.send_message("/rtgen/play", [])
    seen = _wait_for(peer, lambda s: s.isPlaying(), 2.0)
    if seen is None:
        raise RuntimeError("/rtgen/play did not start the session")
    result["play_seen_us"] = seen
    start_us = int(peer.link.captureSessionState().timeForIsPlaying())
    result["start_us"] = start_us
    result["first_bar_us"] = _first_bar_at_or_after(peer, start_us)
    _sleep_until_us(peer, result["first_bar_us"] + int(BARS_FIRST * QUANTUM * 60e6 / FIRST_BPM))
    result["stop_sent_us"] = peer.clock.micros()
    osc.send_message("/rtgen/stop", [])
    seen = _wait_for(peer, lambda s: not s.isPlaying(), 2.0)
    if seen is None:
        raise RuntimeError("/rtgen/stop did not stop the session")
    result["stop_seen_us"] = seen
    result["stop_us"] = int(peer.link.captureSessionState().timeForIsPlaying())
    time.sleep(1.0)
    result["status_stopped"] = _status()


def _status(timeout: float = 2.0) -> dict[str, Any] | None:
    """The daemon's ``/rtgen/status`` (its JSON reply), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(OscMessageBuilder("/rtgen/status").build().dgram, ("127.0.0.1", OSC_PORT))
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            return None
    msg = OscMessage(data)
    return json.loads(msg.params[0]) if msg.address == "/rtgen/status" else None


def _sleep_until_us(peer: Peer, t_us: int) -> None:
    while (left := t_us - peer.clock.micros()) > 0:
        time.sleep(min(left, 50_000) / 1e6)


def _wait_for(peer: Peer, predicate: Any, timeout: float) -> int | None:
    """Link time at which ``predicate(session state)`` first held, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(peer.link.captureSessionState()):
            return int(peer.clock.micros())
        time.sleep(0.002)
    return None


class StampingRecorder(JackRecorder):
    """:class:`JackRecorder` that also reads JACK's frame clock against ``perf_counter_ns`` every cycle.

    Each process callback takes a sandwich: ``perf_counter``, ``frame_time`` (JACK's estimate of the frame
    being played now), ``perf_counter``. A callback that lost the GIL or the CPU inside it gives a wide one and
    is not used; an event's frame is put on ``perf_counter`` through the narrow sandwich nearest to it (well
    under a second away: the two clocks' rates differ by parts per million). JACK-Client has no
    ``jack_frames_to_time``; this is the same map.
    """

    def __init__(self, server: str, name: str) -> None:
        self.samples: list[tuple[int, int, int]] = []  # (frame_time, perf ns before, perf ns after)
        super().__init__(server, name)

    def process(self, frames: int) -> None:
        t0 = time.perf_counter_ns()
        now_frame = self.client.frame_time
        t1 = time.perf_counter_ns()
        self.samples.append((now_frame, t0, t1))
        super().process(frames)

    def stamped(self) -> list[tuple[int, bytes]]:
        """Every event as ``(perf_counter_ns, message)``."""
        samples = np.array(list(self.samples), dtype=np.int64)  # list(): one step, while the callback appends
        events = list(self.events)
        width = samples[:, 2] - samples[:, 1]
        narrow = samples[width <= max(50_000, 2 * int(np.median(width)))]
        frames = narrow[:, 0]
        mids = (narrow[:, 1] + narrow[:, 2]) // 2
        out = []
        for frame, msg in events:
            i = int(np.searchsorted(frames, frame))
            j = min((k for k in (i - 1, i) if 0 <= k < frames.size), key=lambda k: abs(int(frames[k]) - frame))
            out.append((int(mids[j]) + round((frame - int(frames[j])) * 1e9 / self.rate), msg))
        return out


def _events_on_link_clock(rec: StampingRecorder, peer: Peer) -> tuple[list[tuple[float, list[int]]], list[float]]:
    """Every recorded event, and the time of every xrun the server reported, on Link's clock (µs, fractional),
    through the sandwich map rtgen uses itself."""
    offset = ClockMap(peer.clock.micros, time.perf_counter_ns, tries=5).offset_ns
    events = [((t + offset) / 1000, list(msg)) for t, msg in rec.stamped()]
    return events, [(t + offset) / 1000 for t in rec.xruns_ns]


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "follow"))
