"""The soak: the real daemon for half an hour through every mode, steered and played to, watched.

``python -m rtgen.bench.soak --minutes 30 --json out/soak.json`` (``make soak``) starts its own real-time
JACK server, a JACK recorder (the daemon's output, with JACK frame times), a player (an rtmidi
client on the daemon's input: two bars of a melody over a held triad, then two bars of rest, so that
every mode has something to follow and answer), and the daemon at 200 BPM with OSC. The mode
changes in turn (autonomous, accompany, improvise, call-and-response, band: each for a fifth of the
run); every second a random OSC change (temperature, top-p, density, key, instrument, volume,
pan); every 10 s a ``/rtgen/status`` and a reading of the daemon's private memory.

Figures: private-memory growth (the median of the last fifth of the readings minus that of the
first fifth after the first minute; target <= 5 MB), late steps and
the largest lateness, dropped notes, stuck notes after the daemon stops (real note-offs only, the
target is 0) and the drift of the onsets against the wall clock (target <= 1 ms): the median
deviation from the nominal grid over the last minute minus that of the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtgen.bench.harness import DaemonProcess, JackRecorder, JackServer, is_note_on, jack_clients_env, track_notes
from rtgen.bench.measure import free_udp_port, machine, process_private_mb
from rtgen.bench.oscload import OscLoad
from rtgen.config import MODES
from rtgen.errors import RtgenError
from rtgen.midi.messages import CHANNEL_MASK, KIND_MASK, NOTE_OFF, NOTE_ON

KEYS = ("off", "C major", "G major", "D major", "A minor", "E minor", "F major")
MELODY = (72, 74, 76, 77, 79, 77, 76, 74)
TRIAD = (48, 52, 55)


class _Player:
    """Plays into the daemon's input from a thread: a melody over a held triad, two bars on, two off.

    Its JACK client opens (and closes) while no Python JACK callback of this process is active: rtmidi
    holds the GIL while it waits for the server, the recorder's callback needs it, and a synchronous server
    waits for that callback until its timeout; the recorder then loses a cycle and reads the next one twice
    (seen as stuck notes in its count that the daemon never left). Connect it with :meth:`start`.
    """

    def __init__(self, server: str, tempo: float) -> None:
        import rtmidi

        from rtgen.io.ports import captured_stderr

        name = f"{server}-player"
        with captured_stderr():
            self.out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
        self.out.open_virtual_port("out")
        self.port_name = f"{name}:out"
        self.beat_s = 60.0 / tempo
        self.notes_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="soak-player", daemon=True)

    def start(self) -> None:
        """Start playing (connect :attr:`port_name` first)."""
        self._thread.start()

    def _play(self) -> None:
        beat = 0
        t0 = time.perf_counter()
        while not self._stop.is_set():
            in_bar = beat % 16  # four bars of four beats: play the first two
            if in_bar == 0:
                for p in TRIAD:
                    self.out.send_message([NOTE_ON, p, 70])
            if in_bar < 8:
                pitch = MELODY[in_bar % len(MELODY)]
                self.out.send_message([NOTE_ON, pitch, 90])
                self.notes_sent += 1
            if in_bar == 8:
                for p in TRIAD:
                    self.out.send_message([NOTE_OFF, p, 0])
            beat += 1
            wait = t0 + beat * self.beat_s - time.perf_counter() - self.beat_s / 2
            if wait > 0 and self._stop.wait(wait) and in_bar < 8:
                self.out.send_message([NOTE_OFF, pitch, 0])
                break
            if in_bar < 8:
                self.out.send_message([NOTE_OFF, pitch, 0])
            wait = t0 + beat * self.beat_s - time.perf_counter()
            if wait > 0 and self._stop.wait(wait):
                break
        for p in TRIAD:
            self.out.send_message([NOTE_OFF, p, 0])

    def stop(self) -> None:
        """Stop playing (every note of the player released)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def close(self) -> None:
        """Close the port and the client (after the recorder has closed: see the class docstring)."""
        self.stop()
        self.out.close_port()
        self.out.delete()


