"""Fine-tuning: one training loop for every model, from a converted checkpoint or from scratch.

`vitserve-export finetune` and the digits demo (`vitserve-export train`) both come here. Per spec:
create the model and convert the checkpoint into it (export/checkpoint.py: the variant's new
parameters start function-preserving; a classifier of another size is replaced), train with AdamW,
a per-step linear warm-up then cosine decay, label smoothing and the variants' own auxiliary losses
(`VariantDef.loss`), on the GPU with autocast where there is one, then export through
`build_model` (the same gate as `vitserve-export build`) with the held-out evaluation of
export/evaluate.py written into the manifest.

Resuming: after every epoch the model, optimizer, scheduler and scaler state go to
`<state dir>/<model name>.pt` (atomically). A re-run with the same spec, data and recipe continues
after the last saved epoch; each epoch's shuffling and augmentation are seeded by (seed, epoch), so
a resumed run sees the epochs an uninterrupted run would have seen. A saved state that belongs to
another dataset or recipe is refused rather than silently reused. The state is read weights-only
(tensors and plain values: `load_state`), so a file planted in a shared repository folder never runs
code; every spec's state is checked before the first spec trains.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from export.data import Augmentation, ImageFolderData, SampleDataset, load_image_folder, train_transform
from service.manifest import Evaluation, TrainingRecipe

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from export.models.norms import AttentionBatchNorm
    from export.spec import ModelSpec

NormStatistics = Literal["auto", "frozen", "update"]
NORM_STATISTICS: tuple[NormStatistics, ...] = ("auto", "frozen", "update")
#: training batches whose statistics re-calibrate the converted BatchNorms when they are released
CALIBRATION_BATCHES = 8


@dataclass(frozen=True)
class FitConfig:
    """The training recipe (the manifest's `evaluation.recipe` records it, with the device used)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augmentation: Augmentation = "timm"
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    amp: bool = True  # autocast on CUDA (bf16 where supported, else fp16 with a grad scaler); fp32 on CPU
    workers: int = 0  # DataLoader worker processes
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke tests)
    #: BatchNorm statistics (a variant's BN over attention maps) frozen at their converted values while
    #: training: in train mode BN would normalise with batch statistics, which is not the function the
    #: checkpoint computed.
    #: `train_spec` freezes them when it starts from a checkpoint.
    freeze_norm_stats: bool = False
    #: what frozen statistics (`freeze_norm_stats`) do after the warm-up: `frozen` keeps them for the whole run
    #: (a converted BN is then a learnt per-channel affine map); `update` re-calibrates them on training
    #: batches at the end of the warm-up, with gamma/beta adjusted so the eval-mode function is unchanged
    #: (`release_norm_statistics`), then trains with batch statistics (the authors' BN); `auto` (the default)
    #: takes what the spec's variants ask for (`VariantDef.norm_statistics`: `update` when one does), as measured
    #: on the demo fine-tune (export/README.md, "BatchNorm statistics after a converted fine-tune"): better for
    #: the Refiner, not for re-attention.
    norm_statistics: NormStatistics = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be > 0, weight decay and warm-up >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.norm_statistics not in NORM_STATISTICS:
            raise ValueError(f"norm statistics must be one of {', '.join(NORM_STATISTICS)}, "
                             f"got {self.norm_statistics!r}")

    @property
    def releases_norm_statistics(self) -> bool:
        """Whether frozen BatchNorm statistics switch to batch statistics after the warm-up."""
        return self.freeze_norm_stats and self.norm_statistics == "update"


@dataclass
class FitResult:
    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    images_per_s: float | None = None
    device: str = "cpu"
    mixed_precision: str | None = None
    resumed_from_epoch: int = 0
    #: the optimizer step at which frozen BatchNorm statistics were released (`--norm-statistics update`)
    norm_statistics_released_at: int | None = None


@dataclass
class Trained:
    """A trained model (CPU, eval mode) and what the manifest needs to describe it."""

    spec: ModelSpec
    model: torch.nn.Module
    recipe: TrainingRecipe
    result: FitResult
    seconds: float


