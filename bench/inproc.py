"""In-process timing: a raw ONNX Runtime session (the ceiling) and PyTorch eager, no HTTP.

The service can only be as fast as the session it wraps, so "raw ORT at its best batch size"
is the reference every HTTP figure is divided by. The session here is built as the service
builds one when it serves a single model (all usable cores as intra-op threads, sequential
execution, spinning on, full graph optimisation), so the ratio isolates serving overhead,
not a different runtime configuration. Each timing repeats until both a minimum count and a
minimum time are reached and reports the median (robust to a noisy, shared machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from bench.machine import usable_cores
from bench.stats import mean, percentile


class Timing(BaseModel):
    """Repeated timing of one call at one batch size; seconds."""

    batch_size: int
    repeats: int
    median_s: float
    p90_s: float
    mean_s: float
    min_s: float
    cpu_s: float | None = None  # mean CPU time of this process per call (all threads), when measured

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.median_s


def time_call(
    fn: Callable[[], Any], batch_size: int, *, min_repeats: int = 5, min_time_s: float = 1.0, warmup: int = 2,
    max_repeats: int = 10_000,
) -> Timing:
    """Time `fn()` after `warmup` calls, until `min_repeats` calls and `min_time_s` seconds have passed."""
    if min_repeats < 1:
        raise ValueError(f"min_repeats must be >= 1, got {min_repeats}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    cpu0 = time.process_time()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    return Timing(
        batch_size=batch_size,
        repeats=len(times),
        median_s=percentile(times, 50),
        p90_s=percentile(times, 90),
        mean_s=mean(times),
        min_s=min(times),
        cpu_s=cpu / len(times),
    )


def time_interleaved(
    fns: dict[str, Callable[[], Any]], batch_size: int, *, min_repeats: int = 5, min_time_s: float = 1.0,
    warmup: int = 2,
) -> dict[str, Timing]:
    """Time several calls round-robin (one call of each per round) so they share the machine's background load.

    On a shared, noisy machine, timing A then B lets a burst of other work land on one of them;
    alternating them makes their *ratio* robust, which is what the variant comparison reports.
    Rounds continue until `min_repeats` rounds and `min_time_s` seconds per call have passed.
    """
    if min_repeats < 1:
        raise ValueError(f"min_repeats must be >= 1, got {min_repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    spent = dict.fromkeys(fns, 0.0)
    while any(len(t) < min_repeats for t in times.values()) or min(spent.values()) < min_time_s:
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times[key].append(dt)
            spent[key] += dt
    return {
        k: Timing(batch_size=batch_size, repeats=len(v), median_s=percentile(v, 50), p90_s=percentile(v, 90),
                  mean_s=mean(v), min_s=min(v))
        for k, v in times.items()
    }


def ort_session(model: Path | str | bytes, threads: int = 0, spinning: bool = True) -> Any:
    """An ORT CPU session (from a path or serialised bytes) configured like the service's single-model session."""
    from service.runtimes.onnxruntime.session import SessionConfig, build_session

    return build_session(model, SessionConfig(intra_op_threads=threads or usable_cores(), allow_spinning=spinning))


def input_shape(session: Any) -> tuple[int, int, int]:
    shape = session.get_inputs()[0].shape
    dims = tuple(int(d) for d in shape[1:])
    if len(dims) != 3:
        raise ValueError(f"expected a [batch, C, H, W] input, got {shape}")
    return dims  # type: ignore[return-value]


def time_ort(
    session: Any, batch_sizes: Sequence[int], *, min_repeats: int = 5, min_time_s: float = 1.0, seed: int = 0
) -> list[Timing]:
    """Median latency of `session.run` at each batch size on seeded random inputs."""
    inp = session.get_inputs()[0].name
    chw = input_shape(session)
    rng = np.random.default_rng(seed)
    out = []
    for b in batch_sizes:
        x = rng.standard_normal((b, *chw), dtype=np.float32)
        out.append(time_call(lambda x=x: session.run(None, {inp: x}), b, min_repeats=min_repeats,
                             min_time_s=min_time_s))
    return out


def time_torch(
    model: Any, input_chw: tuple[int, int, int], batch_sizes: Sequence[int], *, min_repeats: int = 3,
    min_time_s: float = 1.0, threads: int = 0, seed: int = 0,
) -> list[Timing]:
    """Median latency of an eval-mode PyTorch model under `torch.inference_mode` at each batch size."""
    import torch

    torch.set_num_threads(threads or usable_cores())
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.randn((b, *input_chw), generator=g)
            out.append(time_call(lambda x=x: model(x), b, min_repeats=min_repeats, min_time_s=min_time_s, warmup=1))
    return out


def best_throughput(timings: Sequence[Timing]) -> Timing:
    """The timing with the most images per second."""
    if not timings:
        raise ValueError("no timings")
    return max(timings, key=lambda t: t.images_per_s)


def ort_op_profile(model: Path | str, batch_size: int, *, runs: int = 3, seed: int = 0) -> dict[str, float]:
    """Seconds per run spent in each ONNX op type (ORT's own profiler, mean over `runs` after one warm-up)."""
    import json
    import os
    import tempfile

    from service.runtimes.onnxruntime.session import SessionConfig, build_session

    with tempfile.TemporaryDirectory() as tmp:
        sess = build_session(model, SessionConfig(intra_op_threads=usable_cores(), allow_spinning=True),
                             profile_prefix=os.path.join(tmp, "ort"))
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(seed).standard_normal((batch_size, *input_shape(sess)), dtype=np.float32)
        sess.run(None, {inp.name: x})
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        trace = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    model_runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_measured = model_runs[1]["ts"] if len(model_runs) > 1 else 0
    for e in trace:
        if (e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time")
                or e.get("ts", 0) < first_measured):
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e6 / runs
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))