def _random_change(load: OscLoad, rng: np.random.Generator) -> None:
    kind = int(rng.integers(7))
    part = str(rng.choice(("melody", "chords", "bass")))
    msgs = [
        ("/rtgen/temperature", float(rng.uniform(0.5, 1.4))),
        ("/rtgen/top_p", float(rng.uniform(0.7, 1.0))),
        ("/rtgen/density", float(rng.uniform(0.5, 2.0))),
        ("/rtgen/key", str(rng.choice(KEYS))),
        ("/rtgen/instrument", part, int(rng.integers(0, 128))),
        ("/rtgen/volume", part, float(rng.uniform(0.4, 1.0))),
        ("/rtgen/pan", part, float(rng.uniform(-1, 1))),
    ]
    address, *args = msgs[kind]
    load.send(str(address), *args)


def drift_us(arrivals_ns: np.ndarray, step_ns: float, edge_s: float = 60.0) -> float:
    """Median deviation from the nominal grid (from the first onset) at the end minus at the start, in µs."""
    t = arrivals_ns.astype(np.float64)
    k = np.round((t - t[0]) / step_ns)
    dev = t - t[0] - k * step_ns
    first = dev[t - t[0] <= edge_s * 1e9]
    last = dev[t[-1] - t <= edge_s * 1e9]
    return float(np.median(last) - np.median(first)) / 1000


