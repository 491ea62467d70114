"""`vitserve-export` end to end in a temporary directory, and its error handling (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from export.cli import main
from service.manifest import Manifest
from service.model_config import ModelConfig


def test_build_writes_a_repository_with_options_and_name(tmp_path, capsys):
    repo = tmp_path / "repo"
    code = main(["build", "--repository", str(repo), "test+reattn", "--opt", "reattn_layers=3", "--name", "mine",
                 "--max-batch-size", "8", "--seed", "4", "--quiet"])
    assert code == 0
    m = Manifest.load(repo / "mine")
    assert m.spec == "test+reattn" and m.variant_options["reattn_layers"] == [3]
    assert m.provenance.weights == "random(seed=4)"
    assert ModelConfig.load(repo / "mine" / "config.pbtxt").max_batch_size == 8
    assert "mine" in capsys.readouterr().out


def test_build_many_specs_applies_an_option_only_where_its_variant_is(tmp_path):
    repo = tmp_path / "repo"
    assert main(["build", "-r", str(repo), "test", "test+gab", "--opt", "gab_sigma_init=2.5", "-q"]) == 0
    assert Manifest.load(repo / "test-gab").variant_options["gab_sigma_init"] == 2.5
    assert Manifest.load(repo / "test").variant_options == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["test+bogus"], "unknown variant 'bogus'"),
        (["nosuch"], "unknown preset 'nosuch'"),
        (["test+cb+cbs"], "choose one"),
        (["test+cb", "--opt", "gab_layers=1"], "gab_layers"),
        (["test+gab", "--opt", "gab_sigma_init=-1"], "gab_sigma_init"),
        (["test+gab", "--opt", "nonsense"], "key=value"),
        (["test", "test+cb", "--name", "x"], "single spec"),
        (["test", "--checkpoint", "/nonexistent/w.pth"], "checkpoint file not found"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, args, message):
    assert main(["build", "-r", str(tmp_path / "repo"), *args, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitserve-export: error:") and message in err
    assert "Traceback" not in err


def test_installed_entry_point_reports_errors_without_a_traceback(tmp_path):
    exe = Path(sys.executable).with_name("vitserve-export")
    proc = subprocess.run([str(exe), "build", "-r", str(tmp_path), "test+lavit+gab", "--opt", "gab_layers=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "gab_layers" in proc.stderr and "Traceback" not in proc.stderr


def test_list_shows_presets_and_options(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("demo", "vit_small", "lavit_transform", "refiner_expand"):
        assert word in out


def test_train_refuses_non_digit_presets(tmp_path, capsys):
    assert main(["train", "-r", str(tmp_path), "--spec", "vit_small", "-q"]) == 2
    assert "digits" in capsys.readouterr().err
