"""Image-folder datasets for fine-tuning: torchvision's ImageFolder layout and order, timm/torchvision transforms.

Layout: `DIR/<class>/<image>` (a seeded, stratified fraction is held out), or `DIR/train/<class>/...` and
`DIR/val/<class>/...` (the `val/` images are held out). Every check that can fail runs here, before
any training: no images, fewer than two classes, train/val class lists that differ. Files with an
image extension that Pillow cannot read (or that are not regular files: a FIFO would block the probe)
are skipped and counted, so one corrupt file never stops an epoch halfway.

Links: the walk follows them as torchvision's ImageFolder does, in the same order (so a folder without
links keeps its identity and split), but counts each file once (by device and inode: symbolic and hard
links) and walks each folder once by its real path (a second path is skipped and counted), refuses a
link to a folder that contains it (a loop: the walk would never end), refuses one file under two
classes, and scans train/ before val/ so a held-out path to a training file is never held out.

The dataset's identity (`DatasetIdentity`) is the sha256 of the sorted `split/class/file` list plus
the split rule: two evaluations are comparable only when their identities are equal.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import stat
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service.manifest import DatasetIdentity, PreprocessConfig

if TYPE_CHECKING:
    import torch

Augmentation = Literal["timm", "affine", "none"]
AUGMENTATIONS: tuple[str, ...] = ("timm", "affine", "none")


@dataclass(frozen=True)
class Sample:
    path: Path
    target: int


@dataclass
class ImageFolderData:
    """The train and held-out file lists of one image-folder dataset, and its identity."""

    root: Path
    classes: list[str]
    train: list[Sample]
    heldout: list[Sample]
    identity: DatasetIdentity
    unreadable: list[Path] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)  # second paths (links) to files or folders counted

    def summary(self) -> str:
        twice = f"; {len(self.duplicates)} duplicate path(s) (links) counted once" if self.duplicates else ""
        return (f"{self.identity.key}: {len(self.classes)} classes, {len(self.train)} train / {len(self.heldout)} "
                f"held-out images ({self.identity.split}); {len(self.unreadable)} unreadable file(s) skipped{twice}")


@dataclass
class _Seen:
    """What one load has counted (files by device and inode, folders by real path) -> (class, the path
    it was first reached by)."""

    files: dict[object, tuple[str, str]] = field(default_factory=dict)
    folders: dict[object, tuple[str, str]] = field(default_factory=dict)
    duplicates: list[Path] = field(default_factory=list)

    def first(self, table: dict[object, tuple[str, str]], key: object, cls: str, path: str) -> bool:
        """True the first time `key` is reached; a second path of the same class is a duplicate,
        of another class an error (one image, two labels)."""
        first_cls, first_path = table.setdefault(key, (cls, path))
        if first_path == path:
            return True
        if first_cls != cls:
            raise ValueError(f"{path} (class {cls!r}) and {first_path} (class {first_cls!r}) are the same file or "
                             "folder: one image cannot belong to two classes; remove one of them")
        self.duplicates.append(Path(path))
        return False


def _readable(unreadable: list[Path]) -> Callable[[str], bool]:
    """ImageFolder's `is_valid_file`: image extension and Pillow can open and verify it (else counted)."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def check(path: str) -> bool:
        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise OSError("not a regular file")
            with Image.open(path) as image:
                image.verify()
            return True
        except Exception:  # noqa: BLE001 - any decoder failure means "cannot train on this file"
            unreadable.append(Path(path))
            return False

    return check


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links, as os.walk(followlinks=True) does
    except OSError:
        return False


def _file_key(path: str) -> object:
    """The file itself, whichever path reaches it: (device, inode) follows symbolic links and sees hard
    links; a path that cannot be stat'ed (a dangling link) is keyed by its real path."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def _contains(folder: str, path: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _class_files(top: str, cls: str, parent_real: str, seen: _Seen) -> list[str]:
    """The files under one class folder in `sorted(os.walk(top, followlinks=True))` order (a heap keyed
    by path pops folders in that order), each folder walked once by its real path: a few links can
    otherwise reach one folder by exponentially many paths. A link to a folder that contains it (or
    the dataset folder) is a loop: ValueError naming the link."""
    files: list[str] = []
    heap: list[tuple[str, tuple[str, ...]]] = [(top, (parent_real,))]
    while heap:
        path, ancestors = heapq.heappop(heap)
        real = os.path.realpath(path)
        if any(_contains(real, a) for a in ancestors):
            raise ValueError(f"{path} links to {real}, a folder that contains it (a loop); remove the link")
        if not seen.first(seen.folders, real, cls, path):
            continue
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue  # as os.walk: a folder that cannot be listed is left out
        for entry in entries:
            if _is_dir(entry):
                heapq.heappush(heap, (entry.path, (*ancestors, real)))
            else:
                files.append(entry.path)
    return files


def _scan(directory: Path, unreadable: list[Path], seen: _Seen) -> tuple[list[str], list[Sample]]:
    """ImageFolder's classes and samples, each file once (see the module docstring)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    if not directory.is_dir():
        raise ValueError(f"dataset folder {directory} does not exist")
    subdirs = [d for d in directory.iterdir() if d.is_dir()]
    if not subdirs:
        raise ValueError(f"dataset folder {directory} has no class sub-folders (expected {directory}/<class>/<image>)")
    try:
        classes, _ = find_classes(directory)
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"dataset folder {directory}: {exc}") from None
    readable = _readable(unreadable)
    samples: list[Sample] = []
    try:
        for target, cls in enumerate(classes):
            for path in _class_files(str(directory / cls), cls, os.path.realpath(directory), seen):
                if (path.lower().endswith(IMG_EXTENSIONS) and seen.first(seen.files, _file_key(path), cls, path)
                        and readable(path)):
                    samples.append(Sample(Path(path), target))
    except ValueError as exc:
        raise ValueError(f"dataset folder {directory}: {exc}") from None
    if not samples:
        raise ValueError(f"dataset folder {directory} holds no readable images ({len(unreadable)} unreadable file(s) "
                         f"skipped, {len(seen.duplicates)} duplicate path(s) counted once)")
    present = sorted({s.target for s in samples})
    if len(present) < 2:
        name = classes[present[0]]
        raise ValueError(f"dataset folder {directory} has images of one class only ({name!r}); "
                         "a classifier needs at least two")
    return classes, samples


