"""Image-folder datasets for fine-tuning: torchvision's ImageFolder, timm/torchvision transforms.

Layout: `DIR/<class>/<image>` (a seeded, stratified fraction is held out), or `DIR/train/<class>/...` and
`DIR/val/<class>/...` (the `val/` images are held out). Every check that can fail runs here, before
any training: no images, fewer than two classes, train/val class lists that differ. Files with an
image extension that Pillow cannot read are skipped and counted (ImageFolder's `is_valid_file` hook
probes each one once), so one corrupt file never stops an epoch halfway.

The dataset's identity (`DatasetIdentity`) is the sha256 of the sorted `split/class/file` list plus
the split rule: two evaluations are comparable only when their identities are equal.
"""

from __future__ import annotations

import hashlib
import random
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

    def summary(self) -> str:
        return (f"{self.identity.key}: {len(self.classes)} classes, {len(self.train)} train / {len(self.heldout)} "
                f"held-out images ({self.identity.split}); {len(self.unreadable)} unreadable file(s) skipped")


def _readable(unreadable: list[Path]) -> Callable[[str], bool]:
    """ImageFolder's `is_valid_file`: image extension and Pillow can open and verify it (else counted)."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def check(path: str) -> bool:
        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        try:
            with Image.open(path) as image:
                image.verify()
            return True
        except Exception:  # noqa: BLE001 - any decoder failure means "cannot train on this file"
            unreadable.append(Path(path))
            return False

    return check


def _scan(directory: Path, unreadable: list[Path]) -> tuple[list[str], list[Sample]]:
    from torchvision.datasets import ImageFolder

    if not directory.is_dir():
        raise ValueError(f"dataset folder {directory} does not exist")
    subdirs = [d for d in directory.iterdir() if d.is_dir()]
    if not subdirs:
        raise ValueError(f"dataset folder {directory} has no class sub-folders (expected {directory}/<class>/<image>)")
    try:
        folder = ImageFolder(str(directory), is_valid_file=_readable(unreadable), allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"dataset folder {directory}: {exc}") from None
    samples = [Sample(Path(p), int(t)) for p, t in folder.samples]
    if not samples:
        raise ValueError(f"dataset folder {directory} holds no readable images "
                         f"({len(unreadable)} unreadable file(s) skipped)")
    present = sorted({s.target for s in samples})
    if len(present) < 2:
        name = folder.classes[present[0]]
        raise ValueError(f"dataset folder {directory} has images of one class only ({name!r}); "
                         "a classifier needs at least two")
    return list(folder.classes), samples


def _fingerprint(root: Path, parts: Sequence[tuple[str, list[Sample]]], classes: Sequence[str]) -> str:
    h = hashlib.sha256()
    for split, samples in parts:
        for line in sorted(f"{split}/{classes[s.target]}/{s.path.name}" for s in samples):
            h.update(line.encode() + b"\n")
    return h.hexdigest()


def load_image_folder(root: Path, *, val_fraction: float = 0.2, seed: int = 0, name: str | None = None) -> ImageFolderData:
    """Scan `root` (see the module docstring) into train and held-out lists; ValueError on bad input."""
    root = Path(root)
    unreadable: list[Path] = []
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train = _scan(root / "train", unreadable)
        val_classes, heldout = _scan(root / "val", unreadable)
        if val_classes != classes:
            raise ValueError(f"{root}: train/ and val/ have different classes ({classes} vs {val_classes})")
        split = "train/ and val/ folders"
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val fraction must be in (0, 1), got {val_fraction}")
        classes, samples = _scan(root, unreadable)
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
    return ImageFolderData(root, classes, train, heldout, identity, unreadable)


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


def write_digits_folder(root: Path) -> Path:
    """sklearn's digits as an image folder: `train/<digit>/` the first 1400, `val/<digit>/` the last 397.

    Each 8x8 image is an 8-bit grey PNG (what a client sends the service); names keep sklearn's order.
    Idempotent: an existing complete folder is reused.
    """
    from export.train import digit_png, digits_split

    root = Path(root)
    marker = root / ".complete"
    if marker.exists():
        return root
    split = digits_split()
    for part, images, labels, offset in (("train", split.train_images, split.train_labels, 0),
                                         ("val", split.test_images, split.test_labels, len(split.train_images))):
        for i, (image, label) in enumerate(zip(images, labels)):
            path = root / part / str(int(label)) / f"{offset + i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(digit_png(image))
    marker.write_text("sklearn digits, first 1400 train, last 397 val\n")
    return root
