#!/usr/bin/env bash
# Build the vitserve CPU image and run it on a machine that cannot pull images: the base image is made
# with debootstrap + `docker import`, and pip inside the build installs only from a wheelhouse prepared
# on the host (served to the build over loopback; the build uses --network host).
#
#   sudo docker/build_local.sh            # as root; starts dockerd if it is not running
#
# Steps: dockerd (--iptables=false --bridge=none) -> base image vitserve-base:bookworm (Debian bookworm
# minbase + python3 + python3-venv, from the host's own apt mirror) -> wheelhouse (pip download of the
# CPU runtime requirements + build backend) -> docker build --target cpu with MODEL_SOURCE=prebuilt ->
# docker run --network host -> readiness, one classify, /metrics -> docker stop (graceful drain).
# Prints a summary (image size, build time, what answered) at the end.
#
# Env: REPOSITORY   model repository inside the repo to bake in (default models/demo; built with the
#                   host's vitserve-export into docker/.build/models when missing)
#      PORT         host port for the test run (default 18080), VENV (default .venv), DOCKER (CLI)
#      TARGET       cpu (default) | gpu: the gpu stage on the local Debian base instead of a CUDA image
#                   (checks that stage's build steps and onnxruntime-gpu; without a GPU it serves on CPU)
#      MODEL_SOURCE prebuilt (default: bake REPOSITORY in) | export: run the Dockerfile's export stage
#                   (torch + timm from the wheelhouse, several GB) to build MODEL_SPECS inside the build
#      EXPORT_COMMAND, MODEL_SPECS, EXPORT_ARGS   for the export stage (default: build "demo demo+cb";
#                   EXPORT_COMMAND=train EXPORT_ARGS="--epochs 1" runs the Dockerfile's default, shortened)
#      KEEP=1       leave the container running
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PORT="${PORT:-18080}"
WHEEL_PORT="${WHEEL_PORT:-18081}"
BASE_TAG="${BASE_TAG:-vitserve-base:bookworm}"
TARGET="${TARGET:-cpu}"
[[ "$TARGET" == cpu || "$TARGET" == gpu ]] || { echo "TARGET must be cpu or gpu" >&2; exit 2; }
IMAGE_TAG="${IMAGE_TAG:-vitserve:$TARGET}"
WORK="$ROOT/docker/.build"
WHEELHOUSE="$WORK/wheelhouse"
CONTAINER=vitserve-local
# Debian's docker.io CLI: it carries BuildKit (a newer CLI without the buildx plugin does not)
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
mkdir -p "$WORK"

log() { printf '[build_local %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (dockerd, debootstrap)"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" != 1 ]]; then "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# --- 1. tools and the docker engine ----------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
    log "starting dockerd --iptables=false --bridge=none (log: $WORK/dockerd.log)"
    dockerd --iptables=false --bridge=none >"$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not come up, see $WORK/dockerd.log"
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
mkdir -p "$WHEELHOUSE"
"$VENV/bin/python" docker/runtime_requirements.py --flavour "$TARGET" > "$WORK/requirements-$TARGET.txt"
log "wheelhouse: pip download $(tr '\n' ' ' < "$WORK/requirements-$TARGET.txt")setuptools wheel"
MODEL_SOURCE="${MODEL_SOURCE:-prebuilt}"
EXPORT_COMMAND="${EXPORT_COMMAND:-build}"
if [[ "$EXPORT_COMMAND" == build ]]; then MODEL_SPECS="${MODEL_SPECS:-demo demo+cb}"; else MODEL_SPECS="${MODEL_SPECS:-}"; fi
EXPORT_ARGS="${EXPORT_ARGS:-}"
if [[ "$MODEL_SOURCE" == export ]]; then
    # the export stage installs ".[export]": the base dependencies (markers as on Linux x86_64) + the extra
    "$VENV/bin/python" - > "$WORK/requirements-export.txt" <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["export"]))
PY
    extra_requirements=(-r "$WORK/requirements-export.txt")
else
    extra_requirements=()