def pick_device(requested: str | None = None) -> torch.device:
    """`requested`, else CUDA when available, else CPU."""
    import torch

    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    import torch

    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # no weight decay on norms, biases, embeddings and what the model names (each variant's `no_weight_decay`);
    # parameters a variant trains at another rate (`VariantDef.lr_scale`, VariantViT.lr_scales) get their own
    # group, whose `lr_scale` multiplies the schedule's rate
    no_weight_decay = getattr(model, "no_weight_decay", None)  # timm ViTs (VariantViT adds the variants' own)
    skip = set(no_weight_decay()) if no_weight_decay is not None else set()
    lr_scales = getattr(model, "lr_scales", None)
    scales = dict(lr_scales()) if lr_scales is not None else {}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {(weight_decay, 1.0): [], (0.0, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = 0.0 if p.ndim <= 1 or name in skip else weight_decay
            groups.setdefault((decay, scales.get(name, 1.0)), []).append(p)
    return [{"params": params, "weight_decay": decay, "lr_scale": scale}
            for (decay, scale), params in groups.items()]


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically, through a fresh temporary name (a link planted at a fixed `.tmp` name is never followed)."""
    import tempfile

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: what a saved state holds (`fit` writes it); a file with anything else is not one
_STATE_TYPES: dict[str, type] = {"identity": str, "epoch": int, "model": dict, "optimizer": dict,
                                 "scheduler": dict, "scaler": dict, "epoch_losses": list}
_START_OVER = "delete it (or pass another --state-dir) to start over"


def load_state(path: Path, identity: str, epochs: int, map_location: Any = "cpu") -> dict[str, Any]:
    """The saved state at `path` if this run wrote it, else ValueError (one line naming the file).

    Read weights-only (tensors and plain values): a pickle planted in the state folder is refused
    before anything in it runs, and so are garbage bytes, another shape and another run's state.
    """
    import torch

    from export.checkpoint import read_weights_only

    if not path.is_file():  # a FIFO would block the read; a folder is no state either
        raise ValueError(f"saved fine-tuning state {path} is not a regular file; {_START_OVER}")
    try:
        state = read_weights_only(path, map_location)
    except ValueError as exc:
        raise ValueError(f"saved fine-tuning state {path} refused, not loaded: {exc}; {_START_OVER}") from None
    if (not isinstance(state, dict)
            or any(not isinstance(state.get(k), t) for k, t in _STATE_TYPES.items())
            or isinstance(state["epoch"], bool) or not 1 <= state["epoch"] <= epochs
            or not all(isinstance(v, torch.Tensor) for v in state["model"].values())
            or not all(isinstance(v, float) for v in state["epoch_losses"])):
        raise ValueError(f"saved fine-tuning state {path} is not a state this program wrote; {_START_OVER}")
    if state["identity"] != identity:
        raise ValueError(f"saved fine-tuning state {path} belongs to another spec, dataset or recipe; {_START_OVER}")
    return state


def _frozen_norms(model: torch.nn.Module) -> list[AttentionBatchNorm]:
    """The BatchNorms that keep frozen statistics in train mode (those a checkpoint conversion inserted)."""
    from export.models.norms import AttentionBatchNorm

    return [m for m in model.modules() if isinstance(m, AttentionBatchNorm) and m.frozen_stats]


def release_norm_statistics(model: torch.nn.Module, dataset: SampleDataset, config: FitConfig,
                            device: torch.device | None = None, *,
                            recalibrate: bool = True) -> list[AttentionBatchNorm]:
    """Let the converted BatchNorms train with batch statistics; return those released.

    With `recalibrate` (not on a resume, whose saved state already holds the re-calibrated values) their
    running statistics are first measured on `CALIBRATION_BATCHES` seeded training batches and gamma/beta
    adjusted so the eval-mode function is unchanged (`export.models.norms.recalibrate_statistics`). The
    batches are drawn under a forked RNG: the training run's own draws are the same with or without it.
    """
    import itertools

    import torch
    from torch.utils.data import DataLoader

    from export.models.norms import recalibrate_statistics

    norms = _frozen_norms(model)
    if norms and recalibrate:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 100_003 + 77_777)
            order = torch.Generator().manual_seed(config.seed * 100_003 + 77_777)
            loader = DataLoader(cast("Dataset[tuple[torch.Tensor, int]]", dataset), batch_size=config.batch_size,
                                shuffle=True, generator=order, num_workers=0)
            batches = (x.to(device) if device is not None else x
                       for x, _ in itertools.islice(loader, CALIBRATION_BATCHES))
            recalibrate_statistics(model, norms, batches)
    for norm in norms:
        norm.frozen_stats = False
        norm.train(model.training)
    return norms


def fit(
    model: torch.nn.Module,
    dataset: SampleDataset,
    config: FitConfig,
    *,
    state_file: Path | None = None,
    identity: str = "",
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Train `model` in place (and leave it on the CPU in eval mode); resumable through `state_file`.

    `identity` names what the state belongs to (spec, data, recipe); a state file with another
    identity raises ValueError.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    device = pick_device(config.device)
    amp_dtype = _amp_dtype(device, config.amp)
    result = FitResult(device=str(device), mixed_precision=str(amp_dtype).removeprefix("torch.") if amp_dtype else None)
    model.to(device)
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    groups = _param_groups(model, config.weight_decay)
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch = 0
    released_norms: list[AttentionBatchNorm] = []  # BNs released from frozen statistics: they train in train mode
    release_pending = config.releases_norm_statistics
    if state_file is not None and state_file.exists():
        state = load_state(state_file, identity, config.epochs, map_location=device)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"saved fine-tuning state {state_file} does not fit the model ({reason}); "
                             f"{_START_OVER}") from None
        start_epoch = state["epoch"]
        if config.releases_norm_statistics and start_epoch * steps_per_epoch > warmup:
            # released before this state was saved: its statistics and gamma/beta are already re-calibrated
            released_norms = release_norm_statistics(model, dataset, config, device, recalibrate=False)
            release_pending = False
            if released_norms:
                result.norm_statistics_released_at = warmup
        result.epoch_losses = list(state["epoch_losses"])
        result.resumed_from_epoch = start_epoch
        print(f"{desc}: resuming after epoch {start_epoch}/{config.epochs} from {state_file}", file=sys.stderr)
    aux = getattr(model, "auxiliary_loss", None)
    steps_done = start_epoch * steps_per_epoch
    bar = tqdm(total=(config.epochs - start_epoch) * len(dataset), desc=desc, unit="img", disable=not progress,
               file=sys.stderr, leave=False, dynamic_ncols=True)
    images, started = 0, time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            if config.max_steps is not None and steps_done >= config.max_steps:
                break
            torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation draws (transforms use torch's RNG)
            order = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            # a map-style dataset (__len__, __getitem__) that does not subclass torch's Dataset (no torch import)
            loader = DataLoader(cast("Dataset[tuple[torch.Tensor, int]]", dataset), batch_size=config.batch_size,
                                shuffle=True, generator=order, num_workers=config.workers,
                                pin_memory=device.type == "cuda", persistent_workers=False)
            model.train()
            if config.freeze_norm_stats:
                released = set(released_norms)
                for module in model.modules():
                    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module not in released:
                        module.eval()  # running statistics used and kept; its affine weights still train
            epoch_loss, batches = 0.0, 0
            for inputs, targets in loader:
                if release_pending and steps_done >= warmup:
                    # the end of the warm-up: statistics re-calibrated (same eval function), then batch statistics
                    release_pending = False
                    released_norms = release_norm_statistics(model, dataset, config, device)
                    if released_norms:  # a model without converted BatchNorms keeps saying `frozen`
                        result.norm_statistics_released_at = steps_done
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = F.cross_entropy(model(inputs), targets, label_smoothing=config.label_smoothing)
                    if aux is not None:
                        loss = loss + aux()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                value = float(loss.detach())
                result.step_losses.append(value)
                epoch_loss, batches = epoch_loss + value, batches + 1
                images += len(targets)
                steps_done += 1
                bar.update(len(targets))
                bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{value:.3f}")
                if config.max_steps is not None and steps_done >= config.max_steps:
                    break
            result.epoch_losses.append(epoch_loss / max(1, batches))
            if state_file is not None and batches == steps_per_epoch:  # only whole epochs are resumable
                _save_state(state_file, {
                    "identity": identity, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "epoch_losses": result.epoch_losses,
                })
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    result.images_per_s = images / elapsed if images and elapsed > 0 else None
    model.to("cpu").eval()
    return result


# --------------------------------------------------------------------------------------------------
# one spec: create + convert, train, export


def checkpoint_classes(checkpoint: Path) -> int | None:
    """The classifier size a checkpoint was trained with (its `head.weight` rows), if it has a head."""
    from export.checkpoint import load_state_dict_file

    state = load_state_dict_file(checkpoint)
    head = {k.removeprefix("module."): v for k, v in state.items()}.get("head.weight")
    return int(head.shape[0]) if head is not None else None


def make_model(spec: ModelSpec, num_classes: int, checkpoint: Path | None, seed: int) -> tuple[torch.nn.Module, str]:
    """The model to train and how it starts: the checkpoint converted into the spec (function-preserving
    start; a head of another size is replaced by a fresh seeded one), or seeded random weights.

    Raises ValueError before any training when the checkpoint does not fit the spec's architecture.
    """
    import torch

    from export.checkpoint import load_checkpoint
    from export.models import create_model

    if checkpoint is None:
        return create_model(spec, num_classes=num_classes, seed=seed), f"random(seed={seed})"
    ckpt_classes = checkpoint_classes(checkpoint) or num_classes
    model = create_model(spec, num_classes=ckpt_classes, seed=seed)
    try:
        load_checkpoint(model, checkpoint)
    except ValueError as exc:
        raise ValueError(f"checkpoint does not fit {spec} (a checkpoint of another architecture?): {exc}") from None
    start = f"checkpoint:{checkpoint.name} (function-preserving conversion)"
    if ckpt_classes != num_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.reset_classifier(num_classes)
        start += f", new {num_classes}-class head"
    return model, start


def _spec_config(config: FitConfig, checkpoint: Path | None, spec: ModelSpec) -> FitConfig:
    """The recipe one spec trains with: BN statistics frozen when it starts from a checkpoint (and released after
    the warm-up under `norm_statistics="update"`); `auto` resolved by the spec's variants."""
    from export import variants as registry

    if config.norm_statistics == "auto":
        wanted = {registry.get(v).norm_statistics for v in spec.variants}
        config = replace(config, norm_statistics="update" if "update" in wanted else "frozen")
    return replace(config, freeze_norm_stats=True) if checkpoint is not None else config


def _identity(spec: ModelSpec, data: ImageFolderData, config: FitConfig, start: str) -> str:
    recipe = {k: v for k, v in asdict(config).items() if k not in ("device", "workers", "max_steps")}
    if recipe["norm_statistics"] == "frozen":
        del recipe["norm_statistics"]  # the default before the option existed: earlier saved states still resume
    text = json.dumps({"spec": str(spec), "options": spec.options, "data": data.identity.model_dump(),
                       "recipe": recipe, "start": start}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def recipe_of(model: torch.nn.Module, spec: ModelSpec, config: FitConfig, start: str, result: FitResult,
              train_images: int) -> TrainingRecipe:
    labels = getattr(model, "auxiliary_loss_labels", None)
    aux = list(labels()) if labels is not None else []
    return TrainingRecipe(
        start=start, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing, augmentation=config.augmentation, auxiliary_losses=aux,
        mixed_precision=result.mixed_precision, device=result.device, seed=config.seed, train_images=train_images,
        norm_statistics=("batch" if not config.freeze_norm_stats
                         else "batch-after-warmup" if result.norm_statistics_released_at is not None else "frozen"),
    )


def train_spec(
    spec_text: str | ModelSpec,
    data: ImageFolderData,
    config: FitConfig,
    *,
    checkpoint: Path | None = None,
    state_dir: Path | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Trained:
    """Create (and convert) the model for one spec and train it on `data` (see `fit`)."""
    import torch

    from export.presets import get_preset
    from export.spec import parse_spec

    if threads is not None:
        torch.set_num_threads(threads)
    spec = parse_spec(spec_text) if isinstance(spec_text, str) else spec_text
    model, start = make_model(spec, len(data.classes), checkpoint, config.seed)
    config = _spec_config(config, checkpoint, spec)
    dataset = SampleDataset(data.train, train_transform(get_preset(spec.preset).data, config.augmentation))
    state_file = state_dir / f"{spec.name}.pt" if state_dir is not None else None
    started = time.perf_counter()
    result = fit(model, dataset, config, state_file=state_file, identity=_identity(spec, data, config, start),
                 desc=f"train {spec.name}", progress=progress)
    recipe = recipe_of(model, spec, config, start, result, len(data.train))
    return Trained(spec, model, recipe, result, time.perf_counter() - started)


def export_trained(trained: Trained, data: ImageFolderData, repository: Path, *, progress: bool = True,
                   **build_kwargs: Any) -> Path:
    """Export like `vitserve-export build`, with the held-out evaluation (served path) in the manifest."""
    from export.build import build_model
    from export.evaluate import evaluate_onnx
    from export.presets import get_preset

    preprocess = get_preset(trained.spec.preset).data

    def evaluate(onnx_file: Path, **how: Any) -> Evaluation:  # how: openvino_precision for an OpenVINO copy
        return evaluate_onnx(onnx_file, data.heldout, preprocess, data.identity, recipe=trained.recipe, **how)

    wants_copies = any(build_kwargs.get(k) for k in ("int8", "fp16", "openvino", "openvino_bf16"))
    if wants_copies and build_kwargs.get("agreement_inputs") is None and build_kwargs.get("int8_inputs") is None:
        import numpy as np

        from export.evaluate import preprocess_files

        # the copies' agreement on the held-out images as the service sees them (not on random inputs)
        build_kwargs["agreement_inputs"] = np.stack(preprocess_files(data.heldout, preprocess)[1]).astype(np.float32)
        build_kwargs["agreement_inputs_description"] = (
            f"{data.identity.key} held-out ({len(data.heldout)} images, the service's preprocessing)")
    return build_model(trained.spec, repository, model=trained.model, weights=f"trained:{data.identity.key}",
                       labels=data.classes, evaluate=evaluate, progress=progress, **build_kwargs)


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    """The model's state dict as a weights-only torch file (atomically)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def device_line(config: FitConfig, threads: int | None = None) -> str:
    """One line saying where training runs (logged once per command)."""
    import torch

    device = pick_device(config.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        amp = _amp_dtype(device, config.amp)
        return f"training on {device} ({name}), mixed precision {str(amp).removeprefix('torch.') if amp else 'off'}"
    return f"training on cpu ({threads or torch.get_num_threads()} torch threads per job), fp32"


def finetune_repository(
    data_dir: Path,
    specs: Sequence[str | ModelSpec],
    repository: Path,
    config: FitConfig,
    *,
    checkpoint: Path | None = None,
    state_dir: Path | None = None,
    val_fraction: float = 0.2,
    dataset_name: str | None = None,
    spec_epochs: dict[str, int] | None = None,
    jobs: int = 1,
    threads: int = 1,
    progress: bool = True,
    weights_dir: Path | None = None,
    **build_kwargs: Any,
) -> dict[str, Evaluation]:
    """Fine-tune every spec on the image folder and export it; return {model name: evaluation}.

    Everything that can be refused is checked first (specs, data, the checkpoint against every spec).
    `jobs` specs train at once in worker processes with `threads` torch threads each (results do not
    depend on it: each spec has its own seeded generators); export runs in this process.
    `weights_dir` also keeps each trained state dict as `<dir>/<model name>.pth` (a checkpoint that
    `--checkpoint` accepts, e.g. a fine-tuned vanilla model to convert into variants).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from export.spec import parse_spec

    if jobs < 1 or threads < 1:
        raise ValueError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    parsed = [t if not isinstance(t, str) else parse_spec(t) for t in specs]  # once: they travel parsed from here
    texts = [str(s) for s in parsed]
    if len({s.name for s in parsed}) != len(parsed):
        raise ValueError("the same spec is given twice")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint file not found: {checkpoint}")
    data = load_image_folder(Path(data_dir), val_fraction=val_fraction, seed=config.seed, name=dataset_name)
    print(data.summary(), file=sys.stderr)
    state_dir = state_dir if state_dir is not None else repository / ".finetune"
    configs = [replace(config, epochs=(spec_epochs or {}).get(t, config.epochs)) for t in texts]
    # refuse a misfit checkpoint or saved state before training
    for spec, spec_config in zip(parsed, configs, strict=True):
        _, start = make_model(spec, len(data.classes), checkpoint, config.seed)
        state_file = state_dir / f"{spec.name}.pt"
        if state_file.exists():
            load_state(state_file, _identity(spec, data, _spec_config(spec_config, checkpoint, spec), start),
                       spec_config.epochs)
    print(device_line(config, threads), file=sys.stderr)
    repository.mkdir(parents=True, exist_ok=True)
    if jobs == 1:
        trained_iter = (train_spec(s, data, c, progress=progress, checkpoint=checkpoint, state_dir=state_dir,
                                   threads=threads) for s, c in zip(parsed, configs, strict=True))
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(train_spec, s, data, c, progress=False, checkpoint=checkpoint, state_dir=state_dir,
                               threads=threads) for s, c in zip(parsed, configs, strict=True)]
        trained_iter = (f.result() for f in futures)
    out: dict[str, Evaluation] = {}
    try:
        for trained in trained_iter:
            model_dir = export_trained(trained, data, repository, progress=progress, **build_kwargs)
            from service.manifest import Manifest

            evaluation = Manifest.load(model_dir).evaluation
            assert evaluation is not None
            out[trained.spec.name] = evaluation
            speed = f"{trained.result.images_per_s:.0f} img/s" if trained.result.images_per_s else "no steps run"
            print(f"{trained.spec.name:<16} held-out top-1 {evaluation.top1:.2%} top-5 {evaluation.top5:.2%} "
                  f"({evaluation.num_images} images, {data.identity.key}); trained {trained.seconds:.0f}s, "
                  f"{speed} on {trained.result.device}", file=sys.stderr)
            if weights_dir is not None:
                save_weights(trained.model, Path(weights_dir) / f"{trained.spec.name}.pth")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out
