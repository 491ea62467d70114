"""A small digits image folder for the export tests that fine-tune or scan one."""

from __future__ import annotations

from pathlib import Path

from export.train import digit_png, digits_split


def digits_folder(root: Path, n_train: int, n_val: int) -> Path:
    """A small train/ + val/ image folder of sklearn digits (8x8 grey PNGs)."""
    split = digits_split()
    for part, images, labels in (("train", split.train_images[:n_train], split.train_labels[:n_train]),
                                 ("val", split.test_images[:n_val], split.test_labels[:n_val])):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / part / str(int(label)) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(digit_png(image))
    return root
