"""Triton model configuration (`config.pbtxt`): the subset vitserve writes and reads.

The same directory must load in NVIDIA Triton Inference Server, so export/ writes a real
Triton `ModelConfig` in protobuf text format, and the service reads its batching settings
back from it. Triton's full schema lives in its `model_config.proto`; we model only the
fields we use and parse the text format with a small reader (protobuf's own text parser
needs the compiled schema, which would pull Triton's client into the service install).
Tests check both directions against the protobuf classes that `tritonclient` ships.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Triton's `DataType` enum (model_config.proto), all but TYPE_INVALID.
DataType = Literal[
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
    "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TensorConfig(_Cfg):
    name: str
    data_type: DataType = "TYPE_FP32"
    dims: list[int]


class QueuePolicy(_Cfg):
    """Triton's `ModelQueuePolicy`: the queue bound and the default per-request timeout."""

    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = Field(0, ge=0)
    allow_timeout_override: bool = True
    max_queue_size: int = Field(0, ge=0)


class DynamicBatching(_Cfg):
    preferred_batch_size: list[int] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(0, ge=0)
    default_queue_policy: QueuePolicy | None = None


class InstanceGroup(_Cfg):
    count: int = Field(1, ge=1)
    kind: Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU"] = "KIND_AUTO"


class Accelerator(_Cfg):
    """Triton's `ModelOptimizationPolicy.ExecutionAccelerators.Accelerator`: a name and string parameters,
    e.g. `{ name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }`."""

    name: str
    parameters: dict[str, str] = Field(default_factory=dict)


class ExecutionAccelerators(_Cfg):
    gpu_execution_accelerator: list[Accelerator] = Field(default_factory=list)
    cpu_execution_accelerator: list[Accelerator] = Field(default_factory=list)


class ModelOptimization(_Cfg):
    """Triton's `optimization` block (`ModelOptimizationPolicy`): the execution accelerators part.

    The service turns a `tensorrt` / `cuda` GPU accelerator into ONNX Runtime provider options
    (service/runtimes/onnxruntime/providers.py), as Triton's onnxruntime backend does, so one repository
    configures both.
    """

    execution_accelerators: ExecutionAccelerators | None = None

    def gpu_accelerator(self, name: str) -> Accelerator | None:
        ea = self.execution_accelerators
        return next((a for a in ea.gpu_execution_accelerator if a.name == name), None) if ea else None


