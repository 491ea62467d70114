#!/usr/bin/env bash
# Build the vitserve CPU image and run it on a machine that cannot pull images: the base image is made
# with debootstrap + `docker import`, and pip inside the build installs only from a wheelhouse prepared
# on the host (served to the build over loopback; the build uses --network host).
#
#   sudo bash docker/build_local.sh            # as root, from a fresh clone: nothing else to set up
#   sudo bash docker/build_local.sh --check    # only check the prerequisites, change nothing
#
# Prerequisites (checked first, before any work): root; python3 >= 3.11 with pip (stdlib only; pip
# downloads the wheelhouse); apt-get for what is missing of docker.io, debootstrap and python3-pip (the
# script installs those); a model repository (models/demo is committed; without one it needs `make setup`).
#
# Steps: dockerd (--iptables=false --bridge=none, when none runs; it is left running and the script says
# how to stop it) -> base image vitserve-base:bookworm (Debian bookworm minbase + python3 + python3-venv,
# from the host's own apt mirror) -> wheelhouse (pip download of the locked requirements,
# requirements/service-$TARGET.txt) -> docker build --target cpu with MODEL_SOURCE=prebuilt -> the image's
# pip freeze vs the lock -> docker run --network host -> readiness, one classify per model, /metrics
# (docker/smoke.py inside the container) -> docker stop (graceful drain). Prints a summary at the end.
#
# Env: REPOSITORY   model repository inside the repo to bake in (default models/demo; built with
#                   VENV's vitserve-export into docker/.build/models when missing)
#      PORT         host port for the test run (default 18080), PYTHON (default python3), VENV (default
#                   .venv, only for building a missing repository), DOCKER (CLI)
#      TARGET       cpu (default) | gpu: the gpu stage on the local Debian base instead of a CUDA image
#                   (checks that stage's build steps and onnxruntime-gpu; without a GPU it serves on CPU)
#      MODEL_SOURCE prebuilt (default: bake REPOSITORY in) | export: run the Dockerfile's export stage
#                   (torch + timm from the wheelhouse, several GB) to build MODEL_SPECS inside the build
#      EXPORT_COMMAND, MODEL_SPECS, EXPORT_ARGS   for the export stage (default: build "demo demo+cb";
#                   EXPORT_COMMAND=train EXPORT_ARGS="--epochs 1" runs the Dockerfile's default, shortened)
#      KEEP=1       leave the container running; STOP_DOCKERD=1 stop a dockerd this script started
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CHECK_ONLY=0
case "${1:-}" in
    --check) CHECK_ONLY=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
PORT="${PORT:-18080}"
WHEEL_PORT="${WHEEL_PORT:-18081}"
BASE_TAG="${BASE_TAG:-vitserve-base:bookworm}"
TARGET="${TARGET:-cpu}"
[[ "$TARGET" == cpu || "$TARGET" == gpu ]] || { echo "TARGET must be cpu or gpu" >&2; exit 2; }
IMAGE_TAG="${IMAGE_TAG:-vitserve:$TARGET}"
LOCK="requirements/service-$TARGET.txt"
WORK="$ROOT/docker/.build"
WHEELHOUSE="$WORK/wheelhouse"
CONTAINER=vitserve-local
MODEL_SOURCE="${MODEL_SOURCE:-prebuilt}"
REPOSITORY="${REPOSITORY:-models/demo}"
# Debian's docker.io CLI: it carries BuildKit (a newer CLI without the buildx plugin does not)
DOCKER_SET="${DOCKER:-}"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo /usr/bin/docker)}"

