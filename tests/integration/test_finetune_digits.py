"""The whole loop on real data: the session's vanilla `demo` checkpoint (tests/conftest.py `trained_demo`, trained
from scratch on the sklearn digits by the default demo recipe, DEMO_CONFIG, reaches 95 %), fine-tuned into every
variant through `vitserve-export finetune` on the digits written as an image folder (the 1400/397 split), served
by a real `vitserve serve`, and every held-out image classified over HTTP: each variant reaches 93 % and stays
within 3 points of the vanilla model fine-tuned by the same recipe, and the accuracy the manifest, /v1/models and
/metrics report is exactly what HTTP measures.

Both tests of the trained demo live in this file, so `make test`'s workers (one file each) train it once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from repository_builder import TrainedDemo
from service_server import ServerProcess, start_server

from service.manifest import Manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
#: the demo recipe's floor (export/train.py; `make demo` trains with --min-accuracy 0.95)
MIN_TRAINED_ACCURACY = 0.95
#: the test's fine-tuning recipe (kept short: CI cost): 3 epochs at half the bench table's learning rate and without
#: its augmentation reach that recipe's accuracy (~96 %) in about half its time; the vanilla checkpoint they
#: start from is the session's trained demo (`trained_demo`, the default recipe), shared with the demo training test
FINETUNE_EPOCHS = 3
FINETUNE_LR = "1e-3"
#: bounds with a margin that holds across CPUs: one held-out image is 0.25 points, and training's floating-point
#: results differ between machines (AMD and Intel gave one image either side of 95 % for demo-cb); the binomial
#: spread of an accuracy near 96 % on 397 images is about 1 point, so each bound sits about 3 of those below the
#: typical figure (~96-98 %) while a broken conversion (chance: 10 %) or a variant that forgot its start is far off
MIN_ACCURACY = 0.93
MAX_GAP = 0.03


@dataclass(frozen=True)
class Finetuned:
    repository: Path
    data: Path
    names: list[str]
    log: str


@pytest.fixture(scope="session")
def finetuned_digits(tmp_path_factory: pytest.TempPathFactory, trained_demo: TrainedDemo) -> Finetuned:
    pytest.importorskip("torch")
    from export.spec import parse_spec
    from export.train import DATASET, DEMO_SPECS, write_digits_folder

    root = tmp_path_factory.mktemp("finetune_digits")
    data = write_digits_folder(root / DATASET)
    repository = root / "repository"
    cmd = [sys.executable, "-m", "export.cli", "finetune", "--data", str(data), "--checkpoint",
           str(trained_demo.weights), "--repository", str(repository), "--epochs", str(FINETUNE_EPOCHS),
           "--lr", FINETUNE_LR, "--batch-size", "32", "--augment", "none", "--jobs", "2", "--threads", "1", "--quiet",
           *DEMO_SPECS]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    return Finetuned(repository, data, [parse_spec(s).name for s in DEMO_SPECS], done.stderr)


@pytest.fixture(scope="module")
def finetuned_server(finetuned_digits: Finetuned, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(finetuned_digits.repository, tmp_path_factory.mktemp("finetuned_server"), ready_timeout=300)
    try:
        yield srv
    finally:
        assert srv.stop() == 0


def _http_accuracy(server: ServerProcess, data: Path, names: list[str]) -> tuple[dict[str, float], set[bool]]:
    """Every held-out PNG through POST /v1/compare (all models at once): top-1 accuracy per model."""
    files = sorted((data / "val").glob("*/*.png"))
    assert len(files) == 397
    correct = dict.fromkeys(names, 0)
    same_dataset: set[bool] = set()

    async def run() -> None:
        limit = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            async def one(path: Path) -> None:
                async with limit:
                    r = await client.post("/v1/compare", params={"models": ",".join(names), "top_k": 1},
                                          content=path.read_bytes(), headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text
                body = r.json()
                same_dataset.add(body["same_dataset"])
                for entry in body["results"]:
                    assert entry["status"] == 200, entry
                    correct[entry["model"]] += entry["predictions"][0]["label"] == path.parent.name

            await asyncio.gather(*(one(p) for p in files))

    asyncio.run(run())
    return {n: c / len(files) for n, c in correct.items()}, same_dataset


def test_training_the_demo_model_reaches_95_percent(trained_demo: TrainedDemo) -> None:
    from export.train import DATASET

    results = trained_demo.results  # the session's vanilla demo, trained by the default recipe (tests/conftest.py)
    assert results["demo"] >= MIN_TRAINED_ACCURACY
    evaluation = Manifest.load(trained_demo.repository / "demo").evaluation
    assert evaluation is not None and evaluation.top1 == results["demo"] and evaluation.dataset.name == DATASET
    assert evaluation.recipe is not None and evaluation.recipe.start == "random(seed=0)"


def test_every_variant_finetuned_from_vanilla_matches_it_over_http(
    finetuned_digits: Finetuned, finetuned_server: ServerProcess
) -> None:
    names = finetuned_digits.names
    accuracy, same_dataset = _http_accuracy(finetuned_server, finetuned_digits.data, names)
    table = "\n".join(f"  {n:<14} {accuracy[n]:.2%}" for n in names)
    print(f"held-out accuracy over HTTP (397 digits):\n{table}")
    assert same_dataset == {True}
    vanilla = accuracy["demo"]
    for name in names:
        assert accuracy[name] >= MIN_ACCURACY, f"{name} below {MIN_ACCURACY:.0%}:\n{table}"
        assert accuracy[name] >= vanilla - MAX_GAP, f"{name} more than {MAX_GAP:.0%} below vanilla:\n{table}"
        manifest = Manifest.load(finetuned_digits.repository / name)
        evaluation = manifest.evaluation
        assert evaluation is not None and evaluation.num_images == 397
        # the manifest's number is the served number: same graph, same preprocessing, same files
        assert evaluation.top1 == pytest.approx(accuracy[name], abs=1e-12), name
        assert evaluation.recipe is not None and evaluation.recipe.epochs == FINETUNE_EPOCHS
        assert evaluation.recipe.start.startswith("checkpoint:demo.pth")
    lavit = Manifest.load(finetuned_digits.repository / "demo-lavit").evaluation
    assert lavit is not None and lavit.recipe is not None and lavit.recipe.auxiliary_losses


def test_models_and_metrics_show_each_models_evaluation(
    finetuned_digits: Finetuned, finetuned_server: ServerProcess
) -> None:
    models = httpx.get(finetuned_server.base_url + "/v1/models").json()["models"]
    identities = {m["evaluation"]["dataset"]["fingerprint"] for m in models}
    assert {m["name"] for m in models} == set(finetuned_digits.names) and len(identities) == 1
    metrics = httpx.get(finetuned_server.base_url + "/metrics").text
    for m in models:
        ev = m["evaluation"]
        key = f'{ev["dataset"]["name"]}@{ev["dataset"]["fingerprint"][:12]}'
        line = f'vitserve_model_accuracy{{dataset="{key}",metric="top1",model="{m["name"]}"}} {ev["top1"]}'
        assert line in metrics, line
