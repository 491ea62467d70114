"""Small seeded model repositories for tests, built through the real export pipeline, and the type of the
session's trained demo (tests/conftest.py `trained_demo`).

Test support, not production code: `tests/` is on sys.path (pytest's rootdir conftest), so suites import
it as `from repository_builder import build_test_repository`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: what `build_test_repository` builds by default: vanilla plus a variant of each folding kind.
DEFAULT_TEST_SPECS: tuple[str, ...] = ("demo", "demo+cb", "demo+gab", "demo+reattn")


def build_test_repository(path: Path, specs: Sequence[str] = DEFAULT_TEST_SPECS, *, int8: bool = False,
                          fp16: bool = False) -> Path:
    """A small seeded repository for tests (random weights, quiet); returns `path`."""
    from export.build import build_repository

    build_repository(specs, Path(path), progress=False, int8=int8, fp16=fp16, seed=0)
    return Path(path)


@dataclass(frozen=True)
class TrainedDemo:
    """The vanilla `demo` model trained from scratch on the digits by the demo recipe (DEMO_CONFIG)."""

    repository: Path  # the exported repository: `<repository>/demo`
    weights: Path  # its trained state dict (`demo.pth`), a checkpoint `vitserve-export finetune` starts from
    results: dict[str, float]  # train_demo_repository's {name: held-out top-1}
