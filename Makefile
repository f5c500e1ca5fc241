# TridentServe: `make run` starts the workbench on embedded defaults, `make test` runs every test.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run bench clean

# Playwright (dev extra) drives the system chromium in the browser test; it never downloads its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# Python >= 3.11 with its venv module, checked before anything is installed: what is missing is said
# in one line (and make stops with a non-zero status).
$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found: install Python >= 3.11 (or make PY=/path/to/python3.11)" >&2; exit 1; }
	@$(PY) -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "error: TridentServe needs Python >= 3.11; $(PY) is %d.%d (make PY=/path/to/python3.11)" % sys.version_info[:2])'
	@$(PY) -m venv $(VENV) >/dev/null 2>&1 || { rm -rf $(VENV); echo "error: $(PY) -m venv failed: install Python's venv module (Debian, Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, the CPU build: 2.13.0+cpu is a local version that PyPI never serves, so no source can
# answer with a CUDA build (and its ~18 NVIDIA packages, several GB). It comes from the configured
# package sources when they have it (pip's index, find-links); only if they do not, from the PyTorch
# CPU index. The second install names it again, so no dependency can replace it.
TORCH := torch==2.13.0+cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
$(STAMP): $(BIN)/python pyproject.toml
	@$(BIN)/pip install -q '$(TORCH)' || { echo "$(TORCH) is not in the configured package sources: trying $(TORCH_CPU_INDEX)" >&2; \
		$(BIN)/pip install -q --index-url $(TORCH_CPU_INDEX) '$(TORCH)'; }
	$(BIN)/pip install -q -e '.[ml,dev,ray]' '$(TORCH)'
	touch $(STAMP)

install: $(STAMP)

# Two passes: the bulk on two workers, a test file per worker (bound by CPU: the servers and child
# processes the tests start); then the files marked `serial` (timing bounds that need the machine to
# itself) alone. Both always run; make fails if either did.
TEST_WORKERS ?= 2
test: $(STAMP)
	@status=0; \
	$(BIN)/python -m pytest -q --durations=30 -n $(TEST_WORKERS) --dist loadfile -m "not serial" tests || status=$$?; \
	$(BIN)/python -m pytest -q --durations=10 -m serial tests || status=$$?; \
	exit $$status

# The workbench (`streamlit run app.py`, headless) on embedded defaults: the home page compares the
# four policies on the image-video mix (simulated 2x8xH200, the h200 profile), computed before it
# serves and stored once in results/trident.duckdb (for the Runs and SQL pages); the Live page points at
# a `trident serve` (tiny CPU pipelines). HOST=0.0.0.0 to share it: then it
# asks for the password in TRIDENT_WORKBENCH_PASSWORD (and shows nothing while that is unset).
HOST ?= 127.0.0.1
PORT ?= 8501
WORKBENCH_ARGS ?=  # more `python -m workbench` flags, e.g. --results-dir DIR
run: $(STAMP)
	$(BIN)/python -m workbench --address $(HOST) --port $(PORT) $(WORKBENCH_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/cost_accuracy.py
	$(BIN)/python benchmarks/tiny_latency.py
	$(BIN)/python benchmarks/planner_speed.py
	$(BIN)/python benchmarks/goodput.py

clean:
	rm -rf $(VENV) out .pytest_cache