def _fingerprint(root: Path, parts: Sequence[tuple[str, list[Sample]]], classes: Sequence[str]) -> str:
    h = hashlib.sha256()
    for split, samples in parts:
        for line in sorted(f"{split}/{classes[s.target]}/{s.path.name}" for s in samples):
            h.update(line.encode() + b"\n")
    return h.hexdigest()


def load_image_folder(
    root: Path, *, val_fraction: float = 0.2, seed: int = 0, name: str | None = None
) -> ImageFolderData:
    """Scan `root` (see the module docstring) into train and held-out lists; ValueError on bad input."""
    root = Path(root)
    unreadable: list[Path] = []
    seen = _Seen()  # shared by both scans: a val/ path to a train/ file is a duplicate, not held out
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train = _scan(root / "train", unreadable, seen)
        val_classes, heldout = _scan(root / "val", unreadable, seen)
        if val_classes != classes:
            raise ValueError(f"{root}: train/ and val/ have different classes ({classes} vs {val_classes})")
        split = "train/ and val/ folders"
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val fraction must be in (0, 1), got {val_fraction}")
        classes, samples = _scan(root, unreadable, seen)
        by_class: dict[int, list[Sample]] = defaultdict(list)
        for s in samples:
            by_class[s.target].append(s)
        rng = random.Random(seed)
        train, heldout = [], []
        for target in sorted(by_class):
            group = sorted(by_class[target], key=lambda s: s.path.name)
            rng.shuffle(group)
            n_val = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
            heldout += group[:n_val]
            train += group[n_val:]
        if not heldout or not train:
            raise ValueError(f"{root}: too few images to hold out a fraction of {val_fraction}")
        split = f"stratified fraction {val_fraction:g}, seed {seed}"
    fingerprint = _fingerprint(root, [("train", train), ("heldout", heldout)], classes)
    identity = DatasetIdentity(name=name or root.resolve().name, fingerprint=fingerprint, split=split,
                               num_classes=len(classes))
    return ImageFolderData(root, classes, train, heldout, identity, unreadable, seen.duplicates)


def train_transform(preprocess: PreprocessConfig, augmentation: Augmentation) -> Callable[[Any], torch.Tensor]:
    """The training transform: timm's `create_transform` (RandomResizedCrop, flip, ...), a small random
    affine (for centred, orientation-sensitive images such as digits), or none — each ending in the
    manifest's normalisation, on images resized as the service resizes them."""
    from timm.data import create_transform
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    _, height, width = preprocess.input_size
    if augmentation == "timm":
        return create_transform((3, height, width), is_training=True, interpolation=preprocess.interpolation,
                                mean=preprocess.mean, std=preprocess.std)
    steps: list[Any] = [eval_resize(preprocess)]
    if augmentation == "affine":
        steps.append(T.RandomAffine(degrees=10, translate=(2 / width, 2 / height), scale=(0.9, 1.1),
                                    interpolation=InterpolationMode.BILINEAR, fill=0))
    elif augmentation != "none":
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    return T.Compose([*steps, T.ToTensor(), T.Normalize(preprocess.mean, preprocess.std)])


def eval_resize(preprocess: PreprocessConfig) -> Any:
    """timm's eval geometry (resize to size / crop_pct, centre crop) as a torchvision transform."""
    import math

    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    _, height, width = preprocess.input_size
    interpolation = InterpolationMode(preprocess.interpolation)
    scale = math.floor(height / preprocess.crop_pct)
    return T.Compose([T.Resize(scale, interpolation=interpolation), T.CenterCrop((height, width))])


class SampleDataset:
    """A map-style dataset over `Sample`s: torchvision's default loader (PIL, RGB) then `transform`."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        sample = self.samples[index]
        return self.transform(default_loader(str(sample.path))), sample.target
