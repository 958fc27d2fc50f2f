"""``rtgen render``: generate a few bars offline to a MIDI file (and optionally WAV audio and a piano roll)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rtgen.config import CONFIG_HELP, Config, default_config_path, load_config, with_style


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
    p.add_argument("--model", metavar="NAME|DIR", help="model name or folder (config: model.path)")
    p.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
    p.add_argument("--seed", type=int, metavar="N", help="random seed (config: generation.seed)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (generation.temperature)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass (generation.top_p)")
    p.add_argument("--tempo", type=float, metavar="BPM", help="tempo (config: generation.tempo)")
    p.add_argument("--key", metavar="KEY", help='key/scale lock, e.g. "D major" or "off" (generation.key)')
    p.add_argument("--time-signature", metavar="N/D", help="meter such as 3/4 (generation.time_signature)")
    p.add_argument("--density", type=float, metavar="D", help="note density 0..4 (generation.density)")
    p.add_argument("--swing", type=float, metavar="S", help="swing 0..0.75 (generation.swing)")
    p.add_argument(
        "--style", metavar="NAME", help="accompaniment style of the chords part, e.g. strum, waltz (parts.chords.style)"
    )
    p.add_argument("--humanize", type=float, metavar="MS", help="timing spread in ms (generation.humanize_ms)")
    p.add_argument("--soundfont", metavar="PATH", help="a .sf2 soundfont for --wav (config: synth.soundfont)")
    p.add_argument("--prime", type=Path, metavar="FILE.mid", help="continue this MIDI file (it is included)")
    p.add_argument(
        "--form",
        metavar="FORM",
        help='song form, name:bars in order, e.g. "intro:4 A:8 A:8 B:8 A:8 outro:4" (replaces --bars): a returning '
        "section replays its melody and chords with variation, an intro sets up the key, the end cadences to the "
        "tonic; a marker at each section start",
    )
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="SRC[:GAIN]",
        help="with --wav: loop SRC under the mix at linear GAIN (default 1): a .wav file or a built-in texture "
        "(vinyl, rain); repeatable",
    )
    p.add_argument(
        "--master",
        action="store_true",
        help="with --wav: master the mix (gentle compression, loudness to -16 LUFS, limiter at -1 dBFS)",
    )
    p.add_argument("--lofi", action="store_true", help="with --wav: master with a lofi colour (low-pass, light crush)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Config:
    """The config file with the command-line options applied (validated key by key)."""
    cfg = load_config(args.config if args.config is not None else default_config_path())
    if args.model is not None:
        cfg = cfg.with_model(args.model)
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
    if args.style is not None:
        cfg = with_style(cfg, "chords", args.style)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Render and print one summary line."""
    from rtgen.errors import ConfigError
    from rtgen.generation.model import Model
    from rtgen.midi.midifile import save_atomic
    from rtgen.offline.render import load_prime, render_steps, to_midi

    if args.bars < 1:
        raise ConfigError(f"--bars must be at least 1, got {args.bars}")
    form = None
    if args.form is not None:
        from rtgen.arrange.form import parse_form

        try:
            form = parse_form(args.form)
        except ValueError as err:
            raise ConfigError(f"--form: {err}") from err
        if args.prime is not None:
            raise ConfigError("--form and --prime cannot be combined: a form starts from its intro")
    layers = []
    if (args.layer or args.master or args.lofi) and args.wav is None:
        raise ConfigError("--layer, --master and --lofi work on the audio: add --wav FILE.wav")
    if args.layer:
        from rtgen.offline.master import parse_layer

        try:
            layers = [parse_layer(text) for text in args.layer]
        except ValueError as err:
            raise ConfigError(f"--layer: {err}") from err
    cfg = build_config(args)
    t0 = time.perf_counter()
    prime = None
    if args.prime is not None:
        prime, ts = load_prime(args.prime)
        if ts is not None and args.time_signature is None:
            cfg = cfg.replace("generation", time_signature=str(ts))
    model = Model.load(cfg.model_path)
    rendered = render_steps(model, cfg, args.bars, cfg.generation.seed, prime, form=form)
    mid = to_midi(rendered, cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(mid, args.out)
    written = [str(args.out)]
    if args.wav is not None:
        from rtgen.io.synth import Synth, find_soundfont
        from rtgen.offline.render import midi_to_audio, write_wav

        s = cfg.synth
        soundfont = find_soundfont(cfg.resolve(s.soundfont) if s.soundfont else None)
        from rtgen.offline.master import finish

        with Synth(soundfont, sample_rate=s.sample_rate, gain=s.gain, reverb=s.reverb, chorus=s.chorus) as synth:
            frames = midi_to_audio(mid, synth)
        frames, report = finish(
            frames, s.sample_rate, layers=layers, do_master=args.master, lofi=args.lofi, seed=cfg.generation.seed
        )
        write_wav(args.wav, frames, s.sample_rate)
        written.append(f"{args.wav} ({report.summary()})")
    if args.png is not None:
        from rtgen.offline.pianoroll import plot_pianoroll

        g = cfg.generation
        key = rendered.params.key.name if rendered.params.key is not None else "off"
        title = f"{model.name}: seed {g.seed}, T={g.temperature}, top-p={g.top_p}, {g.time_signature}, key {key}"
        if args.form is not None:
            title += f", form {' '.join(args.form.split())}"
        plot_pianoroll(mid, args.png, title)
        written.append(str(args.png))
    notes = ", ".join(f"{part} {n}" for part, n in rendered.notes.items())
    prime_note = f" after {rendered.prime_steps} prime steps" if rendered.prime_steps else ""
    if form is not None:
        key = rendered.params.key.name if rendered.params.key is not None else "off"
        prime_note = f" in {len(form)} sections ({', '.join(f'{x.name}:{x.bars}' for x in form)}; {key})"
    bars = sum(x.bars for x in form) if form is not None else args.bars
    print(
        f"rendered {bars} bars{prime_note} ({cfg.generation.time_signature}, {cfg.generation.tempo:g} BPM, "
        f"seed {cfg.generation.seed}) in {time.perf_counter() - t0:.2f} s: notes {notes} -> {', '.join(written)}"
    )
    return 0
