# TridentServe: `make run` starts the workbench on embedded defaults, `make test` runs every test.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run bench clean

# Playwright (dev extra) drives the system chromium in the browser test; it never downloads its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned to the CPU build, so no dependency can pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[ml,dev,ray]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The workbench (`streamlit run app.py`, headless) on embedded defaults: the home page compares the
# four policies on the image-video mix (simulated 2x8xH200, the h200 profile), computed before it
# serves and stored once in results/trident.duckdb (for the Runs and SQL pages); the Live page points at
# a `trident serve` (tiny CPU pipelines). HOST=0.0.0.0 to share it: then it
# asks for the password in TRIDENT_WORKBENCH_PASSWORD (and shows nothing while that is unset).
HOST ?= 127.0.0.1
PORT ?= 8501
run: $(STAMP)
	$(BIN)/python -m workbench --address $(HOST) --port $(PORT)

bench: $(STAMP)
	$(BIN)/python benchmarks/cost_accuracy.py
	$(BIN)/python benchmarks/tiny_latency.py
	$(BIN)/python benchmarks/planner_speed.py
	$(BIN)/python benchmarks/goodput.py

clean:
	rm -rf $(VENV) out .pytest_cache
