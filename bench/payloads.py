"""Request bodies for the load generator, built once before a run.

A benchmark must measure the server, not the client's encoders, so every body (a JPEG/PNG
upload or an Open Inference Protocol v2 request with the binary tensor extension) is prepared
before the clock starts and sent byte-for-byte on every request. The v2 body follows Triton's
binary data extension: a JSON header whose length goes in `Inference-Header-Content-Length`,
then the raw little-endian tensor bytes; tests check it matches `tritonclient.http`'s own
`generate_request_body`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ImageFormat = Literal["jpeg", "png"]
Protocol = Literal["v1", "v2"]

_MULTIPART_BOUNDARY = "vitservebenchboundary7d1c"


@dataclass(frozen=True)
class RequestSpec:
    """Everything needed to send one request: path, headers and a prebuilt body."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    description: str = ""
    images_per_request: int = 1


def synthetic_image(height: int = 256, width: int = 320, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 image with gradients and noise (compresses like a photo, not like a flat fill)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    base = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)), (x + y) / 2], axis=-1)
    noisy = base + rng.normal(0, 24, size=base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode_image(pixels: np.ndarray, fmt: ImageFormat = "jpeg", quality: int = 90) -> bytes:
    """Encode an HxWx3 uint8 array as JPEG or PNG bytes."""
    from PIL import Image

    if fmt not in ("jpeg", "png"):
        raise ValueError(f"image format must be 'jpeg' or 'png', got {fmt!r}")
    buf = io.BytesIO()
    img = Image.fromarray(pixels, mode="RGB")
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def multipart_body(field_name: str, filename: str, content_type: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field; returns (body, content-type header)."""
    b = _MULTIPART_BOUNDARY
    head = (
        f"--{b}\r\n"
        f'Content-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{b}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={b}"


def classify_request(
    model: str, image: bytes, fmt: ImageFormat = "jpeg", multipart: bool = True, top_k: int = 5
) -> RequestSpec:
    """`POST /v1/models/{model}/classify` with an encoded image, as a multipart upload or a raw body."""
    mime = f"image/{fmt}"
    path = f"/v1/models/{model}/classify?top_k={top_k}"
    if multipart:
        body, ctype = multipart_body("image", f"bench.{'jpg' if fmt == 'jpeg' else 'png'}", mime, image)
    else:
        body, ctype = image, mime
    return RequestSpec(
        path=path,
        body=body,
        headers={"Content-Type": ctype},
        description=f"v1 classify {fmt} ({len(image)} bytes, {'multipart' if multipart else 'raw'})",
    )


def v2_binary_body(
    input_name: str, tensor: np.ndarray, output_name: str | None = None, binary_output: bool = True
) -> tuple[bytes, int]:
    """An Open Inference Protocol v2 request with the binary tensor extension; returns (body, json header size)."""
    if tensor.dtype != np.float32:
        raise ValueError(f"only FP32 tensors are supported, got {tensor.dtype}")
    raw = np.ascontiguousarray(tensor).astype("<f4", copy=False).tobytes()
    header: dict[str, object] = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(tensor.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    if output_name is not None:
        header["outputs"] = [{"name": output_name, "parameters": {"binary_data": binary_output}}]
    else:
        header["parameters"] = {"binary_data_output": binary_output}
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, len(head)


def infer_request(
    model: str,
    shape: tuple[int, ...],
    input_name: str = "pixel_values",
    output_name: str | None = "logits",
    seed: int = 0,
) -> RequestSpec:
    """`POST /v2/models/{model}/infer` carrying a random FP32 tensor of `shape` (batch first) in binary form."""
    if len(shape) < 1 or any(d <= 0 for d in shape):
        raise ValueError(f"tensor shape must be non-empty with positive dims, got {shape}")
    tensor = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    body, json_size = v2_binary_body(input_name, tensor, output_name)
    return RequestSpec(
        path=f"/v2/models/{model}/infer",
        body=body,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(json_size),
        },
        description=f"v2 binary FP32 {list(shape)}",
        images_per_request=shape[0],
    )


def parse_v2_binary_response(body: bytes, header_length: int | None) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Split a v2 response into its JSON header and FP32 output arrays (binary or JSON data)."""
    if header_length is None:
        header = json.loads(body)
        tail = b""
    else:
        header = json.loads(body[:header_length])
        tail = body[header_length:]
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for out in header.get("outputs", []):
        shape = tuple(out["shape"])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            outputs[out["name"]] = np.frombuffer(tail[offset : offset + size], dtype="<f4").reshape(shape)
            offset += size
        else:
            outputs[out["name"]] = np.asarray(out["data"], dtype=np.float32).reshape(shape)
    return header, outputs
