"""Files planted in the folders `vitserve-export finetune` reads (issue 25, item 1).

A resume state is loaded weights-only: a pickle that would run code, garbage bytes or a state of another
run is refused, with one line naming the file, before any spec trains.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from export.cli import main
from export.train import digit_png, digits_split

#: bounds a hang (a FIFO planted as the state), not a speed
pytestmark = pytest.mark.timeout(300)


def _digits_folder(root: Path, n_train: int, n_val: int) -> Path:
    """A small train/ + val/ image folder of sklearn digits (8x8 grey PNGs)."""
    split = digits_split()
    for part, images, labels in (("train", split.train_images[:n_train], split.train_labels[:n_train]),
                                 ("val", split.test_images[:n_val], split.test_labels[:n_val])):
        for i, (image, label) in enumerate(zip(images, labels)):
            path = root / part / str(int(label)) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(digit_png(image))
    return root


class _Payload:
    """Unpickling this creates `marker` (what a planted state would do with a shell command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _finetune_args(data: Path, repo: Path, state: Path, *specs: str) -> list[str]:
    return ["finetune", "--data", str(data), "-r", str(repo), "--state-dir", str(state), "--batch-size", "8",
            "--epochs", "1", "--augment", "none", "-q", *specs]


def _planted_states(marker: Path) -> dict[str, bytes]:
    import io

    import torch

    zipped = io.BytesIO()
    torch.save({"identity": "x", "epoch": _Payload(marker), "model": {}}, zipped)
    return {
        "torch zip with a __reduce__ payload": zipped.getvalue(),
        "bare pickle with a __reduce__ payload": pickle.dumps(_Payload(marker), protocol=2),
        "garbage bytes": b"\x00not a torch file\xff" * 10,
        "a list, not a state": _torch_bytes([1, 2, 3]),
        "a state dict with wrong types": _torch_bytes({"identity": 7, "epoch": "1", "model": [], "optimizer": {},
                                                       "scheduler": {}, "scaler": {}, "epoch_losses": []}),
    }


def _torch_bytes(obj: object) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_planted_state_never_runs_and_is_refused_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _digits_folder(tmp_path / "digits", 40, 40)
    marker = tmp_path / "marker"
    for i, (what, payload) in enumerate(_planted_states(marker).items()):
        repo, state = tmp_path / f"repo{i}", tmp_path / f"state{i}"
        state.mkdir()
        (state / "test-gab.pt").write_bytes(payload)  # the second spec's state: refused before `test` trains
        assert main(_finetune_args(data, repo, state, "test", "test+gab")) == 2, what
        err = capsys.readouterr().err
        assert not marker.exists(), f"{what}: the planted pickle ran"
        lines = [line for line in err.splitlines() if line.startswith("vitserve-export: error:")]
        assert len(lines) == 1 and "Traceback" not in err, (what, err)
        assert str(state / "test-gab.pt") in lines[0] and "delete it" in lines[0] and "--state-dir" in lines[0], err
        assert "weights_only=False" not in err  # torch's own advice (to load it unsafely) is not passed on
        assert not (state / "test.pt").exists() and not any(repo.glob("*/vitserve.json")), what
    fifo = tmp_path / "fifo-state"
    fifo.mkdir()
    os.mkfifo(fifo / "test.pt")  # reading it would wait forever
    assert main(_finetune_args(data, tmp_path / "fifo-repo", fifo, "test")) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_legitimate_state_still_resumes_and_one_of_another_run_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _digits_folder(tmp_path / "digits", 40, 40)
    state = tmp_path / "state"
    assert main(_finetune_args(data, tmp_path / "repo", state, "test")) == 0
    capsys.readouterr()
    assert main(_finetune_args(data, tmp_path / "again", state, "test")) == 0
    assert "resuming after epoch 1/1" in capsys.readouterr().err
    # `test`'s state moved to another run (another lr): refused before test+gab (listed first) trains
    (state / "test-gab.pt").unlink(missing_ok=True)
    args = _finetune_args(data, tmp_path / "other", state, "test+gab", "test")
    assert main([*args[:-2], "--lr", "1e-3", *args[-2:]]) == 2
    err = capsys.readouterr().err
    assert "belongs to another spec, dataset or recipe" in err and str(state / "test.pt") in err
    assert not (state / "test-gab.pt").exists() and not any((tmp_path / "other").glob("*/vitserve.json"))
