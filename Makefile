# DuoMind: `make demo` and `make test` set everything up themselves on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONHASHSEED := 0

.PHONY: setup espeak demo test test-slow bench lint clean

# torch first: the pinned CPU wheel is on these machines' disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory espeak
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

# espeak-ng (Debian package) voices the ASR synthetic corpus; installed where apt-get is usable, else a hint.
# Never fails the build: the ASR tests that need it skip without it.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q espeak-ng >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q espeak-ng >/dev/null 2>&1)) || echo "note: could not install espeak-ng; ASR synthesis tests will skip"; \
	  else echo "note: espeak-ng is missing (ASR corpus synthesis); install it with: sudo apt-get install espeak-ng"; fi; }

demo: $(STAMP)
	$(BIN)/duomind demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	@set -e; for f in benchmarks/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f; done
	$(BIN)/python benchmarks/_report.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
