"""The model store and pipeline with fake runtimes (through the runtimes table): failures stay local, swaps and
unloads lose no request, deadlines hold."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from fakes import EchoRuntime, FailingRuntime, GatedRuntime, SlowRuntime, fake_factory
from PIL import Image

from service.api.models import model_info, model_infos
from service.errors import DeadlineExceeded, InferenceFailed, InvalidInput, ModelNotFound, ModelNotReady
from service.loader import ModelStore
from service.pipeline import Pipeline
from service.runtimes import InferenceRuntime, RuntimeSpec, runtime_override
from service.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
from tiny_repository import TinyModel, add_version  # noqa: E402  (after the sys.path setup)


def ids(values: list[float], size: int = 32) -> np.ndarray:
    arr = np.zeros((len(values), 3, size, size), dtype=np.float32)
    arr[:, 0, 0, 0] = values
    return arr


def by_model(**factories: Callable[[RuntimeSpec], InferenceRuntime]) -> Callable[[RuntimeSpec], InferenceRuntime]:
    default = factories.pop("default", fake_factory(EchoRuntime))

    def factory(spec: RuntimeSpec) -> InferenceRuntime:
        return factories.get(spec.name, default)(spec)

    return factory


def run(settings: Settings, factory, body) -> None:
    """Serve the repository with `factory` in place of ONNX Runtime (None: the real runtimes table)."""

    async def main() -> None:
        store = ModelStore(settings)
        await store.start(wait=True)
        try:
            await body(store, Pipeline(store))
        finally:
            await store.shutdown()

    with runtime_override(factory) if factory is not None else nullcontext():
        asyncio.run(main())


@pytest.fixture
def repo(tiny_repository: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(tiny_repository, dst)
    return dst


def test_failed_model_is_reported_beside_serving_ones(tiny_repository: Path) -> None:
    async def body(store: ModelStore, pipe: Pipeline) -> None:
        states = {m.name: m for m in model_infos(store)}
        assert states["tiny_a"].state == "ready" and states["tiny_b"].version == 2
        assert states["tiny_corrupt"].state == "failed" and "cannot create session" in states["tiny_corrupt"].reason
        assert states["tiny_badsha"].state == "failed" and "sha256 mismatch" in states["tiny_badsha"].reason
        assert ("<repository>" in states["tiny_corrupt"].reason
                or str(tiny_repository) not in states["tiny_corrupt"].reason)
        assert store.ready
        with pytest.raises(ModelNotReady, match="failed"):
            await pipe.infer("tiny_corrupt", ids([1.0]))
        with pytest.raises(ModelNotFound):
            await pipe.infer("nope", ids([1.0]))
        out = await pipe.infer("tiny_a", ids([1.0, 2.0]))
        assert out.outputs.shape == (2, 10)

    run(Settings(repository=tiny_repository, warmup="one"), None, body)


def test_each_request_gets_its_own_rows_and_bad_inputs_are_refused_before_queueing(tiny_repository: Path) -> None:
    factory = fake_factory(EchoRuntime)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        outs = await asyncio.gather(*(pipe.infer("tiny_a", ids([float(i), float(i) + 0.5])) for i in range(1, 21)))
        for i, out in enumerate(outs, start=1):
            assert out.outputs[:, 0].tolist() == [float(i), float(i) + 0.5]
        for bad in (
            ids([1.0]).astype(np.float64),
            ids([1.0], size=31),
            ids([0.0] * 9),
            np.full((1, 3, 32, 32), np.nan, dtype=np.float32),
            ids([3e38]),  # finite, but far outside what a normalised image can hold
        ):
            with pytest.raises(InvalidInput):
                await pipe.infer("tiny_a", bad)
        computed = [i for rt in factory.instances for i in rt.computed_ids]  # type: ignore[attr-defined]
        assert sorted(set(computed) - {0.0}) == sorted({float(i) for i in range(1, 21)}
                                                       | {i + 0.5 for i in range(1, 21)})

    run(Settings(repository=tiny_repository, models=["tiny_a"]), factory, body)


def test_batches_form_under_concurrency(tiny_repository: Path) -> None:
    factory = fake_factory(SlowRuntime, delay_s=0.02)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        await asyncio.gather(*(pipe.infer("tiny_a", ids([float(i)])) for i in range(24)))
        batches = factory.instances[-1].batches  # type: ignore[attr-defined]
        assert max(batches) > 1 and max(batches) <= 8
        text = store.metrics.render().decode()
        assert 'vitserve_batch_size_count{model="tiny_a",version="1"}' in text

    run(Settings(repository=tiny_repository, models=["tiny_a"], warmup="one"), factory, body)


def test_runtime_failure_fails_only_that_model(tiny_repository: Path) -> None:
    factory = by_model(tiny_a=fake_factory(FailingRuntime))

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        with pytest.raises(InferenceFailed):
            await pipe.infer("tiny_a", ids([1.0]))
        out = await pipe.infer("tiny_b", ids([3.0]))
        assert out.outputs[0, 0] == 3.0
        info = model_info(store, "tiny_a")
        assert info.state == "ready" and "injected runtime failure" in info.last_error
        assert model_info(store, "tiny_b").last_error is None
        assert 'vitserve_batch_failures_total{model="tiny_a",version="1"} 1.0' in store.metrics.render().decode()

    run(Settings(repository=tiny_repository, models=["tiny_a", "tiny_b"]), factory, body)


def test_expired_request_gets_504_and_is_never_computed(tiny_repository: Path) -> None:
    factory = fake_factory(GatedRuntime)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        rt = factory.instances[-1]  # type: ignore[attr-defined]
        rt.computed_ids.clear()
        first = asyncio.create_task(pipe.infer("tiny_a", ids([1.0])))
        while not rt.entered.is_set():
            await asyncio.sleep(0.001)
        late = pipe.infer("tiny_a", ids([2.0]), deadline=pipe.deadline(20))
        with pytest.raises(DeadlineExceeded):
            await late
        rt.gate.set()
        await first
        assert rt.computed_ids == [1.0]
        assert 'vitserve_deadline_expired_total{model="tiny_a"} 1.0' in store.metrics.render().decode()

    class OpenAfterWarmup(GatedRuntime):
        def warmup(self, batch_sizes):  # warm-up must not wait for the test's gate
            pass

    factory = fake_factory(OpenAfterWarmup)
    run(Settings(repository=tiny_repository, models=["tiny_a"]), factory, body)


def test_hot_reload_swaps_versions_without_failing_requests(repo: Path) -> None:
    factory = fake_factory(SlowRuntime, delay_s=0.005)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        assert model_info(store, "tiny_a").version == 1
        stop = asyncio.Event()
        answered: list[int] = []

        async def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                out = await pipe.infer("tiny_a", ids([k * 1000.0 + i]))
                assert out.outputs[0, 0] == k * 1000.0 + i
                answered.append(out.version)
                i += 1

        clients = [asyncio.create_task(client(k)) for k in range(4)]
        await asyncio.sleep(0.05)
        add_version(repo, TinyModel("tiny_a"), 2)
        await store.load("tiny_a")
        info = model_info(store, "tiny_a")
        assert info.version == 2 and info.versions == [2]
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*clients)  # any failed request would raise here
        assert answered[0] == 1 and answered[-1] == 2

    run(Settings(repository=repo, models=["tiny_a"], warmup="one"), factory, body)


def test_polling_picks_up_a_new_version(repo: Path) -> None:
    async def body(store: ModelStore, pipe: Pipeline) -> None:
        add_version(repo, TinyModel("tiny_a"), 3)
        for _ in range(200):
            if model_info(store, "tiny_a").version == 3:
                break
            await asyncio.sleep(0.01)
        assert model_info(store, "tiny_a").version == 3

    run(Settings(repository=repo, models=["tiny_a"], poll_interval_s=0.02), fake_factory(EchoRuntime), body)


def test_unload_drains_in_flight_requests_then_refuses(tiny_repository: Path) -> None:
    factory = fake_factory(SlowRuntime, delay_s=0.02)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        inflight = [asyncio.create_task(pipe.infer("tiny_a", ids([float(i)]))) for i in range(12)]
        await asyncio.sleep(0.005)
        await store.unload("tiny_a")
        info = model_info(store, "tiny_a")
        assert info.state == "unloaded"
        results = await asyncio.gather(*inflight)
        assert [r.outputs[0, 0] for r in results] == [float(i) for i in range(12)]
        with pytest.raises(ModelNotReady):
            await pipe.infer("tiny_a", ids([1.0]))
        assert not store.is_model_ready("tiny_a")
        await store.load("tiny_a")
        info = model_info(store, "tiny_a")
        assert info.state == "ready"

    run(Settings(repository=tiny_repository, models=["tiny_a"], warmup="one"), factory, body)


def test_shutdown_turns_readiness_off_and_completes_accepted_work(tiny_repository: Path) -> None:
    async def main() -> None:
        store = ModelStore(Settings(repository=tiny_repository, models=["tiny_a"], warmup="one"))
        pipe = Pipeline(store)
        await store.start(wait=True)
        assert store.ready
        accepted = [asyncio.create_task(pipe.infer("tiny_a", ids([float(i)]))) for i in range(20)]
        await asyncio.sleep(0.005)
        shutting = asyncio.create_task(store.shutdown())
        await asyncio.sleep(0)
        assert not store.ready
        with pytest.raises(ModelNotReady):
            await pipe.infer("tiny_a", ids([99.0]))
        results = await asyncio.gather(*accepted)
        await shutting
        assert [r.outputs[0, 0] for r in results] == [float(i) for i in range(20)]

    with runtime_override(fake_factory(SlowRuntime, delay_s=0.02)):
        asyncio.run(main())


def test_classify_returns_top_k_with_timings(tiny_repository: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (10, 200, 30)).save(buf, "PNG")

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        with pipe.accept("tiny_b") as lv:
            result = await pipe.classify(lv, buf.getvalue(), top_k=3)
        assert result.version == 2 and len(result.predictions) == 3
        scores = [p.score for p in result.predictions]
        assert scores == sorted(scores, reverse=True)
        t = result.timings
        assert t.total_ms >= t.queue_ms + t.compute_ms and t.batch_size == 1
        with pytest.raises(InvalidInput, match="top_k"), pipe.accept("tiny_b") as lv:
            await pipe.classify(lv, buf.getvalue(), top_k=1000)

    run(Settings(repository=tiny_repository, models=["tiny_b"], warmup="one"), None, body)


def test_polling_retries_a_failed_model_only_after_its_directory_changes(repo: Path) -> None:
    from service.manifest import Manifest, sha256_file

    factory = fake_factory(EchoRuntime)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        assert model_info(store, "tiny_badsha").state == "failed"
        await asyncio.sleep(0.1)
        assert not factory.instances  # unchanged: sha256 still wrong, no session was ever built
        directory = repo / "tiny_badsha"
        manifest = Manifest.load(directory)
        fixed = manifest.model_copy(update={"files": {"1/model.onnx": sha256_file(directory / "1" / "model.onnx")}})
        fixed.save(directory)
        for _ in range(200):
            if model_info(store, "tiny_badsha").state == "ready":
                break
            await asyncio.sleep(0.01)
        assert model_info(store, "tiny_badsha").state == "ready"

    run(Settings(repository=repo, models=["tiny_badsha"], poll_interval_s=0.02), factory, body)


def test_failed_reload_is_an_error_while_the_previous_version_keeps_serving(repo: Path) -> None:
    async def body(store: ModelStore, pipe: Pipeline) -> None:
        add_version(repo, TinyModel("tiny_a"), 2)
        (repo / "tiny_a" / "2" / "model.onnx").write_bytes(b"tampered")  # sha256 no longer matches
        with pytest.raises(InvalidInput, match="sha256 mismatch"):
            await store.load("tiny_a")
        info = model_info(store, "tiny_a")
        assert info.state == "ready" and info.version == 1 and info.reason.startswith("reload failed")
        assert (await pipe.infer("tiny_a", ids([5.0]))).outputs[0, 0] == 5.0

    run(Settings(repository=repo, models=["tiny_a"]), fake_factory(EchoRuntime), body)


def test_drain_starts_at_begin_drain_and_the_rest_gets_503_at_the_timeout(tiny_repository: Path) -> None:
    class Gated(GatedRuntime):
        def warmup(self, batch_sizes):
            pass

    factory = fake_factory(Gated)

    async def main() -> None:
        store = ModelStore(Settings(repository=tiny_repository, models=["tiny_a"], drain_timeout_s=0.05))
        pipe = Pipeline(store)
        await store.start(wait=True)
        rt = factory.instances[-1]  # type: ignore[attr-defined]
        accepted = [asyncio.create_task(pipe.infer("tiny_a", ids([float(i)]))) for i in range(1, 6)]
        while not rt.entered.is_set():
            await asyncio.sleep(0.001)
        store.begin_drain()  # what SIGTERM does, before uvicorn waits for the connections
        assert not store.ready
        with pytest.raises(ModelNotReady):
            await pipe.infer("tiny_a", ids([9.0]))  # intake stopped
        # past the drain timeout every unanswered request (queued or computing) gets a 503 answer
        done, _ = await asyncio.wait(accepted, timeout=5)
        assert len(done) == 5 and all(isinstance(t.exception(), ModelNotReady) for t in done)
        rt.gate.set()
        await store.shutdown()
        assert 9.0 not in rt.computed_ids

    with runtime_override(factory):
        asyncio.run(main())


def test_instances_share_the_automatic_intra_op_threads(tmp_path: Path) -> None:
    from service.runtimes.onnxruntime.runtime import settings_session_config
    from service.runtimes.onnxruntime.session import instance_session

    auto = settings_session_config(Settings(repository=tmp_path, runtime_options={"intra_op_threads": 0}), 1)
    auto = dataclasses.replace(auto, intra_op_threads=4)
    assert instance_session(auto, 2).intra_op_threads == 2
    assert instance_session(auto, 8).intra_op_threads == 1
    assert instance_session(auto, 1).intra_op_threads == 4
    by_hand = settings_session_config(Settings(repository=tmp_path, runtime_options={"intra_op_threads": 4}), 1)
    assert instance_session(by_hand, 2).intra_op_threads == 4  # set by hand: kept


def test_a_model_whose_backend_no_runtime_serves_fails_with_the_reason_and_the_others_serve(repo: Path) -> None:
    from service.model_config import ModelConfig

    path = repo / "tiny_b" / "config.pbtxt"
    ModelConfig.load(path).model_copy(update={"backend": "no_such_backend"}).save(path)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        info = model_info(store, "tiny_b")
        assert info.state == "failed" and "no runtime for backend/platform 'no_such_backend'" in info.reason
        assert (await pipe.infer("tiny_a", ids([4.0]))).outputs[0, 0] == 4.0

    run(Settings(repository=repo, models=["tiny_a", "tiny_b"], warmup="one"), fake_factory(EchoRuntime), body)


class CpuGated(GatedRuntime):
    """A gated fake that computes on the CPU's threads, so its batches hold the compute gate as a CPU session's do."""

    provider = "CPUExecutionProvider"
    cpu_threads = 2

    def warmup(self, batch_sizes):
        pass


def test_models_on_the_cpu_take_turns_at_the_compute_gate(tiny_repository: Path) -> None:
    """Two CPU models, a budget of one thread: the second model's batch starts only when the first's ends."""

    a, b = fake_factory(CpuGated), fake_factory(CpuGated)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        assert store.compute_gate.threads == 1
        first = asyncio.create_task(pipe.infer("tiny_a", ids([1.0])))
        rt_a, rt_b = a.instances[-1], b.instances[-1]  # type: ignore[attr-defined]
        assert await asyncio.to_thread(rt_a.entered.wait, 5)
        second = asyncio.create_task(pipe.infer("tiny_b", ids([2.0])))
        while store.compute_gate.waiting == 0:
            await asyncio.sleep(0.005)
        assert not rt_b.entered.is_set()  # waiting for the cores, not computing
        rt_b.gate.set()
        await asyncio.sleep(0.05)
        assert not rt_b.entered.is_set() and not second.done()
        rt_a.gate.set()
        assert (await first).outputs[0, 0] == 1.0
        out = await second
        assert out.outputs[0, 0] == 2.0
        assert out.queue_s >= 0.05  # it waited for the cores at least as long as the test held them: queue time
        assert store.compute_gate.free == 1

    run(Settings(repository=tiny_repository, models=["tiny_a", "tiny_b"], compute_threads=1),
        by_model(tiny_a=a, tiny_b=b), body)


def test_a_gpu_model_is_not_held_by_the_compute_gate(tiny_repository: Path) -> None:
    class Gpu(EchoRuntime):
        provider = "CUDAExecutionProvider"

    cpu = fake_factory(CpuGated)

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        first = asyncio.create_task(pipe.infer("tiny_a", ids([1.0])))
        assert await asyncio.to_thread(cpu.instances[-1].entered.wait, 5)  # type: ignore[attr-defined]
        assert (await pipe.infer("tiny_b", ids([2.0]))).outputs[0, 0] == 2.0  # the cores are held: no matter
        cpu.instances[-1].gate.set()  # type: ignore[attr-defined]
        await first

    run(Settings(repository=tiny_repository, models=["tiny_a", "tiny_b"], compute_threads=1),
        by_model(tiny_a=cpu, tiny_b=fake_factory(Gpu)), body)


def test_values_in_a_known_range_are_not_scanned_again_and_the_others_are(tiny_repository: Path) -> None:
    """`run(known_range=...)` (the server's own preprocessing) skips the value scan only when that range is
    finite and inside the model's; a preprocessed image outside a narrow model range is still refused."""
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (10, 200, 30)).save(buf, "PNG")

    async def body(store: ModelStore, pipe: Pipeline) -> None:
        lv = store.version("tiny_a")
        lo, hi = lv.value_range
        extreme = ids([3e38])  # finite: only the scan refuses it
        out = await pipe.run(lv, extreme, known_range=(lo, hi))
        assert out.outputs[0, 0] == np.float32(3e38)
        for known in (None, (lo - 1.0, hi), (lo, hi + 1.0), (float("nan"), hi), (lo, float("inf"))):
            with pytest.raises(InvalidInput, match="input values must lie in"):
                await pipe.run(lv, extreme, known_range=known)
        with pytest.raises(InvalidInput, match="FP32"):  # the other checks stay
            await pipe.run(lv, extreme.astype(np.float64), known_range=(lo, hi))

        with pipe.accept("tiny_a") as admitted:
            assert len((await pipe.classify(admitted, buf.getvalue(), top_k=2)).predictions) == 2
            narrow = dataclasses.replace(admitted, value_range=(0.0, 0.1))
            with pytest.raises(InvalidInput, match="input values must lie in"):
                await pipe.classify(narrow, buf.getvalue(), top_k=2)

    run(Settings(repository=tiny_repository, models=["tiny_a"]), fake_factory(EchoRuntime), body)
