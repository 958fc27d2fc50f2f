"""``rtgen render``: generate a few bars offline to a MIDI file (and optionally WAV audio and a piano roll)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rtgen.config import Config, default_config_path, load_config


def register(subparsers: Any) -> None:
    """Add the ``render`` subcommand."""
    p = subparsers.add_parser(
        "render",
        help="generate N bars offline to .mid (and .wav / .png)",
        description="Generate melody, chords and bass offline with the same engine and voicing as `rtgen run`. "
        "The same seed gives a byte-identical .mid. Options override config.toml.",
    )
    p.add_argument("--bars", type=int, default=16, metavar="N", help="bars to generate (default 16)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.mid", help="MIDI file to write")
    p.add_argument("--wav", type=Path, metavar="FILE.wav", help="also render audio through FluidSynth")
    p.add_argument("--png", type=Path, metavar="FILE.png", help="also draw a piano roll")
    p.add_argument("--model", type=Path, metavar="DIR", help="model folder (config: model.path)")
    p.add_argument("--config", type=Path, metavar="PATH", help="config file (default: ./config.toml if present)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (config: generation.seed)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (generation.temperature)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass (generation.top_p)")
    p.add_argument("--tempo", type=float, metavar="BPM", help="tempo (config: generation.tempo)")
    p.add_argument("--key", metavar="KEY", help='key/scale lock, e.g. "D major" or "off" (generation.key)')
    p.add_argument("--time-signature", metavar="N/D", help="meter such as 3/4 (generation.time_signature)")
    p.add_argument("--density", type=float, metavar="D", help="note density 0..4 (generation.density)")
    p.add_argument("--swing", type=float, metavar="S", help="swing 0..0.75 (generation.swing)")
    p.add_argument("--humanize", type=float, metavar="MS", help="timing spread in ms (generation.humanize_ms)")
    p.add_argument("--soundfont", metavar="PATH", help="a .sf2 soundfont for --wav (config: synth.soundfont)")
    p.add_argument("--prime", type=Path, metavar="FILE.mid", help="continue this MIDI file (it is included)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Config:
    """The config file with the command-line options applied (validated key by key)."""
    cfg = load_config(args.config if args.config is not None else default_config_path())
    if args.model is not None:
        cfg = cfg.replace("model", path=Path(args.model).expanduser().resolve())
    gen = {
        "seed": args.seed,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "tempo": args.tempo,
        "key": args.key,
        "time_signature": args.time_signature,
        "density": args.density,
        "swing": args.swing,
        "humanize_ms": args.humanize,
    }
    changes = {k: v for k, v in gen.items() if v is not None}
    if changes:
        cfg = cfg.replace("generation", **changes)
    if args.soundfont is not None:
        cfg = cfg.replace("synth", soundfont=str(Path(args.soundfont).expanduser().resolve()))
    return cfg


def run(args: argparse.Namespace) -> int:
    """Render and print one summary line."""
    from rtgen.errors import ConfigError
    from rtgen.midifile import save_atomic
    from rtgen.model import Model
    from rtgen.render import load_prime, render_steps, to_midi

    if args.bars < 1:
        raise ConfigError(f"--bars must be at least 1, got {args.bars}")
    cfg = build_config(args)
    t0 = time.perf_counter()
    prime = None
    if args.prime is not None:
        prime, ts = load_prime(args.prime)
        if ts is not None and args.time_signature is None:
            cfg = cfg.replace("generation", time_signature=str(ts))
    model = Model.load(cfg.model_path)
    rendered = render_steps(model, cfg, args.bars, cfg.generation.seed, prime)
    mid = to_midi(rendered, cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(mid, args.out)
    written = [str(args.out)]
    if args.wav is not None:
        from rtgen.render import midi_to_audio, write_wav
        from rtgen.synth import Synth, find_soundfont

        s = cfg.synth
        soundfont = find_soundfont(cfg.resolve(s.soundfont) if s.soundfont else None)
        with Synth(soundfont, sample_rate=s.sample_rate, gain=s.gain, reverb=s.reverb, chorus=s.chorus) as synth:
            frames = midi_to_audio(mid, synth)
        write_wav(args.wav, frames, s.sample_rate)
        written.append(str(args.wav))
    if args.png is not None:
        from rtgen.pianoroll import plot_pianoroll

        g = cfg.generation
        title = f"{model.name}: seed {g.seed}, T={g.temperature}, top-p={g.top_p}, {g.time_signature}, key {g.key}"
        plot_pianoroll(mid, args.png, title)
        written.append(str(args.png))
    notes = ", ".join(f"{part} {n}" for part, n in rendered.notes.items())
    prime_note = f" after {rendered.prime_steps} prime steps" if rendered.prime_steps else ""
    print(
        f"rendered {args.bars} bars{prime_note} ({cfg.generation.time_signature}, {cfg.generation.tempo:g} BPM, "
        f"seed {cfg.generation.seed}) in {time.perf_counter() - t0:.2f} s: notes {notes} -> {', '.join(written)}"
    )
    return 0
