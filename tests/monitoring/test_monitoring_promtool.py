"""Prometheus config and alert rules: promtool accepts them, the rule unit tests pass, cover every
alert, and are sharp enough to fail when a rule is broken; alerts only use exported metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from monitoring_promql import (
    ALERT_TESTS_FILE,
    ALERTS_FILE,
    PROMETHEUS_SYNTHETIC,
    alert_rules,
    exported_sample_names,
    metric_names,
)
from monitoring_support import DOCKER_DIR, require_tool

PROMETHEUS_DIR = DOCKER_DIR / "prometheus"


def _promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(ALERT_TESTS_FILE.relative_to(PROMETHEUS_DIR)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS_FILE.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= firing, f"alerts never tested firing: {sorted(names - firing)}"
    assert names <= silent, f"alerts never tested silent (before `for:` or on healthy data): {sorted(names - silent)}"


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("VitserveHighErrorRatio", "> 0.05", "> 0.5"),
        ("VitserveP99LatencyHigh", "histogram_quantile(0.99,", "histogram_quantile(0.5,"),
        ("VitserveQueueNearFull", "> 0.8", "> 0.95"),
        ("VitserveModelNotReady", 'state=~"failed|loading"', 'state=~"failed"'),
        ("VitserveTargetDown", "for: 1m", "for: 10m"),
    ],
)
def test_rule_unit_tests_fail_when_a_rule_is_broken(tmp_path: Path, alert: str, old: str, new: str) -> None:
    """Mutate one alert and the unit tests must notice: they are not vacuous."""
    text = ALERTS_FILE.read_text()
    start = text.index(f"alert: {alert}")
    end = text.find("- alert:", start + 1)
    end = len(text) if end == -1 else end
    block = text[start:end]
    assert old in block, f"mutation anchor {old!r} not in {alert}"
    (tmp_path / "tests").mkdir()
    (tmp_path / "alerts.yml").write_text(text[:start] + block.replace(old, new, 1) + text[end:])
    shutil.copy(ALERT_TESTS_FILE, tmp_path / "tests" / ALERT_TESTS_FILE.name)
    result = _promtool("test", "rules", f"tests/{ALERT_TESTS_FILE.name}", cwd=tmp_path)
    assert result.returncode != 0, f"mutating {alert} ({old!r} -> {new!r}) went unnoticed:\n{result.stdout}"
    assert alert in result.stdout + result.stderr


def test_alerts_query_only_metrics_the_service_exports() -> None:
    exported = exported_sample_names() | PROMETHEUS_SYNTHETIC
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} queries metrics nobody exports: {sorted(unknown)}"


def test_compose_prometheus_scrapes_the_compose_service_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # the alerts select up{job="vitserve"}; k8s gets the same job name from the Service name
    assert "vitserve" in jobs
    targets = [t for sc in jobs["vitserve"]["static_configs"] for t in sc["targets"]]
    compose = yaml.safe_load((DOCKER_DIR.parent / "docker-compose.yml").read_text())
    for service in ("vitserve", "vitserve-cpu"):
        aliases = compose["services"][service]["networks"]["default"]["aliases"]
        assert "vitserve" in aliases
        env = compose["services"][service]["environment"]
        assert targets == [f"vitserve:{env['VITSERVE_PORT']}"]
