# vitserve image: export stage builds the model repository, runtime stages serve it.
#
#   docker build -t vitserve:cpu --target cpu .        # CPU runtime (default target: the last stage)
#   docker build -t vitserve:gpu --target gpu .        # CUDA runtime with onnxruntime-gpu
#
# Build arguments (see docs/DEPLOYMENT.md):
#   BASE_IMAGE         runtime base for `cpu` (any Debian/Ubuntu with python3 >= 3.11 and python3-venv)
#   EXPORT_BASE_IMAGE  base of the export stage (torch, timm, onnx)
#   CUDA_BASE_IMAGE    base for `gpu`: a CUDA + cuDNN 9 *runtime* image whose CUDA major matches the
#                      onnxruntime-gpu wheel (1.31 links libcublas.so.13 / libcudart.so.13: CUDA 13)
#   MODEL_SOURCE       export (default: build the repository in the export stage) | prebuilt (copy
#                      PREBUILT_REPOSITORY from the build context, no torch needed)
#   EXPORT_COMMAND     train (default: the built-in demo models, trained as `make demo` does) | build
#   MODEL_SPECS        model specs for `vitserve-export build`, e.g. "vit_small vit_small+cb+gab"
#   EXPORT_ARGS        extra arguments, e.g. "--checkpoint /checkpoints/vit_small.pth" for build or
#                      "--epochs 1 --spec demo" for train (files in docker/checkpoints/ go to /checkpoints)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX
#                      passed to pip as environment (not kept in the image): a mirror, PyTorch's
#                      CPU-only wheel index for the export stage, or a local wheelhouse.
# Python packages: the releases in requirements/ (the lock, `make lock`), the same ones `make` and CI install.
# Base images are arguments so the image builds where public registries are unreachable
# (docker/build_local.sh makes a Debian base with debootstrap and installs from a wheelhouse).

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG EXPORT_BASE_IMAGE=python:3.11-slim-bookworm
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG MODEL_SOURCE=export

# ---------------------------------------------------------------------------------------------------
# export: torch + timm + onnx, builds and verifies the model repository at /models
FROM ${EXPORT_BASE_IMAGE} AS export
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG EXPORT_COMMAND=train
ARG MODEL_SPECS=""
ARG EXPORT_ARGS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY requirements/full.txt ./requirements/
COPY service ./service
COPY export ./export
# DL3013: this installs the project itself; its dependencies' versions come from the lock (-c)
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --disable-pip-version-check -c requirements/full.txt ".[export]"
COPY docker/checkpoints /checkpoints
# MODEL_SPECS / EXPORT_ARGS are split into words on purpose (several specs, several options)
RUN vitserve-export "${EXPORT_COMMAND}" --repository /models ${MODEL_SPECS} ${EXPORT_ARGS} \
    && ls -R /models

# ---------------------------------------------------------------------------------------------------
# where the runtime stages take the repository from (MODEL_SOURCE=export|prebuilt); BuildKit only
# builds the stage that is used, so `prebuilt` needs neither torch nor the export stage
FROM scratch AS repository-prebuilt
ARG PREBUILT_REPOSITORY=models/demo
COPY ${PREBUILT_REPOSITORY} /models

FROM export AS repository-export

# DL3006: this names one of the two stages above (repository-export / repository-prebuilt), not an image
# hadolint ignore=DL3006
FROM repository-${MODEL_SOURCE} AS repository

# ---------------------------------------------------------------------------------------------------
# gpu: CUDA runtime + onnxruntime-gpu. Providers TensorRT -> CUDA -> CPU (TensorRT only when its libs
# are added to the image); the provider a session really got is in /v1/models and the metrics.
FROM ${CUDA_BASE_IMAGE} AS gpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
# DL3008: the CUDA base image is an argument, so its Ubuntu release (and the package versions it
# offers) is not known here; python3 comes from whichever release the base has
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY requirements/service-*.txt ./requirements/
COPY docker/install_service.sh docker/healthcheck.py ./docker/
COPY service ./service
# /var/cache/vitserve/trt: TensorRT engine cache (a named volume in compose copies this directory's owner,
# so uid 10001 can write engines there)
RUN sh docker/install_service.sh gpu \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin vitserve \
    && mkdir -p /var/cache/vitserve/trt \
    && chown 10001:10001 /var/cache/vitserve/trt
COPY --from=repository --chown=root:root /models /models
WORKDIR /
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VITSERVE_REPOSITORY=/models \
    VITSERVE_HOST=0.0.0.0 \
    VITSERVE_PORT=8000 \
    VITSERVE_GRPC_PORT=8001 \
    VITSERVE_PROVIDERS=TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider
USER 10001:10001
# 8000: HTTP (REST, /metrics); 8001: gRPC (KServe v2 / Triton, grpc.health.v1)
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["vitserve-healthcheck"]
ENTRYPOINT ["vitserve"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------------
# cpu: slim Debian + onnxruntime (CPU wheel). The default target.
FROM ${BASE_IMAGE} AS cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY requirements/service-*.txt ./requirements/
COPY docker/install_service.sh docker/healthcheck.py ./docker/
COPY service ./service
# requirements/service-cpu.txt carries OpenVINO (backend "openvino" models): about 180 MB for twice ONNX Runtime's
# fp32 throughput on CPUs with native bf16; the reason beside FLAVOUR_EXTRAS in docker/runtime_requirements.py
RUN sh docker/install_service.sh cpu \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin vitserve
COPY --from=repository --chown=root:root /models /models
WORKDIR /
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VITSERVE_REPOSITORY=/models \
    VITSERVE_HOST=0.0.0.0 \
    VITSERVE_PORT=8000 \
    VITSERVE_GRPC_PORT=8001 \
    VITSERVE_PROVIDERS=CPUExecutionProvider
USER 10001:10001
# 8000: HTTP (REST, /metrics); 8001: gRPC (KServe v2 / Triton, grpc.health.v1)
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["vitserve-healthcheck"]
ENTRYPOINT ["vitserve"]
CMD ["serve"]
