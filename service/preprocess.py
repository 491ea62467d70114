"""Image bytes -> `pixel_values` float32 [3, H, W], as the model's manifest says (timm eval transform).

Decode with Pillow behind explicit limits: the pixel count is checked from the header before
any pixel is decoded (decompression bombs), the file is verified, only the first frame of an
animated/multi-frame image is used, EXIF orientation is applied, and every mode (palette,
alpha, CMYK, 16-bit, float) becomes 8-bit RGB. Then: resize the shorter side to
size / crop_pct with the manifest's interpolation, centre-crop, scale to [0, 1], normalise.
These are plain functions; the registry runs them in a thread pool, off the event loop.
"""

from __future__ import annotations

import io
import math
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.manifest import PreprocessConfig

# Formats we accept; anything else Pillow could open (EPS, PSD...) is refused.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the first frame of an image to 8-bit RGB, refusing bombs, corrupt and unknown files."""
    if not data:
        raise InvalidInput("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            _check_pixels(probe.size, max_pixels)
            probe.verify()
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            _check_pixels(image.size, max_pixels)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_rgb(image)
    except (PayloadTooLarge, InvalidInput, UnsupportedMediaType):
        raise
    except UnidentifiedImageError:
        if looks_like_supported_image(data):
            raise InvalidInput("corrupt or truncated image") from None
        raise UnsupportedMediaType(f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"image has more than {max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error) as exc:
        raise InvalidInput(f"corrupt or truncated image: {type(exc).__name__}") from None


def looks_like_supported_image(data: bytes) -> bool:
    """Whether the bytes start with the signature of an accepted format (then a failure is corruption)."""
    head = data[:16]
    return (
        head.startswith(b"\xff\xd8\xff")
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith((b"GIF87a", b"GIF89a"))
        or head.startswith(b"BM")
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or head.startswith((b"II*\x00", b"MM\x00*"))
    )


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} = {width * height} pixels, limit {max_pixels}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 'RGB'. High bit-depth greys are rescaled to 8 bits instead of clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        else:
            finite = arr[np.isfinite(arr)]
            scale = float(finite.max()) if finite.size and finite.max() > 255 else 255.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=scale, neginf=0.0)
        grey = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """timm's eval transform: Resize(floor(size / crop_pct)) then CenterCrop(size)."""
    _, height, width = cfg.input_size
    resample = _RESAMPLE[cfg.interpolation]
    scale_h, scale_w = math.floor(height / cfg.crop_pct), math.floor(width / cfg.crop_pct)
    w, h = image.size
    if scale_h == scale_w:  # shorter side to the scale size, aspect kept (torchvision Resize(int))
        if w <= h:
            new_w, new_h = scale_w, max(1, int(scale_w * h / w))
        else:
            new_h, new_w = scale_h, max(1, int(scale_h * w / h))
    else:
        new_w, new_h = scale_w, scale_h
    left = int(round((new_w - width) / 2.0))
    top = int(round((new_h - height) / 2.0))
    if new_w * new_h > 16 * scale_w * scale_h:
        # extreme aspect ratio (1 x 200000 px): never materialise the full resize, only the crop's
        # source region, with the same sample centres and filter scale
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
        return image.resize((width, height), resample=resample, box=box)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample=resample)
    return image.crop((left, top, left + width, top + height))


def normalise(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, scaled to [0, 1] then (x - mean) / std."""
    arr = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def preprocess_image(data: bytes, cfg: PreprocessConfig, max_pixels: int) -> np.ndarray:
    """Image file bytes -> float32 [3, H, W] for the model whose manifest holds `cfg`."""
    return normalise(resize_and_crop(decode_image(data, max_pixels), cfg), cfg)
