"""Dockerfile, docker-compose.yml and docker/k8s: the real linters/validators accept them (and reject
a broken copy, so they are really checking), and the pieces refer to each other correctly."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_promql import exported_sample_names, metric_names
from monitoring_support import DOCKER_DIR, ROOT, require_tool

K8S = DOCKER_DIR / "k8s"
KUSTOMIZATIONS = (K8S, K8S / "gpu", K8S / "monitoring")
EXAMPLES = sorted((K8S / "examples").glob("*.yaml"))


def _run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


# --- Dockerfile --------------------------------------------------------------------------------------

def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile)
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(2)
            stages[current] = [line]
        else:
            stages[current].append(line)
    return stages


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = _run(require_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\nCMD curl localhost\n")
    result = _run(require_tool("hadolint"), str(bad))
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_dockerfile_stages_base_images_and_runtime_hardening() -> None:
    stages = _stages((ROOT / "Dockerfile").read_text())
    preamble = "\n".join(stages[""])
    for arg in ("BASE_IMAGE", "EXPORT_BASE_IMAGE", "CUDA_BASE_IMAGE", "MODEL_SOURCE"):
        assert f"ARG {arg}=" in preamble, f"{arg} must be a build argument before the first FROM"
    assert {"export", "repository-prebuilt", "repository-export", "repository", "gpu", "cpu"} <= set(stages)
    assert stages["export"][0].startswith("FROM ${EXPORT_BASE_IMAGE}")
    assert any('vitserve-export "${EXPORT_COMMAND}" --repository /models' in line for line in stages["export"])
    assert "ARG EXPORT_COMMAND=train" in stages["export"], "the demo repository is what the image gets by default"
    assert stages["gpu"][0].startswith("FROM ${CUDA_BASE_IMAGE}")
    assert stages["cpu"][0].startswith("FROM ${BASE_IMAGE}")
    for name, flavour in (("gpu", "gpu"), ("cpu", "cpu")):
        body = "\n".join(stages[name])
        assert f"install_service.sh {flavour}" in body
        assert "COPY export" not in body and "torch" not in body, f"{name} must not carry the export stage"
        assert "COPY --from=repository " in body
        user = re.search(r"^USER\s+(\S+)", body, re.MULTILINE)
        assert user and user.group(1).split(":")[0] not in ("0", "root")
        assert re.search(r"^HEALTHCHECK .*CMD \[\"vitserve-healthcheck\"\]", body, re.MULTILINE)
        assert 'ENTRYPOINT ["vitserve"]' in body


def test_dockerignore_lets_through_everything_the_dockerfile_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in lines, ".dockerignore is an allow-list: everything excluded, then re-included"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    sources: list[str] = []
    for line in re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text()).splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--") and "$" not in p]
    assert sources
    for source in sources:
        source = source.rstrip("*").rstrip("/")
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is excluded by .dockerignore"


# --- docker-compose ------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_docker_compose_config_is_valid(profile: str) -> None:
    result = _run(require_tool("docker-compose"), "-f", "docker-compose.yml", "config", "-q",
                  env={"COMPOSE_PROFILES": profile})
    assert result.returncode == 0, result.stderr


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = (ROOT / "docker-compose.yml").read_text().replace("stop_grace_period: 40s", "stop_grace_period: [40]")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = _run(require_tool("docker-compose"), "-f", str(tmp_path / "docker-compose.yml"), "config", "-q",
                  cwd=tmp_path)
    assert result.returncode != 0


def test_compose_gpu_reservation_cpu_variant_and_mounted_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    gpu, cpu = services["vitserve"], services["vitserve-cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["target"] == "gpu" and gpu["profiles"] == ["gpu"]
    assert cpu["build"]["target"] == "cpu" and cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert "COMPOSE_PROFILES=cpu" in (ROOT / ".env").read_text().splitlines(), "a plain `up` must work without a GPU"
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            host = volume.split(":", 1)[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), f"{name} mounts missing {host}"
    assert int(gpu["stop_grace_period"].rstrip("s")) > float(gpu["environment"]["VITSERVE_DRAIN_TIMEOUT_S"])
    # TensorRT engines go to a named volume (the image is read-only), set for the service by env
    cache = gpu["environment"]["VITSERVE_TRT_ENGINE_CACHE_DIR"]
    assert f"trt-engines:{cache}" in gpu["volumes"] and "trt-engines" in compose["volumes"]
    assert gpu["environment"].items() >= cpu["environment"].items()  # the shared settings kept


# --- Kubernetes ----------------------------------------------------------------------------------------

def _kustomize(directory: Path) -> list[dict[str, Any]]:
    result = _run(require_tool("kubectl"), "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("k8s")
    files = {}
    for directory in KUSTOMIZATIONS:
        result = _run(require_tool("kubectl"), "kustomize", str(directory))
        assert result.returncode == 0, result.stderr
        path = out / f"{directory.relative_to(DOCKER_DIR).as_posix().replace('/', '_')}.yaml"
        path.write_text(result.stdout)
        files[directory.name] = path
    return files


def test_kubernetes_validate_accepts_rendered_manifests_and_examples(rendered: dict[str, Path]) -> None:
    files = [str(p) for p in rendered.values()] + [str(p) for p in EXAMPLES]
    result = _run(require_tool("kubernetes-validate"), "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    # built-in kinds were really checked; the CRDs are reported as unchecked (and tested below)
    for kind in ("deployment/vitserve", "service/vitserve", "horizontalpodautoscaler/vitserve",
                 "persistentvolumeclaim/vitserve-models", "horizontalpodautoscaler/vitserve-queue-time"):
        assert f"passed for resource {kind}" in result.stdout + result.stderr


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"tcpSocket": {"port": 8000}}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    result = _run(require_tool("kubernetes-validate"), "--strict", str(bad))
    assert result.returncode != 0


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_deployment_probes_grace_resources_and_volume() -> None:
    docs = _by_kind(_kustomize(K8S))
    deployment = docs["Deployment/vitserve"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # readiness through grpc.health.v1 on the gRPC port the server is told to serve
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["VITSERVE_GRPC_PORT"]) == ports["grpc"] and int(env["VITSERVE_PORT"]) == ports["http"]
    drain = float(env["VITSERVE_DRAIN_TIMEOUT_S"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    from service.settings import Settings

    delay = float(env.get("VITSERVE_SHUTDOWN_DELAY_S", Settings.model_fields["shutdown_delay_s"].default))
    assert pod["terminationGracePeriodSeconds"] > pre_stop + delay + drain

    assert float(Settings.model_fields["drain_timeout_s"].default) <= drain
    assert pod["securityContext"]["runAsNonRoot"] is True
    mount = {m["name"]: m for m in container["volumeMounts"]}["models"]
    assert mount["mountPath"] == env["VITSERVE_REPOSITORY"] and mount["readOnly"] is True
    claim = {v["name"]: v for v in pod["volumes"]}["models"]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in docs
    # the Service reaches these pods on the named port; the HPA scales this Deployment
    service = docs["Service/vitserve"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    hpa = docs["HorizontalPodAutoscaler/vitserve"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "vitserve"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])


def test_gpu_overlay_requests_a_gpu_and_the_gpu_image() -> None:
    docs = _by_kind(_kustomize(K8S / "gpu"))
    (container,) = docs["Deployment/vitserve"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith(":gpu")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["VITSERVE_PROVIDERS"].split(",")[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    # the strategic merge kept the probes and the volume of the base
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    # and added a writable TensorRT engine cache, named to the service by env
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert {"models", "tmp", "trt-engines"} <= mounts.keys()
    assert env["VITSERVE_TRT_ENGINE_CACHE_DIR"] == mounts["trt-engines"]["mountPath"]
    volumes = {v["name"]: v for v in docs["Deployment/vitserve"]["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["trt-engines"] and "persistentVolumeClaim" in volumes["models"]
    cpu = _by_kind(_kustomize(K8S))["Deployment/vitserve"]["spec"]["template"]["spec"]["containers"][0]
    assert cpu["image"].endswith(":cpu") and "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


def test_service_monitor_selects_the_service_and_names_the_job_vitserve() -> None:
    """CRD (no offline schema): its fields are checked here against the objects it points at."""
    monitor = _by_kind(_kustomize(K8S / "monitoring"))["ServiceMonitor/vitserve"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _by_kind(_kustomize(K8S))["Service/vitserve"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "vitserve"  # alerts use job="vitserve"
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"


def test_kserve_triton_example_serves_the_same_repository() -> None:
    """CRD (no offline schema): apiVersion/kind and the fields KServe requires, and the same volume."""
    (isvc,) = [d for d in yaml.safe_load_all((K8S / "examples" / "kserve-triton.yaml").read_text()) if d]
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    claim = yaml.safe_load((K8S / "base" / "model-repository-pvc.yaml").read_text())["metadata"]["name"]
    assert model["storageUri"].rstrip("/") == f"pvc://{claim}"


def test_queue_time_hpa_matches_the_adapter_rule_and_exported_metrics() -> None:
    (hpa,) = [d for d in yaml.safe_load_all((K8S / "examples" / "hpa-queue-time.yaml").read_text()) if d]
    (config_map,) = [d for d in yaml.safe_load_all((K8S / "examples" / "prometheus-adapter-rules.yaml").read_text())
                     if d]
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"]: rule for rule in rules}
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in served
    query = re.sub(r"<<\.\w+>>", "x", served[metric]["metricsQuery"])
    names = metric_names(query) | metric_names(served[metric]["seriesQuery"])
    assert names and names <= exported_sample_names()


def test_prometheus_rule_carries_exactly_the_alert_rules() -> None:
    """CRD (no offline schema): generated from alerts.yml, rendered by the monitoring kustomization."""
    import sys

    rule = _by_kind(_kustomize(K8S / "monitoring"))["PrometheusRule/vitserve"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = yaml.safe_load((DOCKER_DIR / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    result = _run(sys.executable, str(DOCKER_DIR / "prometheus" / "prometheusrule.py"), "--check")
    assert result.returncode == 0, result.stderr
