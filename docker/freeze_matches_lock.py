#!/usr/bin/env python3
"""Compare an environment's `pip freeze` with a lock file (requirements/*.txt, made by `make lock`).

Why: the lock is only worth something if the image really holds those releases; docker/build_local.sh
pipes the built image's `pip freeze` through this, and the tests use the same comparison. Stdlib only.

    docker run --rm --entrypoint pip vitserve:cpu freeze | python3 docker/freeze_matches_lock.py requirements/service-cpu.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

#: the project itself (installed from the source tree, not from the lock)
PROJECT = "vitserve"
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def normalise(name: str) -> str:
    """PEP 503 name: `Pillow`, `pydantic_core` and `zope.event` as pip and uv may spell them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """`name==version` lines of a lock or a freeze (comments, options and `@ file://` lines skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            out[normalise(match.group(1))] = match.group(2)
    return out


def differences(freeze: str, lock: str) -> list[str]:
    """Every way the frozen environment differs from the lock; empty when they match exactly."""
    installed = {n: v for n, v in pins(freeze).items() if n != PROJECT}
    locked = pins(lock)
    problems = [f"{n}: installed {installed[n]}, locked {locked[n]}"
                for n in sorted(installed.keys() & locked.keys()) if installed[n] != locked[n]]
    problems += [f"{n}=={locked[n]}: locked, not installed" for n in sorted(locked.keys() - installed.keys())]
    problems += [f"{n}=={installed[n]}: installed, not in the lock" for n in sorted(installed.keys() - locked.keys())]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("freeze", nargs="?", type=Path, help="a `pip freeze` output (default: stdin)")
    args = parser.parse_args(argv)
    freeze = args.freeze.read_text() if args.freeze else sys.stdin.read()
    problems = differences(freeze, args.lock.read_text())
    for problem in problems:
        print(f"  {problem}")
    count = len(pins(args.lock.read_text()))
    print(f"pip freeze vs {args.lock}: " + (f"{len(problems)} differences" if problems else f"all {count} pins match"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
