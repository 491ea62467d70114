"""Smoke: `vitserve-bench spinning` on the demo preset (the committed demo model stands in for the build).

Checks that each setting got its own points (one client, a low rate, c=16) with no failed request and the
server's CPU read, and the report's structure — never timings.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench import spinning
from bench.loadgen import MeasureConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = MeasureConfig(window_s=0.4, warmup_s=0.2, max_windows=2, stability_windows=2, fixed_duration_s=0.6)


def test_spinning_measures_both_settings_at_one_client_a_low_rate_and_c16(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(ROOT / "models" / "demo" / "demo", cache / "repository" / "demo", copy_function=os.link)
    directory = spinning.run(["demo"], quick=True, cache=cache, out_dir=tmp_path / "results", rate=30, cfg=TINY)
    data = json.loads((directory / "spinning.json").read_text())
    assert [r["setting"] for r in data["rows"]] == list(spinning.SETTINGS)
    for row in data["rows"]:
        assert row["model"] == "demo"
        assert (row["c1"]["concurrency"], row["c16"]["concurrency"], row["rate"]["request_rate"]) == (1, 16, 30)
        for key in ("c1", "c16", "rate"):
            assert row[key]["errors_by_status"] == {} and row[key]["requests"] > 0
            assert row[key]["server_cpu_us_per_inference"] > 0  # the server's process group was read
    assert "spinning on" in (directory / "spinning.md").read_text()