class ModelConfig(_Cfg):
    """The Triton `ModelConfig` fields vitserve uses."""

    name: str
    platform: str = Field("onnxruntime_onnx", description="Triton's `platform`; empty for a model chosen by `backend` "
                          "(Triton refuses a platform that names another backend); absent with no backend: ONNX")
    backend: str | None = Field(None, description="Triton's `backend` (chooses the runtime before `platform`)")
    default_model_filename: str | None = Field(
        None, description="Triton's `default_model_filename`: the model file in each version directory (absent: "
        "the runtime's own default, model.onnx for ONNX Runtime, model.xml for OpenVINO)")
    parameters: dict[str, str] = Field(
        default_factory=dict, description="Triton's `parameters` map (string values): backend settings, e.g. "
        "OpenVINO's NUM_STREAMS or HINT_BF16")
    max_batch_size: int = Field(ge=0)
    input: list[TensorConfig]
    output: list[TensorConfig]
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=list)
    latest_versions: int = Field(1, ge=1, description="version_policy { latest { num_versions } }")
    optimization: ModelOptimization | None = None

    @model_validator(mode="before")
    @classmethod
    def _platform_of_backend(cls, data: Any) -> Any:
        # a config that names a backend and no platform has none (Triton's reading), not the ONNX default
        if isinstance(data, dict) and data.get("backend") and "platform" not in data:
            return {**data, "platform": ""}
        return data

    @property
    def runtime_key(self) -> str:
        """The entry of the runtimes table (service/runtimes) that serves this model: `backend`, else `platform`."""
        return self.backend or self.platform

    # -- writing -----------------------------------------------------------------------------
    def to_pbtxt(self) -> str:
        out: list[str] = [
            f"name: {_quote(self.name)}",
            *([f"platform: {_quote(self.platform)}"] if self.platform else []),
            *([f"backend: {_quote(self.backend)}"] if self.backend else []),
            *([f"default_model_filename: {_quote(self.default_model_filename)}"] if self.default_model_filename
              else []),
            f"max_batch_size: {self.max_batch_size}",
            f"version_policy: {{ latest: {{ num_versions: {self.latest_versions} }} }}",
        ]
        for key, tensors in (("input", self.input), ("output", self.output)):
            out.append(f"{key} [")
            items = []
            for t in tensors:
                dims = ", ".join(str(d) for d in t.dims)
                items.append(
                    f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}"
                )
            out.append(",\n".join(items))
            out.append("]")
        if self.dynamic_batching is not None:
            db = self.dynamic_batching
            out.append("dynamic_batching {")
            if db.preferred_batch_size:
                out.append(f"  preferred_batch_size: [ {', '.join(map(str, db.preferred_batch_size))} ]")
            out.append(f"  max_queue_delay_microseconds: {db.max_queue_delay_microseconds}")
            if db.default_queue_policy is not None:
                qp = db.default_queue_policy
                out.append("  default_queue_policy {")
                out.append(f"    timeout_action: {qp.timeout_action}")
                out.append(f"    default_timeout_microseconds: {qp.default_timeout_microseconds}")
                out.append(f"    allow_timeout_override: {'true' if qp.allow_timeout_override else 'false'}")
                out.append(f"    max_queue_size: {qp.max_queue_size}")
                out.append("  }")
            out.append("}")
        if self.instance_group:
            groups = ", ".join(f"{{ count: {g.count} kind: {g.kind} }}" for g in self.instance_group)
            out.append(f"instance_group [ {groups} ]")
        if self.optimization is not None:
            out.extend(_optimization_pbtxt(self.optimization))
        for key, value in self.parameters.items():
            out.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
        return "\n".join(out) + "\n"

    def save(self, path: Path) -> None:
        path.write_text(self.to_pbtxt())

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def from_pbtxt(cls, text: str) -> ModelConfig:
        raw = parse_pbtxt(text)
        optimization = raw.pop("optimization", None)
        parameters = raw.pop("parameters", [])
        data: dict[str, Any] = {k: _single(v) for k, v in raw.items() if k not in {"input", "output", "instance_group"}}
        if parameters:
            data["parameters"] = _parameters_from_raw(parameters)
        if optimization:
            data["optimization"] = _optimization_from_raw(optimization[-1])
        for key in ("input", "output", "instance_group"):
            data[key] = [_normalise(m) for m in raw.get(key, [])]
        for t in data["input"] + data["output"]:
            t["dims"] = _as_list(t.get("dims", []))
        policy = data.pop("version_policy", None)
        if isinstance(policy, dict) and "latest" in policy:
            data["latest_versions"] = _single(policy["latest"]).get("num_versions", 1)
        db = data.get("dynamic_batching")
        if isinstance(db, dict):
            db = dict(db)
            db["preferred_batch_size"] = _as_list(db.get("preferred_batch_size", []))
            if isinstance(db.get("default_queue_policy"), dict):
                # proto3: an absent bool is false (protobuf omits false when writing), not our default.
                db["default_queue_policy"] = {"allow_timeout_override": False, **db["default_queue_policy"]}
            data["dynamic_batching"] = db
        return cls.model_validate(data)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls.from_pbtxt(path.read_text())


def _optimization_pbtxt(opt: ModelOptimization) -> list[str]:
    ea = opt.execution_accelerators
    if ea is None:
        return ["optimization { }"]
    out = ["optimization {", "  execution_accelerators {"]
    for key, accelerators in (("gpu_execution_accelerator", ea.gpu_execution_accelerator),
                              ("cpu_execution_accelerator", ea.cpu_execution_accelerator)):
        if not accelerators:
            continue
        items = []
        for acc in accelerators:
            lines = [f"      {{\n        name: {_quote(acc.name)}"]
            lines += [f"        parameters {{ key: {_quote(k)} value: {_quote(v)} }}"
                      for k, v in acc.parameters.items()]
            items.append("\n".join(lines) + "\n      }")
        out += [f"    {key} [", ",\n".join(items), "    ]"]
    out += ["  }", "}"]
    return out


def _optimization_from_raw(raw: dict[str, list[Any]]) -> dict[str, Any]:
    """The parsed `optimization` message -> ModelOptimization data (map entries become a dict)."""
    out: dict[str, Any] = {}
    if "execution_accelerators" in raw:
        ea_raw = raw["execution_accelerators"][-1]
        if not isinstance(ea_raw, dict):
            raise PbtxtError("optimization.execution_accelerators must be a message")
        ea: dict[str, Any] = {}
        for key in ("gpu_execution_accelerator", "cpu_execution_accelerator"):
            accs = []
            for acc in ea_raw.get(key, []):
                if not isinstance(acc, dict):
                    raise PbtxtError(f"{key} entries must be messages")
                params = {}
                for entry in acc.get("parameters", []):
                    if not isinstance(entry, dict) or "key" not in entry:
                        raise PbtxtError(f"{key} parameters must be {{ key: ... value: ... }} entries")
                    params[str(_single(entry["key"]))] = str(_single(entry.get("value", [""])))
                accs.append({"name": _single(acc.get("name", [""])), "parameters": params})
            ea[key] = accs
        out["execution_accelerators"] = ea
    return out