log() { printf '[build_local %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*"; exit 1; }

# --- 0. prerequisites: everything is checked before any work; one message names what is missing -----
has_repository() { ls "$1"/*/config.pbtxt >/dev/null 2>&1; }
problems=()
apt_missing=()
[[ $(id -u) == 0 ]] || problems+=("run as root (it starts dockerd and runs debootstrap): sudo bash docker/build_local.sh")
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    problems+=("no $PYTHON: install Python >= 3.11 (Debian: apt-get install python3 python3-pip)")
elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    problems+=("$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'); Python >= 3.11 is needed (set PYTHON=...)")
elif ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    apt_missing+=(python3-pip)
fi
[[ -f "$LOCK" ]] || problems+=("no $LOCK: the lock is committed; restore it (git checkout -- requirements) or run make lock")
command -v dockerd >/dev/null 2>&1 && [[ -x "$DOCKER" ]] || apt_missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || apt_missing+=(debootstrap)
if ((${#apt_missing[@]})) && ! command -v apt-get >/dev/null 2>&1; then
    problems+=("missing ${apt_missing[*]} and no apt-get to install them: install them, then run again")
fi
if [[ "$MODEL_SOURCE" == prebuilt ]] && ! has_repository "$REPOSITORY" && ! has_repository docker/.build/models \
    && [[ ! -x "$VENV/bin/vitserve-export" ]]; then
    problems+=("no model repository at $REPOSITORY and no $VENV/bin/vitserve-export to build one: run make setup first, or set REPOSITORY")
fi
if ((${#problems[@]})); then
    log "ERROR: prerequisites missing, nothing was done:"
    for problem in "${problems[@]}"; do log "  - $problem"; done
    exit 1
fi
if ((CHECK_ONLY)); then
    log "prerequisites OK (python: $("$PYTHON" --version 2>&1); lock: $LOCK)${apt_missing[*]:+; would apt-get install: ${apt_missing[*]}}"
    exit 0
fi

mkdir -p "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" != 1 ]]; then "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# --- 1. tools and the docker engine ----------------------------------------------------------------
if ((${#apt_missing[@]})); then
    log "apt-get install ${apt_missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
    [[ -n "$DOCKER_SET" ]] || DOCKER="$(command -v /usr/bin/docker || command -v docker)"
fi
DOCKERD_PID=""
if ! "$DOCKER" info >/dev/null 2>&1; then
    # no iptables and no default bridge: nothing here may rewrite the host's firewall. Containers then use
    # --network host (plain `docker run -p` publishes nothing); compose networks still work.
    setsid dockerd --iptables=false --bridge=none >"$WORK/dockerd.log" 2>&1 < /dev/null &
    DOCKERD_PID=$!
    echo "$DOCKERD_PID" > "$WORK/dockerd.pid"
    log "started dockerd --iptables=false --bridge=none (pid $DOCKERD_PID, log $WORK/dockerd.log);" \
        "it keeps running after this script (for docker/compose_local.sh): stop it with kill $DOCKERD_PID"
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not come up, see $WORK/dockerd.log"
fi
if [[ -z "$DOCKERD_PID" ]]; then
    earlier="$(cat "$WORK/dockerd.pid" 2>/dev/null || true)"
    if [[ -n "$earlier" ]] && kill -0 "$earlier" 2>/dev/null; then
        log "dockerd started by an earlier run is running (pid $earlier, --bridge=none): stop it with kill $earlier"
    else
        log "docker engine already running (not started by this script)"
    fi
fi
log "docker: $("$DOCKER" version --format '{{.Client.Version}} / engine {{.Server.Version}}')"

# --- 2. base image: Debian bookworm with python3, from the host's apt mirror -----------------------
if ! "$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    mirror="${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}"
    [[ -n "$mirror" ]] || mirror="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)"
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    log "debootstrap bookworm minbase + python3 from the host's mirror"
    t0=$(date +%s)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed, see $WORK/debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
    rm -rf "$rootfs"
    log "base image $BASE_TAG made in $(( $(date +%s) - t0 )) s"
fi

# --- 3. wheelhouse on the host, served over loopback ------------------------------------------------
# The lock pins every package, so pip downloads exactly those wheels (--no-deps) for the image's Python
# (CPython 3.11, manylinux, glibc 2.36 of bookworm), whatever the host's Python is.
mkdir -p "$WHEELHOUSE"
locks=(-r "$LOCK")
[[ "$MODEL_SOURCE" == export ]] && locks+=(-r requirements/full.txt)   # torch, timm, onnx: several GB
log "wheelhouse: pip download ${locks[*]} (+ setuptools, wheel to build the project)"
platforms=()   # pip does not widen a manylinux_2_36 tag to the older ones a wheel may carry: list them
for glibc_minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${glibc_minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
"$PYTHON" -m pip download -q --disable-pip-version-check -d "$WHEELHOUSE" --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" \
    "${locks[@]}" "setuptools>=77" wheel >"$WORK/pip-download.log" 2>&1 \
    || { grep -v "^WARNING: Location" "$WORK/pip-download.log" | tail -20; die "pip download failed, see $WORK/pip-download.log"; }
log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$WHEEL_PORT" \
    >"$WORK/wheelhouse-http.log" 2>&1 &
PIDS+=($!)
sleep 1

# --- 4. model repository to bake in -----------------------------------------------------------------
EXPORT_COMMAND="${EXPORT_COMMAND:-build}"
if [[ "$EXPORT_COMMAND" == build ]]; then MODEL_SPECS="${MODEL_SPECS:-demo demo+cb}"; else MODEL_SPECS="${MODEL_SPECS:-}"; fi
EXPORT_ARGS="${EXPORT_ARGS:-}"
if ! has_repository "$REPOSITORY"; then
    REPOSITORY="docker/.build/models"
    if ! has_repository "$REPOSITORY"; then
        log "no committed repository: building demo demo+cb into $REPOSITORY with the host's exporter"
        "$VENV/bin/vitserve-export" build --repository "$REPOSITORY" demo demo+cb
    fi
fi
log "repository: $REPOSITORY ($(ls "$REPOSITORY" | tr '\n' ' '))"

# --- 5. docker build --------------------------------------------------------------------------------
log "docker build --target $TARGET (BuildKit, --network host, pip from the wheelhouse only)"
t0=$(date +%s)
set +e   # the build's own status, not the filter's
DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain --target "$TARGET" \
    --build-arg BASE_IMAGE="$BASE_TAG" \
    --build-arg CUDA_BASE_IMAGE="$BASE_TAG" \
    --build-arg MODEL_SOURCE="$MODEL_SOURCE" \
    --build-arg PREBUILT_REPOSITORY="$REPOSITORY" \
    --build-arg EXPORT_BASE_IMAGE="$BASE_TAG" \
    --build-arg EXPORT_COMMAND="$EXPORT_COMMAND" \
    --build-arg MODEL_SPECS="$MODEL_SPECS" \
    --build-arg EXPORT_ARGS="$EXPORT_ARGS" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$WHEEL_PORT/" \
    -t "$IMAGE_TAG" . 2>&1 | tee "$WORK/docker-build.log" | grep -E '^#[0-9]+ (\[|DONE|ERROR)|onnxruntime [0-9]|ERROR'
build_rc=${PIPESTATUS[0]}
set -e
((build_rc == 0)) || die "docker build failed, see $WORK/docker-build.log"
build_s=$(( $(date +%s) - t0 ))
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE_TAG")
log "built $IMAGE_TAG in ${build_s} s, size $((size / 1024 / 1024)) MiB"

# --- 6. the image holds exactly the locked releases -------------------------------------------------
"$DOCKER" run --rm --network none --entrypoint /opt/venv/bin/pip "$IMAGE_TAG" freeze --no-cache-dir --disable-pip-version-check \
    | "$PYTHON" docker/freeze_matches_lock.py "$LOCK" || die "the image's pip freeze differs from $LOCK"

# --- 7. run it and ask it ---------------------------------------------------------------------------
"$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1 || true
"$DOCKER" run -d --name "$CONTAINER" --network host -e VITSERVE_PORT="$PORT" -e VITSERVE_HOST=127.0.0.1 \
    "$IMAGE_TAG" >/dev/null
log "providers configured: $("$DOCKER" exec "$CONTAINER" sh -c 'echo $VITSERVE_PROVIDERS')"
log "container user: $("$DOCKER" exec "$CONTAINER" id -u)"
t0=$(date +%s)
ready=0
for _ in $(seq 120); do
    if "$DOCKER" exec "$CONTAINER" vitserve-healthcheck >/dev/null 2>&1; then ready=1; break; fi
    sleep 1
done
[[ $ready == 1 ]] || { "$DOCKER" logs "$CONTAINER" 2>&1 | tail -30; die "not ready after 120 s"; }
log "ready after $(( $(date +%s) - t0 )) s (vitserve-healthcheck inside the container)"
"$DOCKER" exec -i "$CONTAINER" python - "http://127.0.0.1:$PORT" < docker/smoke.py || die "classify failed"

if [[ "${KEEP:-0}" != 1 ]]; then
    t0=$(date +%s)
    "$DOCKER" stop -t 40 "$CONTAINER" >/dev/null
    code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
    log "docker stop: exited $code after $(( $(date +%s) - t0 )) s (SIGTERM -> drain)"
    "$DOCKER" logs "$CONTAINER" 2>&1 | tail -5
else
    log "container $CONTAINER left running on 127.0.0.1:$PORT (KEEP=1): $DOCKER rm -f $CONTAINER"
fi
[[ "$MODEL_SOURCE" == export ]] && REPOSITORY="export stage: $EXPORT_COMMAND $MODEL_SPECS $EXPORT_ARGS"
log "SUMMARY target=$TARGET model_source=$MODEL_SOURCE image=$IMAGE_TAG size_mib=$((size / 1024 / 1024)) build_s=$build_s base=$BASE_TAG repository=$REPOSITORY lock=$LOCK"
if [[ -n "$DOCKERD_PID" ]]; then
    if [[ "${STOP_DOCKERD:-0}" == 1 ]]; then
        kill "$DOCKERD_PID"; rm -f "$WORK/dockerd.pid"; log "stopped the dockerd this script started (STOP_DOCKERD=1)"
    else
        log "dockerd (pid $DOCKERD_PID) started here is still running: docker/compose_local.sh uses it;" \
            "stop it with kill $DOCKERD_PID. Under it use docker run --network host (-p publishes nothing)."
    fi
fi