def soak(model_dir: Path, minutes: float = 30.0, tempo: float = 200.0, seed: int = 0) -> dict[str, Any]:
    """Run the soak (see the module docstring) and return its figures."""
    seconds = minutes * 60.0
    name = f"rtgen-soak-{os.getpid()}"
    rng = np.random.default_rng(seed)
    port = free_udp_port()
    result: dict[str, Any] = {"minutes": minutes, "tempo": tempo, "modes": list(MODES), "model": str(model_dir)}
    memory: list[tuple[float, float]] = []
    statuses: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rtgen-soak-") as tmp:
        # synchronous: a client that misses a cycle on a loaded machine must not lose MIDI (the stuck-note count)
        server = JackServer(name, log_dir=Path(tmp), realtime=True, sync=True)
        server.start()
        result["jack_mode"] = server.mode
        try:
            with jack_clients_env(name):
                player = _Player(name, tempo)  # before the recorder's callback is active: see _Player
            recorder = JackRecorder(name, f"{name}-rec")
            try:
                args = (
                    "--no-synth", "--mode", MODES[0], "--clock", "internal", "--quiet", "--tempo", str(tempo),
                    "--midi-out", recorder.port_name, "--osc-port", str(port),
                )  # fmt: skip
                daemon = DaemonProcess(name, model_dir, f"{name}-daemon", Path(tmp), seconds + 120, args)
                load = OscLoad(port, 1.0, seed)
                try:
                    daemon.wait_first_note(recorder, 60)
                    target = daemon.find_port("in", 30, lambda: [p.name for p in recorder.client.get_ports()])
                    recorder.client.connect(player.port_name, target)  # cffi lets the GIL go while it waits
                    player.start()
                    wall0, mono0 = time.time_ns(), time.perf_counter_ns()
                    t0 = time.monotonic()
                    mode_i = 0
                    next_status = 0.0
                    while (elapsed := time.monotonic() - t0) < seconds:
                        want = min(len(MODES) - 1, int(elapsed / (seconds / len(MODES))))
                        if want != mode_i:
                            mode_i = want
                            load.send("/rtgen/mode", MODES[mode_i])
                        _random_change(load, rng)
                        if elapsed >= next_status:
                            next_status += 10.0
                            memory.append((round(elapsed, 1), process_private_mb(daemon.proc.pid)))
                            status = load.status()
                            statuses.append({k: status[k] for k in ("steps", "late_steps", "max_late_us", "mode")})
                        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - elapsed)))
                    final = load.status()
                    wall1, mono1 = time.time_ns(), time.perf_counter_ns()
                finally:
                    player.stop()
                    load.close()
                    result["daemon_exit_code"] = daemon.stop(60)
                    time.sleep(0.5)  # the last note-offs on their way through JACK
            finally:
                recorder.close()
                player.close()
            result["jack_xruns"] = server.xruns()
        finally:
            server.close()
    book = track_notes(m for _, m in recorder.events)
    ons = [a for (_, m), a in zip(recorder.events, recorder.arrivals_ns, strict=True) if is_note_on(m)]
    arrivals = np.unique(np.array(ons, dtype=np.int64))
    step_ns = 60e9 / (tempo * 4)
    # medians of the first and last fifth after the warm-up minute: a transient allocation (a soundfont-less
    # status burst, a malloc arena of a new thread) is not a leak; growth that stays is
    steady = [m for t, m in memory if t >= 60.0] or [m for _, m in memory]
    fifth = max(1, len(steady) // 5)
    start_mb = float(np.median(steady[:fifth])) if steady else None
    end_mb = float(np.median(steady[-fifth:])) if steady else None
    result.update(
        uss_mb_first_minute=start_mb,
        uss_mb_end=end_mb,
        uss_mb_max=max(steady) if steady else None,
        uss_growth_mb=round(end_mb - start_mb, 1) if start_mb is not None and end_mb is not None else None,
        memory_mb=memory,
        steps=final["steps"],
        late_steps=final["late_steps"],
        max_late_us=final["max_late_us"],
        dropped_late_notes=final.get("dropped_late_notes"),
        skipped_steps=final.get("skipped_steps"),
        engine_errors=final["engine_errors"],
        osc_errors=final["osc_errors"],
        note_ons=len(ons),
        player_notes=player.notes_sent,
        stuck_notes=book.count(),
        stuck=[list(n) for n in book.notes()],
        stuck_history={  # the last messages of each stuck key, (frame, hex): what a fix needs to see
            f"{ch}:{pitch}": [
                (f, m.hex())
                for f, m in recorder.events
                if len(m) == 3
                and m[0] & CHANNEL_MASK == ch
                and m[1] == pitch
                and m[0] & KIND_MASK in (NOTE_OFF, NOTE_ON)
            ][-6:]
            for ch, pitch in book.notes()
        },
        drift_us=round(drift_us(arrivals, step_ns), 1) if arrivals.size > 10 else None,
        monotonic_vs_wall_clock_us=round(((mono1 - mono0) - (wall1 - wall0)) / 1000, 1),
        statuses=statuses,
        targets={"uss_growth_mb": 5.0, "stuck_notes": 0, "drift_us": 1000.0},
        machine=machine(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m rtgen.bench.soak``: run the soak, print a summary, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m rtgen.bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length (default 30)")
    parser.add_argument("--tempo", type=float, default=200.0, help="BPM (default 200)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--json", type=Path, default=Path("out/soak.json"), help="where the figures go")
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        from rtgen.config import default_config_path, load_config

        model = load_config(default_config_path()).model_path
    try:
        result = soak(Path(model), args.minutes, args.tempo)
    except RtgenError as err:
        print(f"rtgen soak: error: {err}", file=sys.stderr)
        return 2
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"rtgen soak: {result['minutes']} min at {result['tempo']} BPM, {result['steps']} steps; "
        f"memory {result['uss_mb_first_minute']} -> {result['uss_mb_end']} MB (growth {result['uss_growth_mb']} MB); "
        f"late steps {result['late_steps']} (max {result['max_late_us']:.0f} us), dropped notes "
        f"{result['dropped_late_notes']}; stuck notes {result['stuck_notes']}; drift {result['drift_us']} us; "
        f"wrote {args.json}"
    )
    return 0 if result["stuck_notes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