fi
# the host is Debian bookworm with Python 3.11 like the base image, so pip resolves here what the build needs
"$VENV/bin/python" -m pip download -q --disable-pip-version-check -d "$WHEELHOUSE" --only-binary=:all: \
    -r "$WORK/requirements-$TARGET.txt" "${extra_requirements[@]}" "setuptools>=69" wheel
log "wheelhouse: $(ls "$WHEELHOUSE" | wc -l) files, $(du -sh "$WHEELHOUSE" | cut -f1)"
"$VENV/bin/python" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$WHEEL_PORT" \
    >"$WORK/wheelhouse-http.log" 2>&1 &
PIDS+=($!)
sleep 1

# --- 4. model repository to bake in -----------------------------------------------------------------
REPOSITORY="${REPOSITORY:-models/demo}"
if [[ ! -d "$REPOSITORY" ]] || ! ls "$REPOSITORY"/*/config.pbtxt >/dev/null 2>&1; then
    REPOSITORY="docker/.build/models"
    if ! ls "$REPOSITORY"/*/config.pbtxt >/dev/null 2>&1; then
        log "no committed repository: building demo demo+cb into $REPOSITORY with the host's exporter"
        "$VENV/bin/vitserve-export" build --repository "$REPOSITORY" demo demo+cb
    fi
fi
log "repository: $REPOSITORY ($(ls "$REPOSITORY" | tr '\n' ' '))"

# --- 5. docker build --------------------------------------------------------------------------------
log "docker build --target $TARGET (BuildKit, --network host, pip from the wheelhouse only)"
t0=$(date +%s)
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
    -t "$IMAGE_TAG" . 2>&1 | tee "$WORK/docker-build.log" | grep -E '^#[0-9]+ (\[|DONE|ERROR)|onnxruntime [0-9]|ERROR' || true
[[ ${PIPESTATUS[0]} == 0 ]] || die "docker build failed, see $WORK/docker-build.log"
build_s=$(( $(date +%s) - t0 ))
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE_TAG")
log "built $IMAGE_TAG in ${build_s} s, size $((size / 1024 / 1024)) MiB"

# --- 6. run it and ask it ---------------------------------------------------------------------------
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

"$VENV/bin/python" - "$PORT" <<'PY'
"""One classify per model and a look at /metrics, from the host over loopback."""
import io, json, sys, urllib.request
from PIL import Image

base = f"http://127.0.0.1:{sys.argv[1]}"
models = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=10))
entries = models["models"] if isinstance(models, dict) else models
names = [m["name"] for m in entries]
for m in entries:
    print(f"model {m['name']}: state={m.get('state')} provider={m.get('provider')} load_s={m.get('load_seconds')}")
buf = io.BytesIO(); Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
boundary = "vitserveboundary"
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
        "Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
for name in names:
    req = urllib.request.Request(f"{base}/v1/models/{name}/classify", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.load(resp)
        top = answer["predictions"][0]
        print(f"classify {name}: HTTP {resp.status} top1={top['label']} ({top['score']:.3f}) timings={answer.get('timings')}")
metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
print("metrics:", sum(1 for line in metrics.splitlines() if line.startswith("vitserve_")), "vitserve_ samples")
PY

if [[ "${KEEP:-0}" != 1 ]]; then
    t0=$(date +%s)
    "$DOCKER" stop -t 40 "$CONTAINER" >/dev/null
    code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
    log "docker stop: exited $code after $(( $(date +%s) - t0 )) s (SIGTERM -> drain)"
    "$DOCKER" logs "$CONTAINER" 2>&1 | tail -5
fi
[[ "$MODEL_SOURCE" == export ]] && REPOSITORY="export stage: $EXPORT_COMMAND $MODEL_SPECS $EXPORT_ARGS"
log "SUMMARY target=$TARGET model_source=$MODEL_SOURCE image=$IMAGE_TAG size_mib=$((size / 1024 / 1024)) build_s=$build_s base=$BASE_TAG repository=$REPOSITORY"
