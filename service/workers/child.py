"""What every process the supervisor spawns (the engine, each front end) does first."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from service.metrics import use_process_local_pid
from service.settings import Settings


def configure_child(settings: Settings, role: str, comm: str) -> None:
    """What every spawned process does first: its role in every log line, `comm` its name in ps/top, its
    metric values' pid read once (before any metric exists)."""
    use_process_local_pid()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s [{role} %(process)d]: %(message)s")
    try:
        Path("/proc/self/comm").write_text(comm[:15])
    except OSError:
        pass
