"""Generate tests/reliability/corpus/: the worst inputs we know of, each with the status it must get.

Run `python tests/reliability/make_corpus.py` to (re)write the corpus; the files are committed so a
regression test replays exactly the same bytes. Every file is small (the largest is a real
decompression bomb of ~50 KB). `index.json` lists, per case: the file, where it is sent
(`classify` = POST /v1/models/{m}/classify, `infer` = POST /v2/models/{m}/infer), the request's
content type and extra headers, the statuses it may get and why. v2 cases assume the tiny test
models' input `pixel_values` FP32 [n, 3, 32, 32] with max_batch_size 8.

The decoder cases are crafted at the byte level where Pillow cannot write them (headers declaring
30000x30000 pixels, 16-bit RGB PNG, zero-sized IHDR, truncated and CRC-broken chunks).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CORPUS = Path(__file__).resolve().parent / "corpus"
INDEX = "index.json"
HEADER_LENGTH = "Inference-Header-Content-Length"
IMAGE_OK = [200]
BAD_IMAGE = [400, 415]


@dataclass
class Case:
    name: str
    file: str
    endpoint: str  # classify | infer
    content_type: str | None
    expect: list[int]
    why: str
    headers: dict[str, str] = field(default_factory=dict)


# -- byte-level image writers ------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_raw(width: int, height: int, bit_depth: int, color_type: int, rows: bytes,
            extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A PNG from already-filtered scanlines (each row prefixed by its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = [png_chunk(b"IHDR", ihdr)]
    for kind, data in extra or []:
        chunks.append(png_chunk(kind, data))
    chunks += [png_chunk(b"IDAT", zlib.compress(rows, 9)), png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def png_header_bomb(width: int, height: int) -> bytes:
    """An IHDR declaring width x height RGB pixels, followed by a few bytes of IDAT: tiny on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def png_rgb16(width: int = 40, height: int = 30) -> bytes:
    rng = np.random.default_rng(16)
    pixels = rng.integers(0, 65535, size=(height, width, 3), dtype=np.uint16).astype(">u2")
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    return png_raw(width, height, 16, 2, rows)


