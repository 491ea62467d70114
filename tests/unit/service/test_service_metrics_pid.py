"""`use_process_local_pid`: multiprocess metric values take the pid kept once per process (not read at every
write), and a forked child still writes a file of its own (its counts summed with the parent's, none lost):
without the renewal at fork, the child would write into its parent's file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import values

from service.metrics import use_process_local_pid

CHILD = r"""
import json, os, sys
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector
from service.metrics import use_process_local_pid

stock = values.ValueClass
use_process_local_pid()
replaced = values.ValueClass is not stock and values.ValueClass._multiprocess
counter = Counter("hits", "h", ["model"], registry=CollectorRegistry()).labels(model="m")
for _ in range(10):
    counter.inc()
child = os.fork()
if child == 0:  # a forked child: its writes go to a file of its own
    counter.inc(5)
    os._exit(0)
os.waitpid(child, 0)
total = sum(s.value for m in MultiProcessCollector(None).collect() for s in m.samples if s.name == "hits_total")
print(json.dumps({"replaced": replaced, "files": sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])),
                  "parent": os.getpid(), "child": child, "total": total}))
"""


def test_single_process_values_are_left_alone() -> None:
    before = values.ValueClass
    use_process_local_pid()
    assert values.ValueClass is before  # MutexValue: no pid, nothing to change


def test_a_spawned_process_keeps_its_pid_and_a_forked_child_writes_its_own_file(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["replaced"] is True
    assert report["files"] == sorted([f"counter_{report['parent']}.db", f"counter_{report['child']}.db"])
    assert report["total"] == 15  # 10 in the parent's file, 5 in the child's
