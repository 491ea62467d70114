#!/usr/bin/env bash
# Run docker-compose.yml (CPU profile) on a machine without registry access, after docker/build_local.sh:
# vitserve from the locally built image, Prometheus from an image made here out of Debian's `prometheus`
# package (the official image cannot be pulled). Grafana has no Debian package, so it is not started.
# Checks, through the published ports: vitserve healthy; one classify per model (docker/smoke.py, run in
# the vitserve container); Prometheus scrapes it by its compose name (target job="vitserve" up); the alert
# rules are loaded from the mounted docker/prometheus; and the classify is read back from Prometheus'
# HTTP API (vitserve_requests_total{model=...,code="200"}, retried until a scrape has it). Then down.
#
#   sudo bash docker/compose_local.sh      # after docker/build_local.sh (images vitserve:cpu, vitserve-base)
#
# Compose: `docker compose` (v2) when the docker CLI has it, else `docker-compose` (1.29, Debian's
# package; installed with apt-get when missing). Both read the same file and arguments.
# Env: VITSERVE_HTTP_PORT (default 18180), PROMETHEUS_HTTP_PORT (default 18190), KEEP=1 leaves it up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
PYTHON="${PYTHON:-python3}"
BASE_TAG="${BASE_TAG:-vitserve-base:bookworm}"
PROM_TAG="${PROM_TAG:-vitserve-local/prometheus:debian}"
export VITSERVE_HTTP_PORT="${VITSERVE_HTTP_PORT:-18180}"
export PROMETHEUS_HTTP_PORT="${PROMETHEUS_HTTP_PORT:-18190}"
export PROMETHEUS_IMAGE="$PROM_TAG"
export COMPOSE_PROFILES=cpu
export COMPOSE_PROJECT_NAME=vitserve-local
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
WORK="$ROOT/docker/.build"
mkdir -p "$WORK"

log() { printf '[compose_local %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*"; exit 1; }

"$DOCKER" info >/dev/null 2>&1 || die "no docker engine: run docker/build_local.sh first (it starts one)"
"$DOCKER" image inspect vitserve:cpu >/dev/null 2>&1 || die "no vitserve:cpu image: run docker/build_local.sh first"
"$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1 || die "no $BASE_TAG image: run docker/build_local.sh first"
if "$DOCKER" compose version >/dev/null 2>&1; then
    COMPOSE=("$DOCKER" compose -f docker-compose.yml)
    COMPOSE_NAME="docker compose"
else
    if ! command -v docker-compose >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "neither docker compose (v2) nor docker-compose found"
        log "apt-get install docker-compose (no Compose v2 in this docker CLI)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
    fi
    COMPOSE=(docker-compose -f docker-compose.yml)
    COMPOSE_NAME="docker-compose"
fi
log "compose: $COMPOSE_NAME $("${COMPOSE[@]}" version --short 2>/dev/null || true)"

if ! "$DOCKER" image inspect "$PROM_TAG" >/dev/null 2>&1; then
    log "building $PROM_TAG from Debian's prometheus package"
    printf '%s\n' \
        "FROM $BASE_TAG" \
        "RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/*" \
        "RUN mkdir -p /prometheus && chown nobody /prometheus" \
        "USER nobody" \
        'ENTRYPOINT ["/usr/bin/prometheus"]' \
        | DOCKER_BUILDKIT=1 "$DOCKER" build --network host -t "$PROM_TAG" - >"$WORK/prometheus-build.log" 2>&1 \
        || die "building $PROM_TAG failed, see $WORK/prometheus-build.log"
fi

cleanup() {
    if [[ "${KEEP:-0}" != 1 ]]; then "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

log "$COMPOSE_NAME up -d vitserve-cpu prometheus (profile cpu; grafana left out: no image here)"
"${COMPOSE[@]}" up -d --no-build vitserve-cpu prometheus

log "waiting for vitserve to be healthy"
container="$("${COMPOSE[@]}" ps -q vitserve-cpu)"
status=""
for _ in $(seq 90); do
    status=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$container" 2>/dev/null || true)
    [[ "$status" == healthy ]] && break
    sleep 2
done
[[ "$status" == healthy ]] || { "${COMPOSE[@]}" logs --tail 30; die "vitserve not healthy ($status)"; }
log "vitserve healthy; published on 127.0.0.1:$VITSERVE_HTTP_PORT"

log "classify (docker/smoke.py in the vitserve container)"
"$DOCKER" exec -i "$container" python - http://127.0.0.1:8000 < docker/smoke.py || die "classify failed"

"$PYTHON" - "$VITSERVE_HTTP_PORT" "$PROMETHEUS_HTTP_PORT" <<'PY' || die "Prometheus check failed"
"""Through the published ports: the models, then Prometheus' view of the target, the rules and the classify."""
import json, sys, time, urllib.parse, urllib.request

vitserve, prometheus = (f"http://127.0.0.1:{p}" for p in sys.argv[1:3])
models = json.load(urllib.request.urlopen(f"{vitserve}/v1/models", timeout=10))["models"]
print("models:", len(models), sorted({m["provider"] for m in models}))

def prom(path, **params):
    url = f"{prometheus}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    return json.load(urllib.request.urlopen(url, timeout=10))["data"]

def until(what, probe, timeout_s=90):
    """Retry `probe` (scrapes come every few seconds) until it returns something truthy."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(2)
    sys.exit(f"{what}: nothing after {timeout_s} s ({last!r})")

targets = until("target vitserve up", lambda: {t["labels"]["job"]: t["health"] for t in prom("/api/v1/targets")["activeTargets"]
                                              if t["labels"]["job"] == "vitserve" and t["health"] == "up"})
print("targets:", targets)
rules = [r["name"] for g in prom("/api/v1/rules")["groups"] for r in g["rules"]]
print("alert rules loaded:", len(rules), rules)
model = models[0]["name"]
query = f'sum(vitserve_requests_total{{model="{model}",code="200"}})'
result = until(f"{query} >= 1", lambda: [r for r in prom("/api/v1/query", query=query)["result"] if float(r["value"][1]) >= 1])
print(f"prometheus: {query} = {result[0]['value'][1]} (the classify above, read back)")
if not rules:
    sys.exit("no alert rules loaded")
PY
log "compose stack OK (vitserve-cpu + prometheus; grafana not started: no image here)"
