"""Image decoding and the timm eval transform: modes, orientation, frames, limits, parity with timm."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.manifest import PreprocessConfig
from service.preprocess import decode_image, preprocess_image

CFG = PreprocessConfig(input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       interpolation="bicubic", crop_pct=0.875)


def encode(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 80, h: int = 60) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_common_formats_become_float32_chw(fmt: str) -> None:
    out = preprocess_image(encode(gradient(), fmt), CFG, 10**6)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P-transparent", "RGBA", "CMYK", "1", "I;16", "I", "F"])
def test_every_mode_is_converted_to_rgb(mode: str) -> None:
    if mode == "I;16":
        arr = (np.asarray(gradient().convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr)
        data = encode(img, "PNG")
    elif mode in ("I", "F"):
        img = gradient().convert("L").convert(mode)
        data = encode(img, "TIFF")
    elif mode == "CMYK":
        data = encode(gradient().convert("CMYK"), "JPEG")
    elif mode == "P-transparent":
        data = encode(gradient().convert("P"), "PNG", transparency=0)
    else:
        data = encode(gradient().convert(mode), "PNG")
    rgb = decode_image(data, 10**6)
    assert rgb.mode == "RGB" and rgb.size == (80, 60)


def test_sixteen_bit_grey_is_rescaled_not_clipped() -> None:
    arr = np.full((10, 10), 65535, dtype=np.uint16)
    rgb = decode_image(encode(Image.fromarray(arr)), 10**6)
    assert np.asarray(rgb).min() == 255


def test_exif_orientation_is_applied() -> None:
    img = gradient(80, 40)  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rgb = decode_image(encode(img, "JPEG", exif=exif.tobytes()), 10**6)
    assert rgb.size == (40, 80)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    rgb = np.asarray(decode_image(buf.getvalue(), 10**6))
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 2] < 50


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
            + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(_png_header_only(100_000, 100_000), max_pixels=40_000_000)
    with pytest.raises(PayloadTooLarge):
        decode_image(encode(gradient(80, 60)), max_pixels=80 * 60 - 1)


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", InvalidInput),
        (b"hello world, not an image", UnsupportedMediaType),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", UnsupportedMediaType),
    ],
    ids=["empty", "text", "eps-not-allowed"],
)
def test_non_images_are_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data, 10**6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_truncated_images_are_invalid_input_not_crashes(fmt: str) -> None:
    data = encode(gradient(200, 200), fmt)
    for cut in (len(data) // 2, len(data) - 20, 40):
        with pytest.raises((InvalidInput, UnsupportedMediaType)):
            decode_image(data[:cut], 10**6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(97, 61), (61, 97), (40, 40)])
def test_matches_timm_eval_transform(interpolation: str, size: tuple[int, int]) -> None:
    timm_data = pytest.importorskip("timm.data")
    cfg = CFG.model_copy(update={"interpolation": interpolation, "input_size": (3, 24, 24)})
    img = gradient(*size)
    transform = timm_data.create_transform(
        input_size=cfg.input_size, interpolation=interpolation, crop_pct=cfg.crop_pct, mean=cfg.mean, std=cfg.std
    )
    expected = transform(img).numpy()
    got = preprocess_image(encode(img), cfg, 10**6)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_extreme_aspect_ratio_resizes_only_the_crop_region() -> None:
    import resource

    img = Image.new("RGB", (1, 200_000), (10, 20, 30))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = preprocess_image(encode(img), CFG, 10**6)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert out.shape == (3, 32, 32)
    expected = (np.array([10, 20, 30]) / 255.0 - np.array(CFG.mean)) / np.array(CFG.std)
    np.testing.assert_allclose(out[:, 16, 16], expected, atol=1e-2)
    assert grown_kb < 200_000, f"peak memory grew by {grown_kb} kB"


@pytest.mark.parametrize("size", [(40, 2000), (2000, 40)])
def test_box_resize_matches_full_resize_then_crop(size: tuple[int, int]) -> None:
    from service.preprocess import resize_and_crop

    img = gradient(*size)
    cfg = CFG.model_copy(update={"interpolation": "bilinear"})
    fast = np.asarray(resize_and_crop(img, cfg), dtype=np.int16)
    # the reference: full resize then crop (what timm does)
    _, height, width = cfg.input_size
    scale = int(height / cfg.crop_pct)
    w, h = img.size
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    full = img.resize(new, resample=Image.Resampling.BILINEAR)
    left, top = int(round((new[0] - width) / 2.0)), int(round((new[1] - height) / 2.0))
    ref = np.asarray(full.crop((left, top, left + width, top + height)), dtype=np.int16)
    assert np.abs(fast - ref).max() <= 1


def test_default_input_range_is_the_normalised_pixel_range_widened() -> None:
    from service.manifest import INPUT_RANGE_MARGIN, default_input_range

    lo, hi = default_input_range((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # pixels normalise to [-1, 1]
    assert (lo, hi) == (-1 - 2 * INPUT_RANGE_MARGIN, 1 + 2 * INPUT_RANGE_MARGIN)
    assert CFG.value_range == default_input_range(CFG.mean, CFG.std)
    assert CFG.model_copy(update={"input_range": (-3.0, 3.0)}).value_range == (-3.0, 3.0)
    with pytest.raises(ValueError):
        PreprocessConfig(input_size=(3, 8, 8), mean=(0, 0, 0), std=(1, 1, 1), input_range=(1.0, -1.0))


def test_decoded_bytes_are_bounded_per_mode() -> None:
    """A float image costs 4 bytes per pixel, a grey one 1: the byte bound tells them apart."""
    float_image = encode(Image.new("F", (1000, 1000), 0.5), "TIFF")
    grey_image = encode(Image.new("L", (1000, 1000), 128), "PNG")
    with pytest.raises(PayloadTooLarge, match="decodes to 4000000 bytes"):
        decode_image(float_image, 10**7, CFG, max_bytes=2_000_000)
    assert decode_image(grey_image, 10**7, CFG, max_bytes=2_000_000).mode == "RGB"


@pytest.mark.parametrize("mode", ["I;16", "F", "RGB"])
def test_a_giant_is_reduced_in_its_own_mode_with_the_same_result(mode: str) -> None:
    """Reduced before converting (box filter, to at least twice the resize size): close to the full path."""
    rgb = gradient(1600, 1200)
    grey = np.asarray(rgb.convert("L"), dtype=np.float32)
    image = {"I;16": Image.fromarray((grey * 257).astype(np.uint16)), "F": Image.fromarray(grey / 255 * 1000),
             "RGB": rgb}[mode]
    data = encode(image, "TIFF" if mode == "F" else "PNG")
    from service.preprocess import normalise, resize_and_crop

    reduced = preprocess_image(data, CFG, 10**7)
    full = decode_image(data, 10**7)  # without cfg: decoded and converted at full size
    assert full.size == (1600, 1200)
    reference = normalise(resize_and_crop(full, CFG), CFG)
    assert np.abs(reduced - reference).max() < 0.1  # of a normalised range of ~4.5


def test_exif_orientation_survives_the_reduction() -> None:
    img = gradient(1600, 800)  # landscape, reduced by 8 before the rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = decode_image(encode(img, "JPEG", exif=exif.tobytes()), 10**7, CFG)
    assert rgb.width < rgb.height


def test_only_images_declaring_few_pixels_are_decoded_inline() -> None:
    import io as _io

    from PIL import Image as _Image

    from service.errors import InvalidInput as _InvalidInput
    from service.preprocess import INLINE_DECODE_PIXELS, preprocess_small_image

    def encoded(w: int, h: int, fmt: str) -> bytes:
        buf = _io.BytesIO()
        _Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format=fmt)
        return buf.getvalue()

    cfg = CFG
    small = encoded(128, 128, "PNG")
    assert INLINE_DECODE_PIXELS == 128 * 128
    np.testing.assert_array_equal(preprocess_small_image(small, cfg, 10**6), preprocess_image(small, cfg, 10**6))
    assert preprocess_small_image(encoded(129, 128, "PNG"), cfg, 10**6) is None  # left to the worker pool
    with pytest.raises(_InvalidInput):  # a bad small image fails as in the pool
        preprocess_small_image(encoded(8, 8, "JPEG")[:200], cfg, 10**6)


def float32_steps(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The normalisation as float32 arithmetic on every pixel (what the looked-up table must equal bit for bit)."""
    arr = np.array(image, dtype=np.float32)
    arr /= np.float32(255.0)
    arr -= np.asarray(cfg.mean, dtype=np.float32)
    arr /= np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@pytest.mark.parametrize("mean, std", [
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ((0.1, 0.9, 0.333), (0.07, 3.0, 0.3)),
])
def test_normalise_is_bit_identical_to_float32_arithmetic(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    from service.preprocess import normalise

    cfg = PreprocessConfig(input_size=(3, 16, 48), mean=mean, std=std, interpolation="bilinear", crop_pct=1.0)
    every_value = np.stack([np.arange(256).reshape(16, 16)[:, ::-1], np.arange(256).reshape(16, 16).T,
                            np.arange(256).reshape(16, 16)], -1).repeat(3, axis=1).astype(np.uint8)  # 16 x 48
    noise = np.random.default_rng(0).integers(0, 256, (16, 48, 3), dtype=np.uint8)
    for pixels in (every_value, noise):
        image = Image.fromarray(pixels)
        out = normalise(image, cfg)
        expected = float32_steps(image, cfg)
        assert out.dtype == np.float32 and out.shape == (3, 16, 48) and out.flags.c_contiguous
        assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))
        out[0, 0, 0] = 123.0  # the caller's own array: the shared table is untouched
        assert np.array_equal(normalise(image, cfg).view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("size, crop_pct", [((32, 32), 1.0), ((36, 36), 0.875), ((33, 32), 1.0), ((48, 40), 1.0)])
def test_resize_and_crop_of_an_image_near_the_model_size(size: tuple[int, int], crop_pct: float) -> None:
    """An image already the model's size is used as it is; the others still resize and crop (same pixels)."""
    from service.preprocess import resize_and_crop

    cfg = PreprocessConfig(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                           interpolation="bilinear", crop_pct=crop_pct)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = resize_and_crop(image, cfg)
    assert out.size == (32, 32) and out.mode == "RGB"
    scale = int(32 / crop_pct)
    w, h = size
    new = (scale, max(1, int(scale * h / w))) if w <= h else (max(1, int(scale * w / h)), scale)
    full = image if new == size else image.resize(new, resample=Image.Resampling.BILINEAR)
    left, top = int(round((new[0] - 32) / 2.0)), int(round((new[1] - 32) / 2.0))
    assert np.array_equal(np.asarray(out), np.asarray(full.crop((left, top, left + 32, top + 32))))


def test_normalised_bounds_are_the_extremes_normalise_reaches() -> None:
    from service.preprocess import normalise, normalised_bounds

    every_value = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2))
    for mean, std in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.1, 0.9), (2.0, 0.5, 0.01))):
        cfg = PreprocessConfig(input_size=(3, 16, 16), mean=mean, std=std, interpolation="bilinear", crop_pct=1.0)
        out = normalise(every_value, cfg)
        assert normalised_bounds(cfg) == (float(out.min()), float(out.max()))
        noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8))
        lo, hi = normalised_bounds(cfg)
        assert lo <= normalise(noise, cfg).min() and normalise(noise, cfg).max() <= hi
