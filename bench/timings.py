"""Server-reported timings as the load generator reads them: per response, or from Triton statistics.

A response carries its server's queue/preprocess/compute split in a `Server-Timing` header
(`name;dur=<ms>`) or a JSON `timings` object; a server that does neither may expose Triton-shaped
cumulative counters at `/v2/models/{m}/stats`, whose deltas give the mean split per request.
"""

from __future__ import annotations

import json

__all__ = ["SERVER_TIMING_KEYS", "parse_server_timing", "parse_json_timings", "parse_v2_stats", "stats_delta"]

#: the stages a server reports, in the order results list them
SERVER_TIMING_KEYS = ("queue", "preprocess", "compute", "postprocess", "total")


def parse_server_timing(value: str) -> dict[str, float]:
    """Parse a `Server-Timing` header (`queue;dur=1.2, compute;dur=3.4`, dur in ms) into seconds."""
    out: dict[str, float] = {}
    for part in value.split(","):
        items = [p.strip() for p in part.split(";")]
        if not items or not items[0]:
            continue
        name = items[0]
        for item in items[1:]:
            if item.startswith("dur="):
                try:
                    out[name] = float(item[4:].strip('"')) / 1000.0
                except ValueError:
                    pass
    return out


def parse_json_timings(body: bytes) -> dict[str, float]:
    """Server timings from a JSON body's `timings` object; keys ending in `_ms` are milliseconds, else seconds."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    timings = doc.get("timings") if isinstance(doc, dict) else None
    if not isinstance(timings, dict):
        return {}
    out: dict[str, float] = {}
    for key, val in timings.items():
        if not isinstance(val, (int, float)):
            continue
        if key.endswith("_ms"):
            out[key[:-3]] = float(val) / 1000.0
        elif key.endswith("_s"):
            out[key[:-2]] = float(val)
        else:
            out[key] = float(val)
    return out


_STATS_KEYS = {"queue": "queue", "compute_input": "preprocess", "compute_infer": "compute",
               "compute_output": "postprocess"}


def parse_v2_stats(doc: object) -> dict[str, float]:
    """Cumulative counters from a Triton-shaped `/v2/models/{m}/stats` answer: `success` count and ns per stage."""
    out: dict[str, float] = {}
    if not isinstance(doc, dict):
        return out
    for model in doc.get("model_stats", []) or []:
        inf = (model or {}).get("inference_stats") or {}
        for key in ("inference_count", "execution_count"):  # images computed, batches executed
            out[key] = out.get(key, 0.0) + float((model or {}).get(key, 0) or 0)
        for key in ("success", *_STATS_KEYS):
            entry = inf.get(key) or {}
            out[f"{key}.count"] = out.get(f"{key}.count", 0.0) + float(entry.get("count", 0) or 0)
            out[f"{key}.ns"] = out.get(f"{key}.ns", 0.0) + float(entry.get("ns", 0) or 0)
    return out


def stats_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean server time per request (usec) by stage between two stats snapshots, as perf_analyzer computes it."""
    out: dict[str, float] = {}
    for key, name in _STATS_KEYS.items():
        count = after.get(f"{key}.count", 0.0) - before.get(f"{key}.count", 0.0)
        ns = after.get(f"{key}.ns", 0.0) - before.get(f"{key}.ns", 0.0)
        if count > 0:
            out[name] = ns / count / 1000.0
    return out


def mean_batch_size(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Images per executed batch between two stats snapshots (None when no batch ran or no statistics)."""
    batches = after.get("execution_count", 0.0) - before.get("execution_count", 0.0)
    images = after.get("inference_count", 0.0) - before.get("inference_count", 0.0)
    return images / batches if batches > 0 else None
