# rtgen: `make run` sets up and plays; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
NOTTINGHAM ?= ../shared/data/nottingham/MIDI

.PHONY: setup setup-dev run render test lint train bench soak clean

setup:
	@bash scripts/setup.sh runtime

setup-dev:
	@bash scripts/setup.sh dev

run: setup
	$(VENV)/bin/rtgen render --bars 16 --out out/piece.mid --wav out/piece.wav --png out/piece.png
	$(VENV)/bin/rtgen run --config config.toml

render: setup
	$(VENV)/bin/rtgen render --bars 16 --out out/piece.mid --wav out/piece.wav --png out/piece.png

test: setup-dev
	@# jackd2 keeps 8 servers in /dev/shm and never reclaims those of killed servers: with no jackd
	@# running nothing there is in use, so forget the suite's own leftovers (and the registry) first
	@pgrep -x jackd >/dev/null || rm -f /dev/shm/jack-shm-registry /dev/shm/jack_rtgen-* /dev/shm/jack_sem.*_rtgen-*
	@$(PY) -c "from rtgen.io.jackshm import reclaim_dead_servers; reclaim_dead_servers()"
	$(VENV)/bin/ruff check rtgen training tests
	$(VENV)/bin/ruff format --check rtgen training tests
	$(VENV)/bin/mypy rtgen
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: setup-dev
	$(VENV)/bin/ruff check rtgen training tests
	$(VENV)/bin/mypy rtgen
	$(VENV)/bin/lint-imports

train: setup-dev
	$(VENV)/bin/rtgen-train all --midi-dir $(NOTTINGHAM) --out exported_models/default --work runs/default

bench: setup
	$(VENV)/bin/rtgen bench --json benchmarks/results.json

soak: setup
	$(PY) -m rtgen.bench.soak --minutes 30 --json benchmarks/soak.json

clean:
	rm -rf out runs .pytest_cache