def _parameters_from_raw(entries: list[Any]) -> dict[str, str]:
    """Triton's `parameters` map entries `{ key: K value: { string_value: V } }` -> {K: V}."""
    out: dict[str, str] = {}
    for entry in entries:
        value = _single(entry.get("value", [{}])) if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or "key" not in entry or not isinstance(value, dict):
            raise PbtxtError("parameters must be { key: ... value: { string_value: ... } } entries")
        out[str(_single(entry["key"]))] = str(value.get("string_value", ""))
    return out


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept, quotes, backslashes and controls escaped)."""
    out = []
    for ch in text:
        if ch in {'"', "\\"}:
            out.append("\\" + ch)
        elif ch in {"\n", "\r", "\t"}:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# --- a reader for protobuf text format (no schema needed) ------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<punct>[{}\[\]:,;<>])
    )""",
    re.VERBOSE,
)


class PbtxtError(ValueError):
    """config.pbtxt is not valid protobuf text format."""


def _tokens(text: str) -> list[tuple[str, str]]:
    pos, toks = 0, list[tuple[str, str]]()
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PbtxtError(f"unexpected character at offset {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind is not None and kind != "comment":  # every alternative of _TOKEN is a named group
            toks.append((kind, m.group(kind)))
    return toks


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Parse text format into {field: [values...]}; messages become nested dicts of the same form."""
    toks = _tokens(text)
    msg, pos = _parse_message(toks, 0, closing=None)
    if pos != len(toks):
        raise PbtxtError(f"unexpected {toks[pos][1]!r}")
    return msg


def _parse_message(toks: list[tuple[str, str]], pos: int, closing: str | None) -> tuple[dict[str, list[Any]], int]:
    fields: dict[str, list[Any]] = {}
    while pos < len(toks):
        kind, val = toks[pos]
        if closing is not None and val == closing:
            return fields, pos + 1
        if kind != "ident":
            raise PbtxtError(f"expected a field name, got {val!r}")
        name, pos = val, pos + 1
        if pos < len(toks) and toks[pos][1] == ":":
            pos += 1
        if pos >= len(toks):
            raise PbtxtError(f"field {name!r} has no value")
        if toks[pos][1] == "[":
            pos += 1
            while pos < len(toks) and toks[pos][1] != "]":
                value, pos = _parse_value(toks, pos)
                fields.setdefault(name, []).append(value)
                if pos < len(toks) and toks[pos][1] == ",":
                    pos += 1
            if pos >= len(toks):
                raise PbtxtError(f"list of {name!r} has no closing ']'")
            pos += 1
        else:
            value, pos = _parse_value(toks, pos)
            fields.setdefault(name, []).append(value)
        if pos < len(toks) and toks[pos][1] in {",", ";"}:
            pos += 1
    if closing is not None:
        raise PbtxtError(f"missing {closing!r}")
    return fields, pos


def _parse_value(toks: list[tuple[str, str]], pos: int) -> tuple[Any, int]:
    if pos >= len(toks):
        raise PbtxtError("unexpected end of input")
    kind, val = toks[pos]
    if val in {"{", "<"}:
        return _parse_message(toks, pos + 1, closing="}" if val == "{" else ">")
    if kind == "string":
        try:  # C escapes (\n, \", \ooo octal bytes, \xhh) over UTF-8 text, as protobuf writes them
            return codecs.escape_decode(val[1:-1].encode("utf-8"))[0].decode("utf-8"), pos + 1
        except (ValueError, UnicodeDecodeError) as err:
            raise PbtxtError(f"bad string literal {val}: {err}") from None
    if kind == "number":
        return (float(val) if any(c in val for c in ".eE") else int(val)), pos + 1
    if kind == "ident":
        return {"true": True, "false": False}.get(val, val), pos + 1
    raise PbtxtError(f"unexpected {val!r}")


def _single(values: list[Any]) -> Any:
    v = values[-1] if isinstance(values, list) else values
    return _normalise(v) if isinstance(v, dict) else v


def _normalise(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return msg
    return {k: (_as_list(v) if k in {"dims", "preferred_batch_size"} else _single(v)) for k, v in msg.items()}


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]
