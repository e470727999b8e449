# DuoMind: `make demo` and `make test` set everything up themselves on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONHASHSEED := 0

.PHONY: setup demo test test-slow bench lint clean

# torch first: the pinned CPU wheel is on these machines' disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

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
