"""What the /ui tests serve and how they start Chromium (shared by conftest.py and the tests)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_DEMO = ROOT / "models" / "demo"
#: served from the committed (trained, evaluated) demo repository: three fp32 variants and two copies of vanilla
SERVED = ("demo", "demo-cb", "demo-gab", "demo-int8", "demo-fp16")
#: a copy of demo-reattn whose model file no longer matches its manifest's sha256: a model that fails to load
BROKEN = "demo-reattn"
#: what a page's first view shows by default (the fp32 models that serve)
FP32 = ("demo", "demo-cb", "demo-gab")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1680,1000")
