"""The request pipeline: admit -> check -> preprocess -> submit to the version's executor -> postprocess.

Routers call this (`accept`, then `infer` / `classify` / `compare`; `describe` and `readiness` for the
protocol-free answers of metadata, configuration and readiness). A request's model version is
resolved once, at admission (`Catalog.version`), and the `LoadedVersion` is passed down through
every step; the only second look-up is when that version is swapped out while the request waits
(then the model's new default version serves it, unless the request named its version). Batches run
through `version.executor.submit(inputs, deadline) -> BatchOutput`: the seam between the pipeline and
execution (service/catalog.py: LoadedVersion, service/batcher.py: Executor). Knows no HTTP, wire format or
runtime implementation.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from service.batcher import BatcherStopped
from service.catalog import Catalog, LoadedVersion
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NonFiniteOutput,
    Overloaded,
    ServiceError,
)
from service.loader import batch_limits, instance_count
from service.manifest import PreprocessConfig
from service.model_config import InstanceGroup, ModelConfig
from service.preprocess import normalised_bounds, preprocess_image, preprocess_small_image
from service.schemas import ClassifyResult, Timings

#: input tensors larger than this are checked (finite, in range) in the worker pool, not on the event loop
LARGE_CHECK_BYTES = 1 << 20


@dataclass(frozen=True)
class InferOutput:
    """Logits of one request and how it got them (`served`: the version that computed them)."""

    served: LoadedVersion
    outputs: np.ndarray
    queue_s: float
    compute_s: float
    batch_size: int
    total_s: float

    @property
    def model(self) -> str:
        return self.served.model

    @property
    def version(self) -> int:
        return self.served.version


@dataclass(frozen=True)
class ModelDescription:
    """A model as metadata and configuration answers show it: the versions asked about, its configuration
    as served (the settings' batch size and instance count in place of config.pbtxt's)."""

    name: str
    versions: list[int]
    config: ModelConfig


def _within(bounds: tuple[float, float], allowed: tuple[float, float]) -> bool:
    """Whether finite `bounds` lie inside `allowed` (NaN bounds compare false: not within)."""
    smallest, largest = bounds
    return math.isfinite(smallest) and math.isfinite(largest) and allowed[0] <= smallest and largest <= allowed[1]


class Pipeline:
    """The request path over a model store."""

    def __init__(self, store: Catalog) -> None:
        self.store = store
        self.settings = store.settings
        self.metrics = store.metrics

    # -- metadata and readiness -------------------------------------------------------------
    def describe(self, name: str, version: int | None = None) -> ModelDescription:
        """The model (one version of it, when named), from one look-up: ModelNotReady when it never loaded,
        ModelNotFound for a version it does not have."""
        h = self.store.handle(name)
        entry = h.entry
        if entry is None:
            raise h.not_ready()
        if version is not None and version not in entry.versions:
            raise ModelNotFound(f"model {name} has no version {version}")
        cfg = entry.config
        max_batch, instances = batch_limits(entry, self.settings).max_batch_size, instance_count(entry, self.settings)
        if max_batch != cfg.max_batch_size:
            cfg = cfg.model_copy(update={"max_batch_size": max_batch})
        if sum(g.count for g in cfg.instance_group) != instances:
            cfg = cfg.model_copy(update={"instance_group": [InstanceGroup(count=instances)]})
        versions = [version] if version is not None else (sorted(h.versions) or sorted(entry.versions))
        return ModelDescription(name, versions, cfg)

    def readiness(self, name: str, version: int | None = None) -> str | None:
        """None when the model (the version, when named) serves, else why not; ModelNotFound for a version it
        does not have."""
        h = self.store.handle(name)
        if h.state == "ready" and not self.store.draining and (version in h.versions if version is not None
                                                                 else bool(h.versions)):
            return None
        if version is not None and (h.entry is None or version not in h.entry.versions):
            raise ModelNotFound(f"model {name} has no version {version}")
        if version is not None and h.state == "ready":
            return f"model {name} version {version} is not loaded"
        return f"model {name} is {h.state}" + (f": {h.reason}" if h.reason else "")

    # -- admission ---------------------------------------------------------------------------
    def admit(self, name: str, version: int | None = None, images: int = 1) -> LoadedVersion:
        """Cheap early check before reading or decoding a body: intake open, model known and ready, room in
        its queue. Resolves the version the request will run on."""
        self.store.check_intake()
        lv = self.store.version(name, version)
        if lv.executor.is_overloaded(images):
            lv.observer.on_rejected(images)
            raise Overloaded(f"model {name} queue is full", retry_after_s=lv.executor.retry_after_s())
        return lv

    @contextmanager
    def accept(self, name: str, version: int | None = None, images: int = 1) -> Iterator[LoadedVersion]:
        """`admit`, then hold the request as accepted (a drain waits for it) until the block ends."""
        lv = self.admit(name, version, images)
        with self.store.accepting():
            yield lv

    def deadline(self, deadline_ms: float | None, start: float | None = None) -> float:
        """Absolute deadline (monotonic clock): the request's own, capped by the settings default."""
        if deadline_ms is not None and deadline_ms <= 0:
            raise InvalidInput(f"deadline_ms must be positive, got {deadline_ms}")
        limit = self.settings.default_deadline_ms
        ms = limit if deadline_ms is None else min(deadline_ms, limit)
        return (start if start is not None else time.monotonic()) + ms / 1000

    # -- tensors -----------------------------------------------------------------------------
    def max_images(self, lv: LoadedVersion) -> int:
        """Images one request may carry to this version."""
        return min(self.settings.max_images_per_request, lv.executor.limits.max_batch_size)

    def _check_inputs(self, lv: LoadedVersion, inputs: np.ndarray, scan: bool = True) -> None:
        """Type, shape and images per request; with `scan`, every value finite and in the model's range."""
        expected = tuple(lv.runtime.input_shape)
        if not isinstance(inputs, np.ndarray) or inputs.dtype != np.float32:
            raise InvalidInput(f"input must be FP32, got {getattr(inputs, 'dtype', type(inputs).__name__)}")
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != expected:
            raise InvalidInput(f"input shape must be [n, {', '.join(map(str, expected))}], got {list(inputs.shape)}")
        limit = self.max_images(lv)
        if not 1 <= inputs.shape[0] <= limit:
            raise InvalidInput(f"a request carries 1..{limit} images, got {inputs.shape[0]}")
        if not scan:
            return
        # min/max propagate NaN and keep +-inf: two passes check finiteness and the range together (reduced
        # over the flat view: a 1-D reduction skips the n-D iteration `inputs.min()` sets up)
        flat = inputs.reshape(-1)
        smallest, largest = float(np.minimum.reduce(flat)), float(np.maximum.reduce(flat))
        if not (math.isfinite(smallest) and math.isfinite(largest)):
            raise InvalidInput("input contains NaN or infinity")
        # an extreme (finite) value would skew the per-batch activation quantisation of int8 models and turn
        # the other requests of its batch into NaN: only values the model's preprocessing can produce, widened
        lo, hi = lv.value_range
        if smallest < lo or largest > hi:
            raise InvalidInput(
                f"input values must lie in [{lo:g}, {hi:g}] (the model's normalised pixel range with a margin), "
                f"got [{smallest:g}, {largest:g}]"
            )

    async def infer(
        self, name: str, inputs: np.ndarray, version: int | None = None, deadline: float | None = None
    ) -> InferOutput:
        """Resolve the model's version, then `run` (for callers that hold no admitted version)."""
        self.store.check_intake()
        return await self.run(self.store.version(name, version), inputs, deadline, pinned=version is not None)

    async def run(
        self, lv: LoadedVersion, inputs: np.ndarray, deadline: float | None = None, *, pinned: bool = False,
        known_range: tuple[float, float] | None = None,
    ) -> InferOutput:
        """Check `inputs` float32 [n, 3, H, W] and run them through `lv`'s executor; `deadline` is absolute
        monotonic. `pinned`: the request named its version (no move to a newer one if `lv` is swapped out).
        `known_range`: bounds the caller knows every value lies in (the server's own preprocessing): when
        they are finite and within the model's range, the values are not scanned again."""
        start = time.monotonic()
        deadline = deadline if deadline is not None else self.deadline(None, start)
        scan = known_range is None or not _within(known_range, lv.value_range)
        if scan and inputs.nbytes > LARGE_CHECK_BYTES:  # a large batch's scan would hold up every other connection
            await self.store.run_blocking(self._check_inputs, lv, inputs)
        else:
            self._check_inputs(lv, inputs, scan)
        for attempt in range(3):
            try:
                out = await lv.executor.submit(inputs, deadline)
                break
            except BatcherStopped:
                if pinned or attempt == 2 or self.store.draining:
                    raise
                lv = self.store.version(lv.model)  # swapped while we looked: the new version serves it
            except ServiceError:
                lv.observer.request_failed(time.monotonic() - start)
                raise
        if not (out.finite if out.finite is not None else np.isfinite(out.outputs).all()):
            # never a `null` score: this request fails, the others of its batch are answered
            self.metrics.nonfinite_outputs.labels(model=lv.model).inc()
            lv.observer.request_failed(time.monotonic() - start)
            raise NonFiniteOutput(f"model {lv.model} computed a non-finite output for this request")
        total = time.monotonic() - start
        lv.observer.request_succeeded(total, out.queue_s, out.compute_s)
        return InferOutput(lv, out.outputs, out.queue_s, out.compute_s, out.batch_size, total)

    # -- images ------------------------------------------------------------------------------
    def check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= self.settings.max_top_k:
            raise InvalidInput(f"top_k must be in 1..{self.settings.max_top_k}, got {top_k}")

    async def _decode(self, image: bytes, cfg: PreprocessConfig) -> tuple[np.ndarray, float]:
        """Decode and transform (in the preprocessing pool unless the image is small): (pixels [3, H, W], seconds)."""
        t0 = time.perf_counter()
        args = (image, cfg, self.settings.max_image_pixels, self.settings.max_image_bytes)
        pixels = preprocess_small_image(*args)  # a small image here: cheaper than a hand-off to a thread
        if pixels is None:
            pixels = await self.store.run_blocking(preprocess_image, *args)
        return pixels, time.perf_counter() - t0

    async def classify(
        self, lv: LoadedVersion, image: bytes, top_k: int = 5, deadline_ms: float | None = None, *,
        pinned: bool = False,
    ) -> ClassifyResult:
        """Image bytes -> top-k predictions with queue / preprocess / compute / total timings, on the version
        the request was admitted to (`accept`)."""
        start = time.monotonic()
        self.check_top_k(top_k)
        deadline = self.deadline(deadline_ms, start)
        pixels, preprocess_s = await self._decode(image, lv.preprocess)
        lv.observer.on_preprocessed(preprocess_s)
        return await self._classify_pixels(lv, pixels, preprocess_s, top_k, deadline, start, pinned)

    async def _classify_pixels(
        self, lv: LoadedVersion, pixels: np.ndarray, preprocess_s: float, top_k: int, deadline: float,
        start: float, pinned: bool,
    ) -> ClassifyResult:
        if time.monotonic() >= deadline:
            lv.observer.on_expired(1)
            raise DeadlineExceeded("deadline passed during preprocessing")
        # decoded with `lv.preprocess` (classify), or its equal (compare's groups): its values' range is known
        out = await self.run(lv, pixels[None], deadline, pinned=pinned, known_range=normalised_bounds(lv.preprocess))
        # the version that computed it (a newer one if `lv` was swapped out meanwhile) names the labels
        predictions = out.served.runtime.postprocess(out.outputs, top_k)[0]
        total = time.monotonic() - start
        # plain construction (validated in pydantic's core) costs less than `model_construct` on this hot path
        return ClassifyResult(
            model=lv.model,
            version=out.version,
            predictions=predictions,
            timings=Timings(
                queue_ms=out.queue_s * 1000,
                preprocess_ms=preprocess_s * 1000,
                compute_ms=out.compute_s * 1000,
                total_ms=total * 1000,
                batch_size=out.batch_size,
            ),
        )

    async def compare(
        self, image: bytes, names: list[str] | None, top_k: int = 5, deadline_ms: float | None = None
    ) -> list[tuple[str, ClassifyResult | ServiceError]]:
        """One image through several models at once (all ready models when `names` is None).

        Each model is admitted first (a queue slot each; a full one fails only that model's part), then
        the image is decoded once per distinct preprocessing, not once per model."""
        start = time.monotonic()
        if names is None:
            names = self.store.ready_names()
        if not names:
            raise ModelNotReady("no model is ready")
        for n in names:
            self.store.require(n)
        self.check_top_k(top_k)
        deadline = self.deadline(deadline_ms, start)
        with self.store.accepting():
            results: dict[str, ClassifyResult | ServiceError] = {}
            groups: dict[PreprocessConfig, list[LoadedVersion]] = {}
            for n in names:
                try:
                    lv = self.admit(n)
                except ServiceError as exc:
                    results[n] = exc
                    continue
                groups.setdefault(lv.preprocess, []).append(lv)

            async def run_group(cfg: PreprocessConfig, members: list[LoadedVersion]) -> None:
                try:
                    pixels, preprocess_s = await self._decode(image, cfg)
                except ServiceError as exc:
                    results.update((lv.model, exc) for lv in members)
                    return
                for lv in members:
                    lv.observer.on_preprocessed(preprocess_s)
                done = await asyncio.gather(
                    *(self._classify_pixels(lv, pixels, preprocess_s, top_k, deadline, start, False)
                      for lv in members),
                    return_exceptions=True,
                )
                for lv, r in zip(members, done, strict=True):
                    if isinstance(r, BaseException) and not isinstance(r, ServiceError):
                        raise r
                    results[lv.model] = r

            await asyncio.gather(*(run_group(cfg, members) for cfg, members in groups.items()))
        return [(n, results[n]) for n in names]
