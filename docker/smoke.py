#!/usr/bin/env python3
"""Classify one image with every model a running vitserve lists, and count its `vitserve_` samples.

Why: docker/build_local.sh and docker/compose_local.sh check a container the way a client uses it. They run
this *inside* the image (`docker exec -i CONTAINER python - URL < docker/smoke.py`), whose Python has
Pillow, so the host needs nothing but docker. Prints one line per model; exits non-zero on any failure.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.request
import uuid

from PIL import Image, ImageDraw


def digit_png() -> bytes:
    """A white `1` on black, the kind of picture the demo models (sklearn digits) were trained on."""
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).rectangle((28, 8, 36, 56), fill=255)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def classify(base: str, model: str, png: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"one.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}/v1/models/{model}/classify", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def main(argv: list[str]) -> int:
    base = (argv[0] if argv else "http://127.0.0.1:8000").rstrip("/")
    entries = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=10))["models"]
    png = digit_png()
    for entry in entries:
        top = classify(base, entry["name"], png)["predictions"][0]
        print(f"classify {entry['name']}: provider={entry.get('provider')} top1={top['label']} ({top['score']:.3f})")
    metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    samples = sum(1 for line in metrics.splitlines() if line.startswith("vitserve_"))
    print(f"classified {len(entries)} models; /metrics: {samples} vitserve_ samples")
    return 0 if entries and samples else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
