#!/bin/sh
# Installs the vitserve service (no torch, no onnx) into the virtualenv /opt/venv inside an image:
# the locked runtime requirements of one ONNX Runtime flavour (requirements/service-<flavour>.txt, made by
# `make lock` from docker/runtime_requirements.py), then the project itself without dependencies (the
# lock has them all: tests/monitoring/test_lock.py checks it against pyproject.toml).
# Called by the Dockerfile's cpu and gpu stages from /src.
# pip honours the PIP_* build arguments (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX ...), so the
# same step installs from PyPI or from a local wheelhouse (docker/build_local.sh).
set -eu
flavour="$1"
python3 -m venv /opt/venv
/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r "requirements/service-$flavour.txt"
/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps .
install -m 0755 docker/healthcheck.py /usr/local/bin/vitserve-healthcheck
# the service must import without torch/onnx: fail the build here rather than at run time
/opt/venv/bin/python -c "import onnxruntime, service; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
