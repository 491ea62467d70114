"""Files planted in the folders `vitserve-export finetune` reads (issue 25, items 1 and 6).

A resume state is loaded weights-only: a pickle that would run code, garbage bytes or a state of another
run is refused, with one line naming the file, before any spec trains. The dataset scan counts each file
once by its real path, refuses a link back to a folder that contains it (a loop), and never puts one file
in both the training and the held-out split.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from small_digits import digits_folder  # type: ignore[import-not-found]  (a module of this folder)

from export.cli import main
from export.data import load_image_folder

ROOT = Path(__file__).resolve().parents[4]
#: bounds a hang (the old scan never finished on some of these folders), not a speed
pytestmark = pytest.mark.timeout(300)


def _flat_folder(root: Path, per_class: int = 5) -> Path:
    """`root/a/*.png` and `root/b/*.png`, distinct images (a held-out fraction is drawn from them)."""
    for c, colour in (("a", 0), ("b", 1)):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (i * 20, colour * 100, 0)).save(root / c / f"{c}{i}.png")
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
    data = digits_folder(tmp_path / "digits", 40, 40)
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
    data = digits_folder(tmp_path / "digits", 40, 40)
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


# -- item 6: the dataset scan ----------------------------------------------------------------------------


def test_a_link_back_to_its_own_folder_is_refused_naming_the_link(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "flat")
    clean = load_image_folder(root)
    assert (len(clean.train), len(clean.heldout)) == (8, 2)
    (root / "a" / "loop").symlink_to(".")
    with pytest.raises(ValueError, match="loop") as info:
        load_image_folder(root)
    assert str(root / "a" / "loop") in str(info.value)
    (root / "a" / "loop").unlink()
    (root / "b" / "up").symlink_to("..")  # the dataset root: a loop too
    with pytest.raises(ValueError, match="loop"):
        load_image_folder(root)


def test_two_loop_links_are_refused_at_once_through_the_cli(tmp_path: Path) -> None:
    """Two links made the walk exponential (it never finished); the timeout only bounds a hang."""
    root = _flat_folder(tmp_path / "flat")
    (root / "a" / "l1").symlink_to(".")
    (root / "a" / "l2").symlink_to(".")
    cmd = [sys.executable, "-m", "export.cli", "finetune", "--data", str(root), "-r", str(tmp_path / "repo"),
           "-q", "test"]
    try:
        done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the dataset scan did not finish within 120 s")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "loop" in done.stderr and str(root / "a" / "l1") in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "repo").exists()


def test_links_that_do_not_loop_still_terminate_and_count_each_file_once(tmp_path: Path) -> None:
    """A chain of folders each linking twice to the next has 2**depth paths but few files."""
    root = _flat_folder(tmp_path / "flat")
    depth = 24
    for level in range(depth):
        (root / "a" / f"d{level}").mkdir()
        Image.new("RGB", (8, 8), (level, 7, 7)).save(root / "a" / f"d{level}" / f"deep{level}.png")
    for level in range(depth - 1):
        for link in ("x", "y"):
            (root / "a" / f"d{level}" / link).symlink_to(f"../d{level + 1}")
    data = load_image_folder(root)
    paths = [s.path for s in data.train + data.heldout]
    assert len(paths) == 10 + depth
    assert len({p.resolve() for p in paths}) == len(paths)


def test_a_link_to_a_file_of_the_same_class_counts_once(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "flat")
    before = load_image_folder(root)
    (root / "a" / "z-copy.png").symlink_to("a0.png")
    (root / "a" / "sub").mkdir()
    (root / "a" / "sub" / "again.png").symlink_to(root / "a" / "a1.png")
    data = load_image_folder(root)
    assert (len(data.train), len(data.heldout)) == (8, 2)
    assert data.identity == before.identity  # the same files, the same seeded split
    assert sorted(p.name for p in data.duplicates) == ["again.png", "z-copy.png"]
    assert "2 duplicate" in data.summary()


def test_a_held_out_link_to_a_training_file_is_not_held_out(tmp_path: Path) -> None:
    data_dir = digits_folder(tmp_path / "digits", 40, 40)
    before = load_image_folder(data_dir)
    same_class = [s for s in before.train if s.target == before.train[0].target]
    label = before.classes[same_class[0].target]
    (data_dir / "val" / label / "zz-leak.png").symlink_to(same_class[0].path.resolve())
    (data_dir / "val" / label / "zz-dir").symlink_to(data_dir / "train" / label)  # a whole training class
    os.link(same_class[-1].path, data_dir / "val" / label / "zz-hard.png")  # the same file, another name
    data = load_image_folder(data_dir)
    assert not _inodes(data.train) & _inodes(data.heldout)
    assert sorted(p.name for p in data.duplicates) == ["zz-dir", "zz-hard.png", "zz-leak.png"]
    assert len(data.train) == 40 and len(data.heldout) == 40 and data.identity == before.identity
    # a flat folder: the held-out fraction is drawn after de-duplication, so one file never lands in both
    flat = _flat_folder(tmp_path / "flat")
    for i in range(5):
        (flat / "a" / f"link{i}.png").symlink_to(f"a{i}.png")
    split = load_image_folder(flat)
    assert not _inodes(split.train) & _inodes(split.heldout)
    assert len(split.train) + len(split.heldout) == 10


def _inodes(samples: list) -> set[tuple[int, int]]:
    return {(st.st_dev, st.st_ino) for st in (s.path.stat() for s in samples)}


def test_one_file_under_two_classes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _flat_folder(tmp_path / "flat")
    (root / "b" / "from-a.png").symlink_to(root / "a" / "a0.png")
    assert main(["finetune", "--data", str(root), "-r", str(tmp_path / "repo"), "-q", "test"]) == 2
    err = capsys.readouterr().err
    assert "two classes" in err and str(root / "b" / "from-a.png") in err and "Traceback" not in err
    (root / "b" / "from-a.png").unlink()
    os.link(root / "a" / "a1.png", root / "b" / "hard.png")
    with pytest.raises(ValueError, match="two classes"):
        load_image_folder(root)
    (root / "b" / "hard.png").unlink()
    (root / "c").symlink_to("a")  # a class folder that is another class's folder
    with pytest.raises(ValueError, match="two classes"):
        load_image_folder(root)


def test_a_fifo_with_an_image_name_is_skipped_not_waited_on(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "flat")
    os.mkfifo(root / "a" / "pipe.png")
    data = load_image_folder(root)
    assert [p.name for p in data.unreadable] == ["pipe.png"] and len(data.train) + len(data.heldout) == 10
