"""Image bytes -> `pixel_values` float32 [3, H, W], as the model's manifest says (timm eval transform).

Decode with Pillow behind explicit limits: the pixel count and the decoded size in bytes are
checked from the header before any pixel is decoded (decompression bombs), the file is verified, only the first frame
of an animated/multi-frame image is used, EXIF orientation is applied, and every mode (palette,
alpha, CMYK, 16-bit, float) becomes 8-bit RGB, after reducing an image far larger than the model
needs in its own mode (so a 16-bit or float giant never gets a full-size float copy). Then: resize the shorter side to
size / crop_pct with the manifest's interpolation, centre-crop, scale to [0, 1], normalise.
These are plain functions; the model store runs them in its thread pool, off the event loop, except
for small images (`preprocess_small_image`), whose hand-off to a thread would cost more CPU than their decode.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

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


#: images whose header declares at most this many pixels are decoded where the request is handled
INLINE_DECODE_PIXELS = 128 * 128


def decode_image(
    data: bytes, max_pixels: int, cfg: PreprocessConfig | None = None, max_bytes: int | None = None,
    inline_pixels: int | None = None,
) -> Image.Image | None:
    """Decode the first frame of an image to 8-bit RGB, refusing bombs, corrupt and unknown files.

    With `cfg`, an image much larger than the model needs is reduced while it decodes (JPEG draft)
    or right after, in its own mode (a box filter), before any conversion: no full-size copy in
    another mode or in floating point is ever made. `max_bytes` bounds the decoded size in bytes
    (a 16-bit or float image costs more per pixel than an 8-bit one). With `inline_pixels`, an image
    whose header declares more pixels than that is not decoded: None (see `preprocess_small_image`).
    """
    if not data:
        raise InvalidInput("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            _check_pixels(image.size, max_pixels)
            _check_bytes(image, max_bytes)
            if inline_pixels is not None and image.width * image.height > inline_pixels:
                return None
            if type(image).verify is not ImageFile.ImageFile.verify:
                # a format with an integrity check of its own (PNG's chunk CRCs): verify() consumes the
                # file, so it is opened again; for the others verify() only closes it (one open suffices)
                image.verify()
                image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
                _check_pixels(image.size, max_pixels)
                _check_bytes(image, max_bytes)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            factor = _reduction_factor(image.size, cfg)
            if factor > 1 and image.format == "JPEG":
                image.draft(None, (image.width // factor, image.height // factor))  # decode at 1/2..1/8 scale
            image.load()
            orientation = image.getexif().get(_ORIENTATION)
            factor = _reduction_factor(image.size, cfg)
            if factor > 1:
                if image.mode in ("1", "P"):
                    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                image = image.resize(
                    (image.width // factor, image.height // factor), Image.Resampling.BOX, reducing_gap=None
                )
            image = _orient(image, orientation)
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


_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orient(image: Image.Image, orientation: object) -> Image.Image:
    """Apply the EXIF orientation read before decoding (a reduced copy no longer carries the EXIF)."""
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _reduction_factor(size: tuple[int, int], cfg: PreprocessConfig | None) -> int:
    """How much an image can shrink (box filter) and still be at least twice what the resize needs.

    Twice keeps the final resize's own filter in charge of the result (Pillow's `reducing_gap`)."""
    if cfg is None:
        return 1
    _, height, width = cfg.input_size
    scale_h, scale_w = math.floor(height / cfg.crop_pct), math.floor(width / cfg.crop_pct)
    w, h = size
    if scale_h == scale_w:  # the shorter side is resized to the scale size
        return max(1, min(w, h) // (2 * scale_w))
    return max(1, min(w // (2 * scale_w), h // (2 * scale_h)))


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """Bytes Pillow holds for an image of this mode and size, plus an RGB copy when it needs converting."""
    w, h = size
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    if mode in ("1", "P"):
        per_pixel += 4  # converted to RGB(A) before any reduction
    return w * h * per_pixel


def _check_bytes(image: Image.Image, max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    need = decoded_bytes(image.mode, image.size)
    if need > max_bytes:
        raise PayloadTooLarge(
            f"image {image.width}x{image.height} in mode {image.mode} decodes to {need} bytes, limit {max_bytes}"
        )


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
    """Any Pillow mode -> 'RGB'. High bit-depth greys are rescaled to 8 bits instead of clipped.

    Works in float32, in place: one 4-byte copy of the (already reduced) image, never float64."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        if not arr.flags.writeable:
            arr = arr.copy()
        if image.mode.startswith("I;16"):
            scale = 65535.0
        else:
            finite_max = float(np.nanmax(np.where(np.isinf(arr), np.nan, arr))) if arr.size else 0.0
            scale = finite_max if math.isfinite(finite_max) and finite_max > 255 else 255.0
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=scale, neginf=0.0)
        np.multiply(arr, np.float32(255.0 / scale), out=arr)
        np.add(arr, np.float32(0.5), out=arr)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
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
    elif (w, h) == (width, height):  # already the model's size: the crop would be a copy of every pixel
        return image
    return image.crop((left, top, left + width, top + height))


