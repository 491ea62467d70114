"""Review tests of the direct path and the lean caches: they reuse the integration helpers (real servers)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
