"""Repository scanning: per-model errors, names that cannot escape the root, sha256 checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.repository import ModelEntry, ModelLoadError, list_model_names, model_directory, parse_version, read_model


def scan(root: Path) -> dict[str, ModelEntry | ModelLoadError]:
    """Every model of the repository, each parsed or with its error (what the model store does)."""
    out: dict[str, ModelEntry | ModelLoadError] = {}
    for name in list_model_names(root):
        try:
            out[name] = read_model(root, name)
        except ModelLoadError as exc:
            out[name] = exc
    return out


def test_scan_reports_each_model_on_its_own(tiny_repository: Path) -> None:
    found = scan(tiny_repository)
    assert set(found) == {"tiny_a", "tiny_b", "tiny_corrupt", "tiny_badsha"}
    b = found["tiny_b"]
    assert not isinstance(b, ModelLoadError)
    assert sorted(b.versions) == [1, 2] and b.served_versions() == [2]


def test_sha256_mismatch_is_a_load_error(tiny_repository: Path) -> None:
    entry = read_model(tiny_repository, "tiny_badsha")
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        entry.verify(1)
    assert read_model(tiny_repository, "tiny_a").verify(1).name == "model.onnx"


@pytest.mark.parametrize("name", ["../etc", "..", ".", "a/b", "", "x" * 200, "/abs", "tiny_a\x00", "-lead"])
def test_names_cannot_escape_the_repository(tiny_repository: Path, name: str) -> None:
    with pytest.raises(ValueError):
        model_directory(tiny_repository, name)
    with pytest.raises(ModelLoadError):
        read_model(tiny_repository, name)


@pytest.mark.parametrize("text", ["0", "01", "-1", "1.0", "../1", "", "9999999999"])
def test_bad_version_segments(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


def test_broken_directories_give_reasons(tiny_repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny_a", root / "no_manifest")
    (root / "no_manifest" / "vitserve.json").unlink()
    shutil.copytree(tiny_repository / "tiny_a", root / "tiny_a")
    shutil.rmtree(root / "tiny_a" / "1")
    shutil.copytree(tiny_repository / "tiny_a", root / "renamed")
    found = scan(root)
    assert "missing vitserve.json" in found["no_manifest"].reason  # type: ignore[union-attr]
    assert "no version directory" in found["tiny_a"].reason  # type: ignore[union-attr]
    assert "names the model" in found["renamed"].reason  # type: ignore[union-attr]
