"""Turn a model repository into its OpenVINO twin, for running the runtime-level tests on both runtimes (tests only).

Every model keeps its name, manifest and batching; its ONNX graph becomes an IR (`model.xml` + `model.bin`,
converted by OpenVINO, weights kept f32) and its config.pbtxt names Triton's OpenVINO backend, with the inference
precision as a parameter (f32 by default, so outputs match the tests' expected logits as closely as ONNX
Runtime's). Broken models stay broken the same way: a graph OpenVINO cannot read becomes an unreadable IR with a
matching sha256, a sha256 mismatch stays a mismatch, a missing file stays missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from service.manifest import CONFIG_FILENAME, MANIFEST_FILENAME, Manifest, sha256_file
from service.model_config import ModelConfig


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


def write_ir(onnx_file: Path, xml: Path) -> None:
    """Convert an ONNX file to an IR beside `xml` (weights kept f32, as `vitserve-export --openvino` writes them)."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)


def convert_model(src: Path, dst: Path, precision: str = "f32", name: str | None = None) -> None:
    """One model directory `src` (ONNX) -> `dst` (OpenVINO IR, `backend: "openvino"`), renamed `name` if given."""
    manifest = Manifest.load(src)
    config = ModelConfig.load(src / CONFIG_FILENAME)
    dst.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for rel, expected in manifest.files.items():
        version = rel.split("/", 1)[0]
        onnx_file = src / rel
        xml, weights = dst / version / "model.xml", dst / version / "model.bin"
        xml.parent.mkdir(parents=True, exist_ok=True)
        if not onnx_file.is_file():
            files[f"{version}/model.xml"] = "0" * 64
            continue
        try:
            write_ir(onnx_file, xml)
        except Exception:  # noqa: BLE001  (a deliberately corrupt graph: write an unreadable IR instead)
            xml.write_text("<net>this is not an OpenVINO IR</net>")
            weights.write_bytes(b"\0" * 16)
        intact = sha256_file(onnx_file) == expected
        files[f"{version}/model.xml"] = sha256_file(xml) if intact else "0" * 64
        files[f"{version}/model.bin"] = sha256_file(weights)
    name = name or manifest.name
    Manifest.model_validate({**manifest.model_dump(), "name": name, "files": files}).save(dst)
    data = config.model_dump()
    data.update(name=name, backend="openvino", platform="", parameters={"INFERENCE_PRECISION_HINT": precision})
    ModelConfig.model_validate(data).save(dst / CONFIG_FILENAME)


def add_version(directory: Path, onnx_file: Path, version: int) -> None:
    """Hot reload helper: a new IR version in an OpenVINO model directory, listed in its manifest, the model file
    renamed into place last (the store polls for it)."""
    staging = directory / f".staging-{version}"
    write_ir(onnx_file, staging / "model.xml")
    manifest = Manifest.load(directory)
    files = {**manifest.files, f"{version}/model.xml": sha256_file(staging / "model.xml"),
             f"{version}/model.bin": sha256_file(staging / "model.bin")}
    Manifest.model_validate({**manifest.model_dump(), "files": files}).save(directory)
    staging.rename(directory / str(version))


def openvino_repository(src: Path, dst: Path, precision: str = "f32") -> Path:
    """Every model of repository `src` converted into `dst` (other files copied as they are)."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        if child.is_dir() and (child / MANIFEST_FILENAME).is_file():
            convert_model(child, dst / child.name, precision)
        elif child.is_dir():
            shutil.copytree(child, dst / child.name)
        else:
            shutil.copy2(child, dst / child.name)
    return dst