def pil(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(rgb, "RGB")


def gif_header_bomb() -> bytes:
    """GIF logical screen and frame of 65535x65535 with a one-byte LZW stream."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def jpeg_header_bomb() -> bytes:
    """A baseline JPEG whose SOF0 declares 65000x65000, cut after the header."""
    small = pil(gradient(size=(16, 16)), "JPEG", quality=80)
    sof = small.index(b"\xff\xc0")
    patched = bytearray(small)
    struct.pack_into(">HH", patched, sof + 5, 65000, 65000)
    return bytes(patched)


def tiff_header_bomb() -> bytes:
    small = bytearray(pil(Image.new("L", (8, 8)), "TIFF"))
    # little-endian TIFF: walk IFD0 and set ImageWidth (256) / ImageLength (257) to 60000
    ifd = struct.unpack_from("<I", small, 4)[0]
    count = struct.unpack_from("<H", small, ifd)[0]
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from("<HH", small, at)
        if tag in (256, 257):
            if typ == 3:
                struct.pack_into("<H", small, at + 8, 60000)
            else:
                struct.pack_into("<I", small, at + 8, 60000)
    return bytes(small)


def png_real_bomb() -> bytes:
    """A real, complete 7000x7000 greyscale PNG (49 M pixels, above the 40 M default) of ~50 KB."""
    rows = (b"\x00" + b"\x00" * 7000) * 7000
    return png_raw(7000, 7000, 8, 0, rows)


def png_extreme_aspect() -> bytes:
    """1 x 200000 pixels (under the pixel limit, ~500 bytes): resizing the short side to the model's
    size first would ask for 36 x 7.2 M pixels (or 256 x 51 M for a 224 px model)."""
    rows = b"\x00\x80" * 200000
    return png_raw(1, 200000, 8, 0, rows)


def png_ztxt_bomb() -> bytes:
    """A valid small image with a zTXt chunk that inflates to 64 MB of text."""
    rows = b"".join(b"\x00" + bytes([y * 8 % 256]) * 3 * 16 for y in range(16))
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (64 * 1024 * 1024), 9)
    return png_raw(16, 16, 8, 2, rows, extra=[(b"zTXt", ztxt)])


def png_zero_size() -> bytes:
    return png_raw(0, 0, 8, 2, b"")


def png_bad_crc() -> bytes:
    data = bytearray(pil(gradient(), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack_from(">I", data, idat - 4)[0]
    data[idat + 4 + length] ^= 0xFF  # first CRC byte of IDAT
    return bytes(data)


def png_bad_zlib() -> bytes:
    data = pil(gradient(), "PNG")
    idat = data.index(b"IDAT")
    length = struct.unpack_from(">I", data, idat - 4)[0]
    garbage = bytes((i * 37 + 11) % 256 for i in range(length))
    return data[: idat - 4] + png_chunk(b"IDAT", garbage) + data[idat + 4 + length + 4:]


def animated_gif() -> bytes:
    frames = [gradient("P"), gradient("P").rotate(90), gradient("P").rotate(180)]
    return pil(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def multipage_tiff() -> bytes:
    return pil(gradient(), "TIFF", save_all=True, append_images=[gradient("L"), gradient("CMYK")])


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    return pil(gradient(size=(80, 40)), "JPEG", exif=exif.tobytes())


def palette_with_transparency() -> bytes:
    image = gradient("P")
    return pil(image, "PNG", transparency=0)


def float_tiff() -> bytes:
    arr = np.linspace(-1e6, 1e6, 48 * 64, dtype=np.float32).reshape(48, 64)
    arr[0, 0] = np.nan
    arr[0, 1] = np.inf
    return pil(Image.fromarray(arr, "F"), "TIFF")


# -- request bodies ------------------------------------------------------------------------------
def png_grey16_giant(width: int = 8000, height: int = 5000) -> bytes:
    """A 40 Mpx 16-bit greyscale PNG of ~80 KB: 80 MB decoded; converted in float64 it cost ~1 GB."""
    arr = np.zeros((height, width), dtype=np.uint16)
    arr[::7, ::3] = 60000
    return pil(Image.fromarray(arr), "PNG")


def tiff_float_giant(width: int = 8000, height: int = 5000) -> bytes:
    """A 40 Mpx 32-bit float TIFF of ~240 KB (deflate): 160 MB decoded, ~1.4 GB with float64 temporaries."""
    return pil(Image.new("F", (width, height), 0.5), "TIFF", compression="tiff_adobe_deflate")


def v2_json_header_bomb(numbers: int = 14_000_000) -> tuple[bytes, int]:
    """(gzip body, JSON length): a JSON tensor of `numbers` zeros sent as the 'header' of a binary request,
    gzip-compressed (~28 KB for 28 MB): the JSON size guard must apply whatever the framing."""
    header = (b'{"inputs":[{"name":"pixel_values","shape":[1,3,32,32],"datatype":"FP32","data":['
              + b"0," * (numbers - 1) + b"0]}]}")
    return gzip.compress(header, 9, mtime=0), len(header)


def multipart(body_parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "vitservebound") -> bytes:
    out = b""
    for name, filename, ctype, content in body_parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        out += head.encode() + b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def v2_json(shape: list[int], data: object, datatype: str = "FP32", name: str = "pixel_values") -> bytes:
    body = {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}
    return json.dumps(body, separators=(",", ":")).encode()


def v2_binary(header: dict[str, object], binary: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + binary, len(head)


def binary_input(size: int, shape: list[int] | None = None) -> dict[str, object]:
    return {"inputs": [{"name": "pixel_values", "shape": shape or [1, 3, 32, 32], "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}]}


def build_cases() -> list[tuple[Case, bytes]]:
    good_png = pil(gradient(), "PNG")
    good_jpeg = pil(gradient(), "JPEG", quality=90)
    ones = np.ones(3 * 32 * 32, dtype=np.float32)
    cases: list[tuple[Case, bytes]] = []

    def add(name: str, endpoint: str, ctype: str | None, expect: list[int], why: str, data: bytes | Callable[[], bytes],
            ext: str = "bin", headers: dict[str, str] | None = None) -> None:
        body = data() if callable(data) else data
        cases.append((Case(name, f"{name}.{ext}", endpoint, ctype, expect, why, headers or {}), body))

    # images that must classify fine
    add("animated_gif", "classify", "image/gif", IMAGE_OK, "3-frame animation: first frame is used",
        animated_gif, "gif")
    add("multipage_tiff", "classify", "image/tiff", IMAGE_OK, "3 pages (RGB, L, CMYK)", multipage_tiff, "tiff")
    add("png_rgb16", "classify", "image/png", IMAGE_OK, "16 bits per channel RGB", png_rgb16, "png")
    add("png_grey16", "classify", "image/png", IMAGE_OK, "16-bit greyscale (I;16)",
        lambda: pil(Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20), "PNG"), "png")
    add("jpeg_cmyk", "classify", "image/jpeg", IMAGE_OK, "CMYK JPEG", lambda: pil(gradient("CMYK"), "JPEG"), "jpg")
    add("png_palette", "classify", "image/png", IMAGE_OK, "palette PNG", lambda: pil(gradient("P"), "PNG"), "png")
    add("png_palette_trns", "classify", "image/png", IMAGE_OK, "palette with a transparent index",
        palette_with_transparency, "png")
    add("png_rgba", "classify", "image/png", IMAGE_OK, "RGBA", lambda: pil(gradient("RGBA"), "PNG"), "png")
    add("png_la", "classify", "image/png", IMAGE_OK, "grey + alpha", lambda: pil(gradient("LA"), "PNG"), "png")
    add("png_bilevel", "classify", "image/png", IMAGE_OK, "1-bit", lambda: pil(gradient("1"), "PNG"), "png")
    add("png_1x1", "classify", "image/png", IMAGE_OK, "a single pixel",
        lambda: pil(Image.new("RGB", (1, 1)), "PNG"), "png")
    add("jpeg_exif_rotated", "classify", "image/jpeg", IMAGE_OK, "EXIF orientation 6", exif_rotated_jpeg, "jpg")
    add("jpeg_progressive", "classify", "image/jpeg", IMAGE_OK, "progressive JPEG",
        lambda: pil(gradient(), "JPEG", progressive=True), "jpg")
    add("webp", "classify", "image/webp", IMAGE_OK, "WebP", lambda: pil(gradient(), "WEBP"), "webp")
    add("bmp", "classify", "image/bmp", IMAGE_OK, "BMP", lambda: pil(gradient(), "BMP"), "bmp")
    add("tiff_float_nan", "classify", "image/tiff", IMAGE_OK, "32-bit float TIFF with NaN and inf", float_tiff, "tiff")
    add("png_as_jpeg_type", "classify", "image/jpeg", IMAGE_OK, "content type says JPEG, bytes are PNG",
        good_png, "png")
    add("png_octet_stream", "classify", "application/octet-stream", IMAGE_OK, "raw body as octet-stream",
        good_png, "png")
    # corrupt, truncated, not images
    add("empty", "classify", "image/png", [400], "zero bytes", b"")
    add("png_truncated", "classify", "image/png", [400], "PNG cut in half", good_png[: len(good_png) // 2], "png")
    add("png_header_only", "classify", "image/png", [400], "signature + IHDR only", good_png[:33], "png")
    add("jpeg_truncated", "classify", "image/jpeg", [400], "JPEG cut in half", good_jpeg[: len(good_jpeg) // 2], "jpg")
    add("png_bad_crc", "classify", "image/png", [400], "IDAT CRC flipped", png_bad_crc, "png")
    add("png_bad_zlib", "classify", "image/png", [400], "IDAT is not a zlib stream", png_bad_zlib, "png")
    add("png_zero_size", "classify", "image/png", [400], "IHDR declares 0x0", png_zero_size, "png")
    add("png_ztxt_bomb", "classify", "image/png", [200, 400, 413], "zTXt chunk inflating to 64 MB",
        png_ztxt_bomb, "png")
    add("text_as_png", "classify", "image/png", BAD_IMAGE, "plain text with an image type", b"hello world\n" * 20)
    add("html_as_jpeg", "classify", "image/jpeg", BAD_IMAGE, "HTML with an image type",
        b"<html><body><img src=x onerror=alert(1)></body></html>")
    add("pdf_as_png", "classify", "image/png", BAD_IMAGE, "a PDF header", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    add("svg_as_png", "classify", "image/svg+xml", BAD_IMAGE, "SVG is not decoded",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    add("ico", "classify", "image/x-icon", BAD_IMAGE, "a format Pillow reads but the service refuses",
        lambda: pil(gradient(size=(32, 32)), "ICO"), "ico")
    add("random_bytes", "classify", "image/jpeg", BAD_IMAGE, "random bytes",
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    # decompression bombs and amplification
    add("bomb_png_header_30000", "classify", "image/png", [413], "IHDR declares 30000x30000, 100 bytes on disk",
        lambda: png_header_bomb(30000, 30000), "png")
    add("bomb_png_real_7000", "classify", "image/png", [413], "complete 7000x7000 PNG of ~50 KB", png_real_bomb, "png")
    add("bomb_gif_header", "classify", "image/gif", [413], "GIF declaring 65535x65535", gif_header_bomb, "gif")
    add("bomb_jpeg_header", "classify", "image/jpeg", [413], "JPEG SOF declaring 65000x65000", jpeg_header_bomb, "jpg")
    add("bomb_tiff_header", "classify", "image/tiff", [413], "TIFF declaring 60000x60000", tiff_header_bomb, "tiff")
    add("png_extreme_aspect", "classify", "image/png", [200, 400, 413],
        "1x200000: must not be resized to millions of pixels", png_extreme_aspect, "png")
    # content types, JSON, base64, multipart
    add("png_no_content_type", "classify", None, [415], "no Content-Type", good_png, "png")
    add("png_text_plain", "classify", "text/plain", [415], "wrong Content-Type", good_png, "png")
    add("png_xml", "classify", "application/xml", [415], "wrong Content-Type", good_png, "png")
    add("json_invalid_base64", "classify", "application/json", [400], "not base64",
        b'{"image": "!!!not*base64???"}', "json")
    add("json_base64_text", "classify", "application/json", BAD_IMAGE, "base64 of text",
        json.dumps({"image": base64.b64encode(b"just some text").decode()}).encode(), "json")
    add("json_base64_data_url", "classify", "application/json", IMAGE_OK, "a data: URL",
        json.dumps({"image": "data:image/png;base64," + base64.b64encode(good_png).decode()}).encode(), "json")
    add("json_truncated", "classify", "application/json", [400], "JSON cut off", b'{"image": "iVBORw0', "json")
    add("json_list", "classify", "application/json", [400], "JSON list", b"[1, 2, 3]", "json")
    add("json_image_number", "classify", "application/json", [400], "image is a number", b'{"image": 5}', "json")
    add("json_deep_nesting", "classify", "application/json", [400], "20000 nested lists",
        b"[" * 20000 + b"]" * 20000, "json")
    add("json_not_utf8", "classify", "application/json", [400], "invalid UTF-8", b'{"image": "\xff\xfe"}', "json")
    boundary = "vitservebound"
    mp = f"multipart/form-data; boundary={boundary}"
    add("multipart_ok", "classify", mp, IMAGE_OK, "a well-formed multipart upload",
        multipart([("image", "a.png", "image/png", good_png)]), "txt")
    add("multipart_no_boundary", "classify", "multipart/form-data", [400], "boundary parameter missing",
        multipart([("image", "a.png", "image/png", good_png)]), "txt")
    add("multipart_truncated", "classify", mp, [400], "no closing boundary",
        multipart([("image", "a.png", "image/png", good_png)])[:-40], "txt")
    add("multipart_wrong_field", "classify", mp, [400], "field named 'file'",
        multipart([("file", "a.png", "image/png", good_png)]), "txt")
    add("multipart_text_field", "classify", mp, [400], "'image' is a text field",
        multipart([("image", None, None, b"not a file")]), "txt")
    add("multipart_garbage", "classify", mp, [400], "no multipart structure at all", b"\x00\x01garbage" * 50, "txt")
    add("multipart_many_files", "classify", mp, [400], "200 file parts",
        multipart([("image", f"{i}.png", "image/png", b"x") for i in range(200)]), "txt")
    # v2 JSON
    v2 = "application/json"
    add("v2_wrong_shape", "infer", v2, [400], "[1,3,16,16] for a 32x32 model",
        v2_json([1, 3, 16, 16], [0.0] * 768), "json")
    add("v2_wrong_datatype", "infer", v2, [400], "INT32 for an FP32 input",
        v2_json([1, 3, 32, 32], [0] * 3072, "INT32"), "json")
    add("v2_unknown_datatype", "infer", v2, [400], "datatype FP128",
        v2_json([1, 3, 32, 32], [0.0] * 3072, "FP128"), "json")
    add("v2_count_mismatch", "infer", v2, [400], "3071 values for 3072", v2_json([1, 3, 32, 32], [0.0] * 3071), "json")
    add("v2_negative_dim", "infer", v2, [400], "shape [-1,3,32,32]", v2_json([-1, 3, 32, 32], [0.0] * 3072), "json")
    add("v2_huge_dim", "infer", v2, [400], "batch of 10^12", v2_json([10**12, 3, 32, 32], [0.0] * 3), "json")
    add("v2_overflow_dims", "infer", v2, [400], "dims whose product overflows int64",
        v2_json([2**62, 2**62, 32, 32], [0.0]), "json")
    add("v2_batch_over_max", "infer", v2, [400], "9 images for max_batch_size 8",
        v2_json([9, 3, 32, 32], [0] * (9 * 3072)), "json")
    add("v2_zero_batch", "infer", v2, [400], "batch 0", v2_json([0, 3, 32, 32], []), "json")
    add("v2_strings", "infer", v2, [400], "strings as FP32 data", v2_json([1, 3, 32, 32], ["a"] * 3072), "json")
    add("v2_nan", "infer", v2, [400], "NaN (as a JSON extension literal) in the data",
        b'{"inputs":[{"name":"pixel_values","shape":[1,3,32,32],"datatype":"FP32","data":[NaN'
        + b",0.0" * 3071 + b"]}]}",
        "json")
    add("v2_float_overflow", "infer", v2, [400], "1e39 does not fit FP32",
        v2_json([1, 3, 32, 32], [1e39] + [0.0] * 3071), "json")
    add("v2_unknown_input", "infer", v2, [400], "input named 'x'",
        v2_json([1, 3, 32, 32], [0.0] * 3072, name="x"), "json")
    add("v2_no_inputs", "infer", v2, [400], "empty inputs", b'{"inputs": []}', "json")
    add("v2_inputs_not_list", "infer", v2, [400], "inputs is a string", b'{"inputs": "pixel_values"}', "json")
    add("v2_ragged", "infer", v2, [400], "ragged nested data", v2_json([1, 3, 32, 32], [[0.0], [0.0, 1.0]]), "json")
    add("v2_deep_nesting", "infer", v2, [400], "data nested 20000 deep",
        b'{"inputs":[{"name":"pixel_values","shape":[1,3,32,32],"datatype":"FP32","data":' + b"[" * 20000
        + b"]" * 20000 + b"}]}", "json")
    add("v2_not_json", "infer", v2, [400], "not JSON", b"\x00\x01\x02 not json", "json")
    add("v2_shape_strings", "infer", v2, [400], "shape of strings",
        v2_json(["1", "3", "a", "32"], [0.0] * 3072), "json")
    def v2_with(**extra: object) -> bytes:
        body: dict[str, object] = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                               "data": [0.5] * 3072}]}
        body.update(extra)
        return json.dumps(body, separators=(",", ":")).encode()

    add("v2_timeout_negative", "infer", v2, [400], "timeout parameter -5", v2_with(parameters={"timeout": -5}), "json")
    add("v2_timeout_string", "infer", v2, [400], "timeout parameter 'soon'", v2_with(parameters={"timeout": "soon"}),
        "json")
    add("v2_timeout_huge", "infer", v2, [400], "timeout 10^30 us does not fit Triton's 64-bit parameter",
        v2_with(parameters={"timeout": 10**30}), "json")
    add("v2_timeout_int64_max", "infer", v2, [200], "timeout 2^63-1 us is capped by the server's deadline",
        v2_with(parameters={"timeout": 2**63 - 1}), "json")
    add("v2_classification_huge", "infer", v2, [200, 400], "classification count 10^9 for 10 classes",
        v2_with(outputs=[{"name": "logits", "parameters": {"classification": 10**9}}]), "json")
    add("v2_classification_negative", "infer", v2, [400], "classification count -3",
        v2_with(outputs=[{"name": "logits", "parameters": {"classification": -3}}]), "json")
    add("v2_output_unknown", "infer", v2, [400], "an output the model does not have", v2_with(outputs=[{"name": "x"}]),
        "json")
    add("v2_params_deep", "infer", v2, [400], "a parameter nested 5000 deep",
        v2_with(parameters={"p": 0}).replace(b'{"p":0}', b'{"p":' + b"[" * 5000 + b"]" * 5000 + b"}"), "json")
    add("v2_id_long", "infer", v2, [200, 400], "a 64 KB request id", v2_with(id="i" * 65536), "json")
    # v2 binary extension
    octet = "application/octet-stream"
    body, hlen = v2_binary(binary_input(3072 * 4), ones.tobytes())
    add("v2_bin_ok", "infer", octet, [200], "a well-formed binary request", body, headers={HEADER_LENGTH: str(hlen)})
    add("v2_bin_header_beyond_body", "infer", octet, [400], "header length past the end of the body",
        body, headers={HEADER_LENGTH: str(len(body) + 100)})
    add("v2_bin_header_negative", "infer", octet, [400], "negative header length", body, headers={HEADER_LENGTH: "-5"})
    add("v2_bin_header_not_int", "infer", octet, [400], "header length '12abc'", body, headers={HEADER_LENGTH: "12abc"})
    add("v2_bin_header_huge", "infer", octet, [400], "header length 2^70", body, headers={HEADER_LENGTH: str(2**70)})
    add("v2_bin_header_splits_json", "infer", octet, [400], "header length cuts the JSON",
        body, headers={HEADER_LENGTH: str(hlen - 7)})
    short, hlen2 = v2_binary(binary_input(3072 * 4), ones.tobytes()[:-4])
    add("v2_bin_size_beyond_body", "infer", octet, [400], "binary_data_size larger than the bytes sent",
        short, headers={HEADER_LENGTH: str(hlen2)})
    extra, hlen3 = v2_binary(binary_input(3072 * 4), ones.tobytes() + b"\x00" * 8)
    add("v2_bin_trailing_bytes", "infer", octet, [400], "bytes left over after every input",
        extra, headers={HEADER_LENGTH: str(hlen3)})
    neg, hlen4 = v2_binary(binary_input(-4), ones.tobytes())
    add("v2_bin_size_negative", "infer", octet, [400], "binary_data_size -4", neg, headers={HEADER_LENGTH: str(hlen4)})
    odd, hlen5 = v2_binary(binary_input(3072 * 4 - 2), ones.tobytes()[:-2])
    add("v2_bin_size_not_multiple", "infer", octet, [400], "byte count not a multiple of 4 for FP32",
        odd, headers={HEADER_LENGTH: str(hlen5)})
    mism, hlen6 = v2_binary(binary_input(3072 * 4, [2, 3, 32, 32]), ones.tobytes())
    add("v2_bin_shape_mismatch", "infer", octet, [400], "shape [2,...] with bytes for one image",
        mism, headers={HEADER_LENGTH: str(hlen6)})
    nan = ones.copy()
    nan[5] = np.nan
    nanb, hlen7 = v2_binary(binary_input(3072 * 4), nan.tobytes())
    add("v2_bin_nan", "infer", octet, [400], "a NaN in binary FP32 data", nanb, headers={HEADER_LENGTH: str(hlen7)})
    add("v2_bin_header_garbage", "infer", octet, [400], "binary header is not JSON",
        b"\xff" * 64 + ones.tobytes(), headers={HEADER_LENGTH: "64"})
    add("v2_gzip_garbage", "infer", v2, [400], "Content-Encoding gzip on plain bytes",
        v2_json([1, 3, 32, 32], [0.0] * 3072), "json", headers={"Content-Encoding": "gzip"})
    add("v2_unknown_encoding", "infer", v2, [415], "Content-Encoding br", v2_json([1, 3, 32, 32], [0.0] * 3072),
        "json", headers={"Content-Encoding": "br"})
    add("v2_gzip_bomb", "infer", v2, [413], "64 KB of gzip inflating to 64 MB",
        lambda: gzip.compress(b" " * (64 * 1024 * 1024), 9), "json.gz", headers={"Content-Encoding": "gzip"})
    # round 2 (issue 11): the worst input of each class found by the second attack
    add("png_grey16_giant", "classify", "image/png", [200, 413], "40 Mpx 16-bit grey PNG (~1 GB in float64 before)",
        png_grey16_giant, "png")
    add("tiff_float_giant", "classify", "image/tiff", [200, 413], "40 Mpx float TIFF (~1.4 GB in float64 before)",
        tiff_float_giant, "tiff")
    extreme = np.full(3 * 32 * 32, 3e38, dtype=np.float32)
    extreme[::2] = -3e38
    xb, xhlen = v2_binary(binary_input(3072 * 4), extreme.tobytes())
    add("v2_bin_extreme_values", "infer", octet, [400], "finite +-3e38: NaN for the other requests of an int8 batch",
        xb, headers={HEADER_LENGTH: str(xhlen)})
    bomb, bomb_len = v2_json_header_bomb()
    add("v2_gzip_json_header_bomb", "infer", octet, [413],
        "28 KB gzip: a 28 MB JSON 'header' (Inference-Header-Content-Length) bypassed the JSON size guard",
        bomb, "json.gz", headers={"Content-Encoding": "gzip", HEADER_LENGTH: str(bomb_len)})
    add("v2_timeout_10e400", "infer", v2, [400], "timeout 10^400 us overflowed float conversion (500)",
        v2_with(parameters={"timeout": 10**400}), "json")
    add("v2_shape_100k", "infer", v2, [400, 413],
        "a shape of 100000 dimensions (was echoed whole in the error; more separators than numbers: 413)",
        v2_json([1] * 100_000, [0.0]), "json")
    add("v1_json_number_list", "classify", "application/json", [400],
        "a JSON list of 300000 numbers instead of {'image': ...} (was parsed whatever its shape)",
        b'{"image": [' + b"0," * 299_999 + b"0]}", "json")
    return cases


def write_corpus(directory: Path = CORPUS) -> list[Case]:
    directory.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    names = [c.name for c, _ in cases]
    if len(set(names)) != len(names):
        raise ValueError("duplicate case names")
    for case, body in cases:
        (directory / case.file).write_bytes(body)
    (directory / INDEX).write_text(json.dumps([asdict(c) for c, _ in cases], indent=1) + "\n")
    return [c for c, _ in cases]


def load_corpus(directory: Path = CORPUS) -> list[Case]:
    return [Case(**item) for item in json.loads((directory / INDEX).read_text())]


if __name__ == "__main__":
    written = write_corpus()
    total = sum((CORPUS / c.file).stat().st_size for c in written)
    print(f"wrote {len(written)} cases ({total / 1024:.0f} KB) to {CORPUS}")
