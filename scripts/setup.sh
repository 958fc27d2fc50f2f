#!/usr/bin/env bash
# Set up rtgen on this machine: system packages (FluidSynth, a GM soundfont, JACK,
# liblo-tools) and a virtual environment in .venv.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh dev      runtime + training (torch==2.13.0) + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-runtime}
PY=${PYTHON:-python3}
APT_PKGS=(fluidsynth libfluidsynth3 timgm6mb-soundfont fluid-soundfont-gm jackd2 jack-tools liblo-tools systemd iproute2 util-linux)
[ "$WHAT" = dev ] && APT_PKGS+=(chromium)  # tests/test_web.py: the web page in a real browser (Playwright drives it)

need_apt=()
command -v fluidsynth >/dev/null 2>&1 || need_apt+=(fluidsynth)
ldconfig -p 2>/dev/null | grep -q libfluidsynth || need_apt+=(libfluidsynth3)
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || ls /usr/share/sounds/sf2/*.sf2 >/dev/null 2>&1 || need_apt+=(timgm6mb-soundfont)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need_apt+=(fluid-soundfont-gm)  # a second font: the swap tests
command -v jackd >/dev/null 2>&1 || need_apt+=(jackd2)
command -v jack_midi_dump >/dev/null 2>&1 || need_apt+=(jack-tools)
command -v oscsend >/dev/null 2>&1 || need_apt+=(liblo-tools)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # the service tests verify the unit file
[ "$WHAT" != dev ] || command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)  # the Link tests: a network namespace with loopback alone
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)

if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(uname -s)" = "Darwin" ]; then
        echo "rtgen setup: on macOS install the system parts with Homebrew:" >&2
        echo "    brew install fluid-synth jack liblo python@3.11" >&2
        echo "and put a General MIDI .sf2 soundfont in ~/.local/share/soundfonts (or set synth.soundfont)." >&2
    elif ! command -v apt-get >/dev/null 2>&1; then
        echo "rtgen setup: missing ${need_apt[*]}; install the equivalents with your package manager" >&2
        echo "(FluidSynth with its library, a General MIDI soundfont, JACK 2, liblo tools), then re-run." >&2
        exit 1
    elif [ "$(id -u)" != 0 ]; then
        echo "rtgen setup: missing Debian packages: ${need_apt[*]}" >&2
        echo "run as root, or first:  sudo apt-get install -y ${APT_PKGS[*]}" >&2
        exit 1
    else
        echo "rtgen setup: installing ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${APT_PKGS[@]}" >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$WHAT" = dev ]; then
    # torch pinned: 2.13.0 is a CPU build on local disk here; an unpinned torch pulls multi-GB CUDA wheels
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[train,dev]"
else
    .venv/bin/python -m pip install -q -e .
fi
# an editable install leaves the package uncompiled, and with PYTHONDONTWRITEBYTECODE set every start
# would compile it again (~200 ms of the first note): compile it once, as pip does for a wheel
.venv/bin/python -m compileall -q rtgen >/dev/null
echo "rtgen setup: ready ($WHAT)"
