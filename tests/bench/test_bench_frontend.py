"""`vitserve-bench frontend`: its stand-in repository is servable and its BENCHMARKS.md section reads its JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import handoff
from bench.cli import build_parser
from bench.frontend import (
    CLASSES,
    MAX_BATCH,
    MODEL,
    SIZE,
    build_repository,
    cpu_by_role,
    median_round_ratio,
    median_trial,
    per_front_end,
    round_ratios,
    summary_lines,
)
from bench.results import LoadPoint
from service.repository import read_model


def test_the_stand_in_repository_is_a_valid_model(tmp_path: Path) -> None:
    entry = read_model(build_repository(tmp_path), MODEL)
    assert entry.config.platform == "vitserve_offcpu_standin"
    assert entry.config.max_batch_size == MAX_BATCH and entry.manifest.num_classes == CLASSES
    assert entry.manifest.preprocess.input_size == (3, SIZE, SIZE)
    entry.verify(1)  # the sha256 of its version file matches


def _point(rate: float) -> dict[str, object]:
    return {"inferences_per_second": rate, "client_cpu_cores": 0.2}


def test_summary_section_reports_the_best_point_of_each_and_the_ratio(tmp_path: Path) -> None:
    data = {
        "command": "vitserve-bench frontend --quick",
        "model": {"batch_ms": 2.0, "max_batch_size": 64, "input": [3, 32, 32]},
        "points": {"v2": {"1": [_point(1000.0), _point(1200.0)], "2": [_point(2000.0)]},
                   "jpeg": {"1": [_point(500.0)], "2": [_point(900.0)]}},
        "ratio_2_over_1": {"v2": 2000 / 1200, "jpeg": 1.8},
    }
    text = "\n".join(summary_lines(data, tmp_path, lambda p: p.name))
    assert "| v2 | 1,200 | 2,000 | 1.67 | 0.20 |" in text and "| jpeg | 500.00 | 900.00 | 1.80 | 0.20 |" in text
    assert "hand-off" not in text  # a run from before the floors were measured
    data["handoff_cpu_us"] = {"executor": 70.0, "compute_threads": 30.0, "compute_threads_2ms": 190.0,
                              "process": 18.0}
    text = "\n".join(summary_lines(data, tmp_path, lambda p: p.name))
    assert "| the same with a 2 ms batch (the loop idles meanwhile, as the engine's does) | 190.00 |" in text
    assert "Not run" in "\n".join(summary_lines(None, tmp_path, str))
    assert build_parser().parse_args(["frontend", "--quick", "--batch-ms", "1"]).batch_ms == 1.0


def test_the_hand_off_floors_are_measured_by_real_round_trips() -> None:
    floors = handoff.measure(n=40)
    assert set(floors) == {"executor", "compute_threads", "compute_threads_2ms", "process"}
    assert all(v > 0 for v in floors.values())
    # a 2 ms sleep is off the CPU: its round trip costs far less CPU than it lasts (2,000 µs)
    assert floors["compute_threads_2ms"] < 2000


def test_server_cpu_is_split_by_process_name() -> None:
    before = {"vitserve-engine": 1.0, "vitserve-fe0": 2.0, "vitserve-fe1": 2.0, "python": 0.5}
    after = {"vitserve-engine": 1.5, "vitserve-fe0": 3.0, "vitserve-fe1": 3.5, "python": 0.5}
    assert cpu_by_role(before, after) == {"engine": 0.5, "front ends": 2.5, "supervisor": 0.0}
    assert cpu_by_role({"python": 1.0}, {"python": 1.25}) == {"server": 0.25}  # one process does both jobs


def test_the_front_ends_cpu_is_divided_among_them_as_each_used_it() -> None:
    before = {"vitserve-engine": 1.0, "vitserve-fe0": 2.0, "vitserve-fe1": 2.0}
    after = {"vitserve-engine": 1.5, "vitserve-fe0": 3.5, "vitserve-fe1": 2.5}  # fe0 did three quarters
    assert per_front_end({"engine": 30.0, "front ends": 200.0}, before, after) == {"fe0": 150.0, "fe1": 50.0}
    assert per_front_end({"server": 190.0}, {"python": 1.0}, {"python": 2.0}) == {}  # one process: no front ends
    assert per_front_end({"front ends": 200.0}, after, after) == {}  # no CPU used: nothing to divide


def _measured(rate: float, concurrency: int = 16) -> LoadPoint:
    return LoadPoint(mode="concurrency", concurrency=concurrency, measured_s=6.0, windows=3, stable=True,
                     requests=int(rate * 6), inferences_per_second=rate, requests_per_second=rate,
                     latency_us={"p50": 1e6 / rate}, client_send_us=0.0, client_recv_us=0.0,
                     network_server_send_recv_us=0.0, client_cpu_cores=0.1, client_cpu_us_per_request=10.0)


def test_a_configuration_is_its_median_round_and_each_round_has_its_own_ratio() -> None:
    # a slow phase of the host hits one round of both configurations alike: the median round leaves it out
    one = {16: [(_measured(900.0), {"server": 200.0}), (_measured(500.0), {"server": 260.0}),
                (_measured(1000.0), {"server": 190.0})],
           64: [(_measured(1200.0, 64), {}), (_measured(600.0, 64), {}), (_measured(1100.0, 64), {})]}
    two = {16: [(_measured(1500.0), {}), (_measured(800.0), {}), (_measured(1700.0), {})],
           64: [(_measured(2000.0, 64), {}), (_measured(1000.0, 64), {}), (_measured(1900.0, 64), {})]}
    point, split = median_trial(one[16])
    assert point.inferences_per_second == 900.0 and split == {"server": 200.0}  # the measured point, whole
    assert median_trial(one[16][:2])[0].inferences_per_second == 500.0  # an even count: the lower middle
    assert round_ratios({1: one, 2: two}) == [2000 / 1200, 1000 / 600, 1900 / 1100]
    assert median_round_ratio([1.27, 1.59, 1.54, 1.57, 1.53]) == 1.54  # the middle round, not the best medians'
    assert median_round_ratio([1.6, 1.7, 1.5, 1.9]) == pytest.approx(1.65)  # an even count: the middle two's mean


def test_the_summary_lists_each_rounds_ratio_when_the_run_had_rounds(tmp_path: Path) -> None:
    data = {
        "command": "vitserve-bench frontend", "rounds": 3,
        "model": {"batch_ms": 2.0, "max_batch_size": 64, "input": [3, 32, 32]},
        "points": {"v2": {"1": [_point(1000.0)], "2": [_point(1700.0)]}},
        "ratio_2_over_1": {"v2": 1.7}, "ratio_2_over_1_by_round": {"v2": [1.62, 1.55, 1.81]},
    }
    text = "\n".join(summary_lines(data, tmp_path, lambda p: p.name))
    # the target column reads the median paired round; the best-median ratio is listed beside the rounds
    assert "| v2 | 1,000 | 1,700 | 1.62 | 1.62 / 1.55 / 1.81 | 1.70 | 0.20 |" in text
    assert "3 round(s)" in text
    assert build_parser().parse_args(["frontend", "--rounds", "5"]).rounds == 5
