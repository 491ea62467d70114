# vitserve — the two commands that matter:
#   make run    set up the service (no torch needed) and serve the built-in demo models on :8000
#   make test   set up everything (service + export + dev extras) and run the test suite
# Everything lives in a local virtualenv (.venv) so a fresh machine needs only python3 >= 3.11.
# Versions come from the lock (requirements/*.txt, made by `make lock`): `make`, CI and the image install
# the same releases.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
REPOSITORY ?= models/demo
PYTEST_ARGS ?=
# `make test` runs one pytest worker per core (at most 4; TEST_WORKERS=0 runs in one process), each test file on one
# worker: its module-scoped servers start once, and most of the suite's time is servers and clients waiting
TEST_WORKERS ?= auto

# The lock: requirements/full.txt (the service and every extra, Linux x86_64, CPython 3.11) pins what
# `make setup` / CI install; requirements/service-{cpu,gpu}.txt pin the images (no torch). `make lock`
# rewrites them with uv, keeping every pin pyproject.toml still allows; `make lock UPGRADE=1` moves to the
# newest releases.
LOCK      := requirements/full.txt
LOCK_VENV ?= .venv-lock
UV_VERSION ?= 0.13.9
UV        := $(LOCK_VENV)/bin/uv
UPGRADE   ?=
LOCK_ARGS := --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-annotate \
             --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)

.PHONY: run serve test setup setup-service demo lint clean lock tools screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Service-only install: onnxruntime, FastAPI, numpy, Pillow, the gRPC endpoint's grpc extra ... never torch.
$(VENV)/.service: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[grpc]'
	touch $@

# Full install: export (torch, timm, onnx), the OpenVINO runtime, gRPC, benchmarks and test dependencies.
$(VENV)/.full: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[export,openvino,grpc,bench,dev]'
	touch $@ $(VENV)/.service

setup-service: $(VENV)/.service
setup: $(VENV)/.full

run: $(VENV)/.service
	$(BIN)/vitserve serve --repository $(REPOSITORY) --host $(HOST) --port $(PORT)

serve: run

# Re-train the built-in demo models (sklearn digits; vanilla and every variant, each with its int8 and fp16
# copies; about a quarter of an hour on 2 cores) into a fresh folder, then swap it in.
demo: $(VENV)/.full
	rm -rf models/.demo-new
	$(BIN)/vitserve-export train --repository models/.demo-new --int8 --min-accuracy 0.95
	rm -rf models/demo && mv models/.demo-new models/demo

test: $(VENV)/.full
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

# ruff (service, export, bench, tests) and mypy (service, export); configured in pyproject.toml
lint: $(VENV)/.full
	$(BIN)/ruff check service export bench tests
	$(BIN)/mypy

# The system tools the monitoring/deployment tests use (promtool, prometheus, docker-compose, shellcheck;
# apt-get, as root): without them `make test` skips those tests and says so in its last lines.
tools:
	VENV=$(VENV) bash docker/ci_checks.sh install

# docs/ui.png, the README's picture of /ui: taken by its browser test (tests/ui; Debian's chromium and
# chromium-driver, which `make tools` installs) after an image went through the committed demo models.
screenshot: $(VENV)/.full
	VITSERVE_UI_SCREENSHOT=$(CURDIR)/docs/ui.png $(BIN)/python -m pytest tests/ui -q -p no:cacheprovider

$(UV):
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)

# Refresh the lock after changing dependencies in pyproject.toml (then commit requirements/). The CPU image
# gets the CPU onnxruntime wheel of the same release as the locked onnxruntime-gpu.
lock: $(UV)
	$(UV) pip compile $(LOCK_ARGS) pyproject.toml --all-extras -o $(LOCK)
	for flavour in cpu gpu; do \
	    { $(PYTHON) docker/runtime_requirements.py --flavour $$flavour; \
	      if [ $$flavour = cpu ]; then sed -n 's/^onnxruntime-gpu==/onnxruntime==/p' $(LOCK); fi; } \
	    | $(UV) pip compile $(LOCK_ARGS) -c $(LOCK) - -o requirements/service-$$flavour.txt || exit 1; \
	done

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .hypothesis
