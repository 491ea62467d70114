#!/usr/bin/env bash
# Run docker-compose.yml (CPU profile) on a machine without registry access, after docker/build_local.sh:
# vitserve from the locally built image, Prometheus from an image made here out of Debian's `prometheus`
# package (the official image cannot be pulled). Grafana has no Debian package, so it is not started.
# Checks: vitserve healthy, Prometheus scrapes it by its compose name (target job="vitserve" up), the
# alert rules are loaded from the mounted docker/prometheus, a vitserve_ query returns data. Then down.
#
#   sudo docker/compose_local.sh          # after docker/build_local.sh (images vitserve:cpu, vitserve-base)
#
# Env: VITSERVE_HTTP_PORT (default 18180), PROMETHEUS_HTTP_PORT (default 18190), KEEP=1 leaves it up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
BASE_TAG="${BASE_TAG:-vitserve-base:bookworm}"
PROM_TAG="${PROM_TAG:-vitserve-local/prometheus:debian}"
export VITSERVE_HTTP_PORT="${VITSERVE_HTTP_PORT:-18180}"
export PROMETHEUS_HTTP_PORT="${PROMETHEUS_HTTP_PORT:-18190}"
export PROMETHEUS_IMAGE="$PROM_TAG"
export COMPOSE_PROFILES=cpu
export COMPOSE_PROJECT_NAME=vitserve-local
COMPOSE=(docker-compose -f docker-compose.yml)
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"

log() { printf '[compose_local %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*"; exit 1; }

"$DOCKER" image inspect vitserve:cpu >/dev/null 2>&1 || die "no vitserve:cpu image: run docker/build_local.sh first"
"$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1 || die "no $BASE_TAG image: run docker/build_local.sh first"

if ! "$DOCKER" image inspect "$PROM_TAG" >/dev/null 2>&1; then
    log "building $PROM_TAG from Debian's prometheus package"
    printf '%s\n' \
        "FROM $BASE_TAG" \
        "RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/*" \
        "RUN mkdir -p /prometheus && chown nobody /prometheus" \
        "USER nobody" \
        'ENTRYPOINT ["/usr/bin/prometheus"]' \
        | DOCKER_BUILDKIT=1 "$DOCKER" build --network host -t "$PROM_TAG" - >/dev/null
fi

cleanup() {
    if [[ "${KEEP:-0}" != 1 ]]; then "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

log "docker-compose up -d vitserve-cpu prometheus (profile cpu)"
"${COMPOSE[@]}" up -d --no-build vitserve-cpu prometheus

log "waiting for vitserve to be healthy"
status=""
for _ in $(seq 90); do
    status=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q vitserve-cpu)" 2>/dev/null || true)
    [[ "$status" == healthy ]] && break
    sleep 2
done
[[ "$status" == healthy ]] || { "${COMPOSE[@]}" logs --tail 30; die "vitserve not healthy ($status)"; }
log "vitserve healthy; published on 127.0.0.1:$VITSERVE_HTTP_PORT"

python3 - "$VITSERVE_HTTP_PORT" "$PROMETHEUS_HTTP_PORT" <<'PY'
"""Through the published ports: a classify, then Prometheus' view of the compose target and rules."""
import io, json, sys, time, urllib.parse, urllib.request

vitserve, prometheus = (f"http://127.0.0.1:{p}" for p in sys.argv[1:3])
models = json.load(urllib.request.urlopen(f"{vitserve}/v1/models", timeout=10))["models"]
print("models:", [(m["name"], m["state"], m["provider"]) for m in models])

def prom(path, **params):
    url = f"{prometheus}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    return json.load(urllib.request.urlopen(url, timeout=10))["data"]

deadline = time.monotonic() + 60
while True:
    try:
        targets = prom("/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: (t["health"], t["scrapeUrl"]) for t in targets}
        if health.get("vitserve", ("",))[0] == "up":
            break
    except OSError as exc:
        health = {"error": str(exc)}
    if time.monotonic() > deadline:
        sys.exit(f"prometheus never scraped vitserve: {health}")
    time.sleep(2)
print("targets:", health)
rules = [r["name"] for g in prom("/api/v1/rules")["groups"] for r in g["rules"]]
print("alert rules loaded:", rules)
result = prom("/api/v1/query", query="sum by (model) (vitserve_model_ready)")["result"]
print("vitserve_model_ready via prometheus:", {r["metric"]["model"]: r["value"][1] for r in result})
if not rules or not result:
    sys.exit("rules or data missing")
PY
log "compose stack OK (vitserve-cpu + prometheus; grafana not started: no image here)"
