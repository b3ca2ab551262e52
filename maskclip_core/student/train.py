"""MaskCLIP+ training: teacher pseudo-labels for the first part of the schedule, then self-training rounds.

Round 0 trains on the caller's pseudo-labeled samples (``pseudo_fraction`` of the iterations, a tenth as
in the paper). Each later round relabels the unlabeled pool with the current student (its own softmax
confidence, passed through the caller's ``label_filter``) and trains on those labels. One poly learning
rate schedule spans all rounds. After every round the student is evaluated (when ground truth is given)
and checkpointed; a run that finds a checkpoint resumes after its round and ends exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import maskclip_core.student.checkpoint as ckpt
from maskclip_core.device import resolve_device
from maskclip_core.segmentation_metrics import SegmentationMetrics
from maskclip_core.student.augment import AugmentConfig
from maskclip_core.student.classifier import ClassVocabulary
from maskclip_core.student.data import CompressedLabels, ConcatSource, LabeledPool, SampleSource, as_sample, make_batch
from maskclip_core.student.inference import predict
from maskclip_core.student.model import StudentConfig, StudentNet, build_student
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

log = logging.getLogger(__name__)

# Where progress messages go: this module's logger, or the caller's (a Prefect run logger, passed in by tasks/).
Logger = logging.Logger | logging.LoggerAdapter

LabelFilter = Callable[[SegmentationResult], np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 8000
    batch_size: int = 4
    rounds: int = 2  # self-training rounds after the pseudo-label phase
    pseudo_fraction: float = 0.1  # share of the iterations trained on the teacher's pseudo-labels
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    min_lr: float = 1e-4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Inference sizes, as mmseg tests (short side 512, the training scale's base); None: as stored.
    relabel_short_side: int | None = 512
    eval_short_side: int | None = 512
    inference_batch_size: int = 8
    seed: int = 0
    log_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"]["scale_range"] = list(self.augment.scale_range)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        aug = dict(data.get("augment", {}))
        if "scale_range" in aug:
            aug["scale_range"] = tuple(aug["scale_range"])
        return cls(**{**data, "augment": AugmentConfig(**aug)})


@dataclass(frozen=True)
class RoundEnd:
    """Passed to ``on_round_end`` after a round's checkpoint is written."""

    round: int
    iteration: int
    checkpoint_url: str | None
    metrics: dict[str, Any] | None


@dataclass
class TrainResult:
    model: StudentNet
    metrics: list[dict[str, Any]]  # one record per evaluated round
    checkpoint_url: str | None  # weights of the last round
    resumed_from_round: int | None
    stopped_after_round: int | None = None  # set when ``stop_after_round`` ended training before the last round


def phase_ends(iterations: int, rounds: int, pseudo_fraction: float) -> list[int]:
    """End iteration (exclusive) of round 0 (pseudo-labels) and of each self-training round."""
    if rounds == 0:
        return [iterations]
    first = min(iterations - rounds, max(1, round(iterations * pseudo_fraction)))
    if first < 1:
        raise ValueError(f"{iterations} iterations cannot hold {rounds} self-training rounds")
    return [first] + [first + round((iterations - first) * r / rounds) for r in range(1, rounds + 1)]


def poly_lr(config: TrainConfig, iteration: int) -> float:
    """mmseg's poly policy: (lr - min_lr) * (1 - it / total) ** power + min_lr."""
    progress = 1.0 - iteration / config.iterations
    return (config.lr - config.min_lr) * progress**config.poly_power + config.min_lr


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labeled pixels. An all-ignore batch gives 0 (no signal, but the step and the
    schedule stay aligned), without asking the device whether any pixel is labeled: no sync per step."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp_min(1)


class _Images(Sequence[np.ndarray]):
    """The images of a sample source: the default unlabeled pool."""

    def __init__(self, source: SampleSource | Sequence[Any]) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return as_sample(self.source[index]).image


