"""The CI soak: 60 s at ~80 % of the measured sustainable rate on the exported `demo` model.

Zero errors, resident memory growth ≤ 5 % after a 15 s warm-up (last window's median over the first
window's peak),
and a finite p99 in the last window. The figures (rate, windows, RSS, p99 drift) are reported in the
terminal summary; the same runner does the 10-minute soak outside CI (tests/reliability/soak.py).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from reliability_support import FIGURES, start_server
from soak import run_soak_async

SOAK_S = 60.0
WARMUP_S = 15.0
MAX_RSS_GROWTH = 0.05


@pytest.mark.slow
def test_soak_60s_no_errors_bounded_memory(demo_repository: Path, tmp_path: Path) -> None:
    server = start_server(demo_repository, tmp_path, "--models", "demo", "--warmup", "pow2")
    try:
        report = asyncio.run(run_soak_async(server.base_url, "demo", SOAK_S, pid=server.proc.pid, fraction=0.8,
                                            warmup_s=WARMUP_S, window_s=15.0, probe_s=4.0, probe_concurrency=4,
                                            log=lambda *_: None))
    finally:
        code = server.stop()
    FIGURES["soak_60s"] = {
        "sustainable_rps": report.sustainable_rps, "offered_rps": report.offered_rps,
        "achieved_rps": report.achieved_rps, "requests": report.requests, "errors": report.errors,
        "rss_growth_pct": None if report.rss_growth is None else round(report.rss_growth * 100, 2),
        "p99_first_last_ms": [report.p99_first_ms, report.p99_last_ms],
        "p99_drift_pct": round(report.p99_drift * 100, 1),
        "windows_start_n_p50_p99_rss_rssmax": [[w.start_s, w.requests, w.p50_ms, w.p99_ms, w.rss_mb, w.rss_max_mb]
                                               for w in report.windows],
    }
    assert code == 0, server.log()[-3000:]
    assert report.requests > 0 and report.errors == 0, report.error_samples
    assert report.rss_growth is not None and report.rss_growth <= MAX_RSS_GROWTH, report.windows
    assert math.isfinite(report.p99_last_ms), report.windows
