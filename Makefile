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
	$(BIN)/pip install -q -e '.[ml,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

run: $(STAMP)
	$(BIN)/trident generate --model tiny-sd3 --prompt "a red cube on a wooden table" --size 256x256 --steps 4 --seed 1 --out out/cube.png
	$(BIN)/trident cost --profile h200 --model sd3-medium --stage diffuse --size 1024x1024

bench: $(STAMP)
	$(BIN)/python benchmarks/cost_accuracy.py

clean:
	rm -rf $(VENV) out .pytest_cache