def normalise(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, scaled to [0, 1] then (x - mean) / std.

    A pixel has 256 possible values per channel: each channel's results are computed once per
    (mean, std) (`_channel_table`, with the very float32 steps of `normalise_arithmetic`) and looked up."""
    pixels = np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(image.height, image.width, 3)
    table = _channel_table(cfg.mean, cfg.std)
    # [3, H, W]: entry of each value in the flat table (one ufunc call, no broadcast, straight to the index type)
    index = np.add(pixels.transpose(2, 0, 1), _channel_offsets(image.height, image.width), dtype=np.intp)
    return table.take(index)


def normalise_arithmetic(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 [..., 3]: x / 255, minus the mean, over the std, each step rounded to float32."""
    arr = np.array(pixels, dtype=np.float32)  # a fresh array: the steps below work in place
    arr /= np.float32(255.0)
    arr -= mean
    arr /= std
    return arr


@functools.lru_cache(maxsize=16)
def _channel_offsets(height: int, width: int) -> np.ndarray:
    """intp [3, H, W]: channel c's start (c * 256) in the flat table, at every pixel (the model's input size)."""
    offsets = np.ascontiguousarray(
        np.broadcast_to(np.arange(3, dtype=np.intp).reshape(3, 1, 1) * 256, (3, height, width)))
    offsets.flags.writeable = False
    return offsets


@functools.lru_cache(maxsize=64)
def _channel_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 [3 * 256]: entry c * 256 + v is `normalise_arithmetic` of value v in channel c."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # [256, 3]: every value, every channel
    table = np.ascontiguousarray(normalise_arithmetic(values, *_mean_std(mean, std)).T).ravel()
    table.flags.writeable = False  # shared by every request of the model
    return table


def normalised_bounds(cfg: PreprocessConfig) -> tuple[float, float]:
    """The smallest and largest value `normalise` can give under `cfg` (NaN when one is not a number): a
    range every preprocessed image lies in, known once per model instead of scanned per image."""
    return _table_bounds(cfg.mean, cfg.std)


@functools.lru_cache(maxsize=64)
def _table_bounds(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[float, float]:
    table = _channel_table(mean, std)
    return float(table.min()), float(table.max())


@functools.lru_cache(maxsize=64)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)


def preprocess_small_image(
    data: bytes, cfg: PreprocessConfig, max_pixels: int, max_bytes: int | None = None
) -> np.ndarray | None:
    """`preprocess_image` on the calling thread for an image whose header declares at most
    INLINE_DECODE_PIXELS pixels (a thread hand-off would cost more than its decode); None, with nothing
    decoded, for a larger one, which belongs in a worker thread. Bad images raise as in `preprocess_image`."""
    image = decode_image(data, max_pixels, cfg, max_bytes, inline_pixels=INLINE_DECODE_PIXELS)
    return None if image is None else normalise(resize_and_crop(image, cfg), cfg)


def preprocess_image(
    data: bytes, cfg: PreprocessConfig, max_pixels: int, max_bytes: int | None = None
) -> np.ndarray:
    """Image file bytes -> float32 [3, H, W] for the model whose manifest holds `cfg`."""
    image = decode_image(data, max_pixels, cfg, max_bytes)
    assert image is not None  # only a call with `inline_pixels` returns None
    return normalise(resize_and_crop(image, cfg), cfg)