def relabel(
    model: StudentNet,
    pool: Sequence[np.ndarray],
    label_filter: LabelFilter,
    config: TrainConfig,
    logger: Logger = log,
) -> LabeledPool:
    """Label the pool with the student and filter the predictions into uint8 maps (255 = ignore)."""
    labels = CompressedLabels()
    kept = 0
    step = max(1, config.inference_batch_size)
    for start in range(0, len(pool), step):
        images = [pool[i] for i in range(start, min(start + step, len(pool)))]
        for image, result in zip(images, predict(model, images, config.relabel_short_side, step), strict=True):
            lab = np.asarray(label_filter(result))
            if lab.dtype != np.uint8 or lab.shape != image.shape[:2]:
                raise ValueError(f"label_filter must return uint8 {image.shape[:2]}, got {lab.dtype} {lab.shape}")
            labels.append(lab)
            kept += int((lab != IGNORE_INDEX).sum())
    if kept == 0:
        logger.warning("the label filter ignored every pixel of the unlabeled pool; this round learns nothing")
    return LabeledPool(pool, labels)


def evaluate_student(
    model: StudentNet, pairs: Sequence[tuple[np.ndarray, np.ndarray]], config: TrainConfig
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of the student on (image, ground-truth label map) pairs."""
    metrics = SegmentationMetrics(model.vocabulary.num_classes, model.class_names)
    step = max(1, config.inference_batch_size)
    for start in range(0, len(pairs), step):
        chunk = pairs[start : start + step]
        results = predict(model, [image for image, _ in chunk], config.eval_short_side, step)
        for result, (_, target) in zip(results, chunk, strict=True):
            metrics.update(result.labels, target)
    return metrics.summary()


def _train_steps(
    model: StudentNet,
    optimizer: torch.optim.Optimizer,
    source: Sequence[Any],
    config: TrainConfig,
    round_index: int,
    start: int,
    end: int,
    device: torch.device,
    logger: Logger = log,
) -> None:
    """Iterations [start, end) of the schedule: one round."""
    model.train()
    k = model.vocabulary.num_classes
    for it in range(start, end):
        images, labels = make_batch(source, config.augment, config.batch_size, config.seed, round_index, it - start)
        if bool(((labels != IGNORE_INDEX) & (labels >= k)).any()):
            raise ValueError(f"a label map has class indices >= {k} (the vocabulary size) that are not {IGNORE_INDEX}")
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(config, it)
        loss = _loss(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if config.log_every and (it + 1) % config.log_every == 0:
            logger.info("round %d iteration %d/%d loss %.4f", round_index, it + 1, config.iterations, loss.item())


def _check_same_student(saved: ckpt.StudentCheckpoint, model: StudentNet, url: str) -> None:
    """Resuming must continue the same network, classes and text embeddings (the weights' source may
    differ: it only mattered before the first step)."""
    same_config = replace(saved.config, backbone_weights=model.config.backbone_weights) == model.config
    saved_text = saved.state_dict["classifier.embeddings"]
    text = model.classifier.embeddings.cpu()
    same_text = saved_text.shape == text.shape and torch.allclose(saved_text, text)
    if not (same_config and saved.vocabulary == model.vocabulary and same_text):
        raise ValueError(f"checkpoint at {url} is for another student config, vocabulary or text embeddings")


def fit_student(
    model_config: StudentConfig,
    text_embeddings: torch.Tensor,
    vocabulary: ClassVocabulary,
    samples: SampleSource | Sequence[Any],
    config: TrainConfig,
    *,
    unlabeled: Sequence[np.ndarray] | None = None,
    label_filter: LabelFilter | None = None,
    eval_pairs: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    checkpoint_url: str | None = None,
    storage_options: dict | None = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    on_round_end: Callable[[RoundEnd], None] | None = None,
    clean: SampleSource | Sequence[Any] | None = None,
    stop_after_round: int | None = None,
    logger: Logger | None = None,
) -> TrainResult:
    """Train a student (pseudo-label phase, then ``config.rounds`` self-training rounds).

    ``samples``: (image, uint8 pseudo-label map) items from the teacher. ``unlabeled``: images relabelled
    by the student each round (default: the images of ``samples``). ``text_embeddings`` [Q, D] with
    ``vocabulary`` mapping queries to classes. With ``checkpoint_url`` every round is checkpointed there
    and, when ``resume``, a run continues after the newest checkpointed round. ``clean``: samples with
    trusted (human-reviewed) labels, trained on in every self-training round beside the relabelled pool
    (round 0 trains on ``samples``, which should hold them already; leave their images out of ``unlabeled``).
    ``stop_after_round``: return once this round is checkpointed (and ``on_round_end`` called); a later call
    resumes with the next round. ``logger`` receives the loss every ``config.log_every`` iterations and the
    round results (default: this module's logger).
    """
    logger = logger or log
    if config.batch_size < 2:
        raise ValueError("batch_size must be at least 2: BatchNorm (ASPP's image pooling) needs 2 values")
    if config.rounds > 0 and label_filter is None:
        raise ValueError("self-training rounds need a label_filter (SegmentationResult -> uint8 labels)")
    device = resolve_device(device or None)
    ends = phase_ends(config.iterations, config.rounds, config.pseudo_fraction)
    pool = unlabeled if unlabeled is not None else _Images(samples)

    latest = ckpt.read_latest(checkpoint_url, storage_options) if checkpoint_url and resume else None
    torch.manual_seed(config.seed)
    # A resumed run takes every weight from its checkpoint: no backbone download (it may run offline).
    model = build_student(
        model_config,
        text_embeddings,
        vocabulary,
        backbone_weights="none" if latest is not None else None,
        storage_options=storage_options,
    ).to(device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )

    metrics: list[dict[str, Any]] = []
    first_round, iteration, resumed_from = 0, 0, None
    if latest is not None:
        saved = ckpt.load_checkpoint(ckpt.resolve_checkpoint(checkpoint_url, storage_options), storage_options)
        _check_same_student(saved, model, checkpoint_url)
        model.load_state_dict(saved.state_dict)
        info = ckpt.load_train_state(checkpoint_url, saved.round, optimizer, storage_options)
        if info["train_config"] != config.to_dict():
            raise ValueError(f"checkpoint at {checkpoint_url} was trained with another TrainConfig")
        first_round, iteration, resumed_from = saved.round + 1, saved.iteration, saved.round
        metrics = info["metrics"]
        logger.info("resuming after round %d (iteration %d) from %s", saved.round, iteration, checkpoint_url)

    weights_url = None if latest is None else ckpt.resolve_checkpoint(checkpoint_url, storage_options)
    for r in range(first_round, len(ends)):
        start = 0 if r == 0 else ends[r - 1]
        if r == 0:
            source: Any = samples
        else:
            source = relabel(model, pool, label_filter, config, logger)  # type: ignore[arg-type]
            if clean is not None and len(clean):
                source = ConcatSource(source, clean)
        _train_steps(model, optimizer, source, config, r, start, ends[r], device, logger)
        iteration = ends[r]
        record = None
        if eval_pairs:
            record = {"round": r, "iteration": iteration, **evaluate_student(model, eval_pairs, config)}
            metrics.append(record)
            logger.info("round %d: mIoU %.4f pixel accuracy %.4f", r, record["miou"], record["pixel_accuracy"])
        if checkpoint_url:
            weights_url = ckpt.save_weights(checkpoint_url, model, r, iteration, storage_options)
            info = {"iteration": iteration, "metrics": metrics, "train_config": config.to_dict()}
            ckpt.save_train_state(checkpoint_url, r, optimizer, info, storage_options)
            ckpt.write_latest(checkpoint_url, r, iteration, storage_options)
        if on_round_end is not None:
            on_round_end(RoundEnd(r, iteration, weights_url, record))
        if stop_after_round is not None and stop_after_round <= r < len(ends) - 1:
            model.eval()
            return TrainResult(model, metrics, weights_url, resumed_from, stopped_after_round=r)
    model.eval()
    return TrainResult(model, metrics, weights_url, resumed_from)
