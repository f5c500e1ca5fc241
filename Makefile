# TridentServe: `make run` starts the main job on embedded defaults, `make test` runs every test.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run bench clean

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

# Until the workbench lands: the default comparison of the four policies (simulated 2x8xH200,
# the h200 profile, the image-video mix at 0.5 req/s for 30 minutes).
run: $(STAMP)
	$(BIN)/trident simulate --profile h200 --cluster 2x8xH200 --mix image-video --rate 0.5 --duration 1800 \
		--policies pipeline-static:degree=1,pipeline-dynamic,trident-paper,trident

bench: $(STAMP)
	$(BIN)/python benchmarks/cost_accuracy.py
	$(BIN)/python benchmarks/tiny_latency.py
	$(BIN)/python benchmarks/planner_speed.py
	$(BIN)/python benchmarks/goodput.py

clean:
	rm -rf $(VENV) out .pytest_cache
