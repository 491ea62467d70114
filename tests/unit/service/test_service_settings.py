"""Settings: environment, comma lists, validation at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_environment_and_comma_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSERVE_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("VITSERVE_MODELS", "a, b")
    monkeypatch.setenv("VITSERVE_PORT", "9001")
    monkeypatch.setenv("VITSERVE_API_KEY", "0123456789")
    s = Settings()
    assert s.models == ["a", "b"] and s.port == 9001 and s.host == "127.0.0.1"
    assert s.api_key is not None and "0123456789" not in repr(s)


def test_keyword_arguments_win_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSERVE_PORT", "9001")
    assert Settings(repository=tmp_path, port=9002).port == 9002


@pytest.mark.parametrize(
    "field, value",
    [
        ("port", 70000),
        ("max_body_bytes", 10),
        ("api_key", "short"),
        ("log_level", "chatty"),
        ("max_queue_size", 0),
    ],
)
def test_bad_values_fail_at_start(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(repository=tmp_path, **{field: value})


def test_missing_repository_fails(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a directory"):
        Settings(repository=tmp_path / "nope")


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(repository=tmp_path, max_batch=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):  # a runtime's options are its own (service/runtimes/onnxruntime/options.py)
        Settings(repository=tmp_path, intra_op_threads=1)  # type: ignore[call-arg]
