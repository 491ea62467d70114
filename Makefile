# vitserve — the two commands that matter:
#   make run    set up the service (no torch needed) and serve the built-in demo models on :8000
#   make test   set up everything (service + export + dev extras) and run the test suite
# Everything lives in a local virtualenv (.venv) so a fresh machine needs only python3 >= 3.11.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
REPOSITORY ?= models/demo
PYTEST_ARGS ?=

.PHONY: run serve test setup setup-service demo lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Service-only install: onnxruntime, FastAPI, numpy, Pillow ... never torch.
$(VENV)/.service: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Full install: export (torch, timm, onnx), benchmarks and test dependencies.
$(VENV)/.full: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[export,bench,dev]'
	touch $@ $(VENV)/.service

setup-service: $(VENV)/.service
setup: $(VENV)/.full

run: $(VENV)/.service
	$(BIN)/vitserve serve --repository $(REPOSITORY) --host $(HOST) --port $(PORT)

serve: run

# Re-train the built-in demo models (sklearn digits; a few minutes on 2 cores).
demo: $(VENV)/.full
	$(BIN)/vitserve-export train --repository models/demo

test: $(VENV)/.full
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
