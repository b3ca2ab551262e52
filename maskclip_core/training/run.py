"""Training (or resuming) a planned student, without Prefect: the training set, the teacher's text
embeddings, the pseudo-label phase and the self-training rounds (``student.fit_student``; the relabelled
pool filtered by the labeling flow's own ``filter_labels``), a checkpoint and a metrics row after every round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from maskclip_core.dataset.metrics_table import metrics_row, read_metrics, write_metrics
from maskclip_core.evaluation.ground_truth import GroundTruth, GroundTruthParameters, restrict_summary
from maskclip_core.labeling.filter import FilterConfig, filter_labels
from maskclip_core.storage.fs import join_url
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.training.data import LazyImages, TrainingSet, load_training_set
from maskclip_core.training.embeddings import text_embeddings
from maskclip_core.training.parameters import ClipParameters
from maskclip_core.training.plan import TrainingPlan
from maskclip_core.training.teacher_scores import ground_truth_for
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

if TYPE_CHECKING:
    from maskclip_core.student.train import RoundEnd

log = logging.getLogger(__name__)


def confidence_filter(filters: FilterConfig) -> Callable[[SegmentationResult], np.ndarray]:
    """The labeling flow's confidence filter as a ``label_filter``: a rejected image becomes all ignore."""

    def label_filter(result: SegmentationResult) -> np.ndarray:
        filtered = filter_labels(result, filters)
        if filtered.rejection is not None:
            return np.full(filtered.labels.shape, IGNORE_INDEX, dtype=np.uint8)
        return filtered.labels

    return label_filter


@dataclass
class TrainingOutcome:
    """What a training run reports back (small: no tensors)."""

    run: str
    checkpoint_dir: str
    checkpoint: str | None  # weights of the newest round
    round: int | None  # newest checkpointed round
    rounds: int  # rounds of the schedule after the pseudo-label phase
    resumed_from_round: int | None
    stopped: bool  # stopped after ``stop_after_round`` before the last round
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the run's metrics rows (teacher, rounds)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.round == self.rounds


def run_training(
    plan: TrainingPlan,
    ground_truth: GroundTruthParameters | None = None,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    flow_run_id: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> TrainingOutcome:
    """Train (or resume) the plan's student; a metrics row per round is written when ``ground_truth`` is given.

    ``on_round`` receives ``{"round", "iteration", "checkpoint", "metrics"}`` after each round's checkpoint.
    ``logger`` receives the run's messages and the training loss (default: this module's logger).
    """
    logger = logger or log
    from maskclip_core.student import checkpoint as ckpt
    from maskclip_core.student.model import StudentConfig
    from maskclip_core.student.train import TrainConfig, fit_student

    vocabulary = Vocabulary.from_json(plan.vocabulary)
    config = TrainConfig.from_dict(plan.train_config)
    latest = ckpt.read_latest(plan.checkpoint_url, plan.storage_options)
    stop = plan.stop_after_round
    if latest is not None and (latest["round"] >= config.rounds or (stop is not None and latest["round"] >= stop)):
        logger.info("run %s: round %d is checkpointed already; nothing to train", plan.run, latest["round"])
        return _outcome(plan, latest, resumed_from=latest["round"], counts={})

    data = _training_set(plan, vocabulary)
    logger.info("run %s: %s", plan.run, data.counts)
    truth = ground_truth_for(plan, ground_truth) if ground_truth is not None else None
    eval_pairs = truth.pairs(LazyImages(truth.refs, data.reader)) if truth is not None else None
    embeddings, class_vocabulary = text_embeddings(ClipParameters(**plan.clip), vocabulary, plan.device)
    report = _RoundReport(plan, truth, ground_truth, flow_run_id, on_round)
    result = fit_student(
        StudentConfig.from_dict(plan.student_config),
        embeddings,
        class_vocabulary,
        data.samples,
        config,
        unlabeled=data.pool,
        label_filter=confidence_filter(FilterConfig(**plan.filters)),
        eval_pairs=eval_pairs,
        checkpoint_url=plan.checkpoint_url,
        storage_options=plan.storage_options,
        device=plan.device,
        on_round_end=report.round_end,
        clean=data.clean if plan.data["use_reviewed"] else None,
        stop_after_round=stop,
        logger=logger,
    )
    stopped = result.stopped_after_round is not None  # the rest is trained by a later run
    if not stopped and result.resumed_from_round is not None:
        report.rewrite_resumed(result.metrics, result.resumed_from_round)
    latest = ckpt.read_latest(plan.checkpoint_url, plan.storage_options)
    return _outcome(plan, latest, resumed_from=result.resumed_from_round, counts=data.counts, stopped=stopped)


def _training_set(plan: TrainingPlan, vocabulary: Vocabulary) -> TrainingSet:
    """The plan's samples and pool, refused when the data changed since the plan was made."""
    data = load_training_set(
        plan.dataset_url,
        plan.config_hash,
        vocabulary.names,
        storage_options=plan.storage_options,
        image_storage_options=plan.data["image_storage_options"],
        use_reviewed=plan.data["use_reviewed"],
        pool_rejected=plan.data["pool_rejected"],
        cache_bytes=int(plan.data["image_cache_mb"]) * 2**20,
    )
    if data.fingerprint != plan.fingerprint:
        raise ValueError(f"the data at {plan.dataset_url} changed since run {plan.run} was planned: plan it again")
    return data


@dataclass
class _RoundReport:
    """After each round: the student's metrics row (with a ground truth) and the caller's ``on_round``."""

    plan: TrainingPlan
    truth: GroundTruth | None
    ground_truth: GroundTruthParameters | None
    flow_run_id: str | None
    on_round: Callable[[dict[str, Any]], None] | None

    def round_end(self, event: RoundEnd) -> None:
        if event.metrics is not None and self.truth is not None:
            self._write(event.metrics, event.checkpoint_url)
        if self.on_round is not None:
            scored = event.metrics is not None and self.truth is not None
            self.on_round(
                {
                    "round": event.round,
                    "iteration": event.iteration,
                    "checkpoint": event.checkpoint_url,
                    "metrics": _restricted(event.metrics, self.truth) if scored else None,  # type: ignore[arg-type]
                }
            )

    def rewrite_resumed(self, records: list[dict[str, Any]], resumed_from_round: int) -> None:
        """``round_end`` wrote this run's rounds; those of the earlier, interrupted run are rewritten as they were."""
        from maskclip_core.student import checkpoint as ckpt

        if self.truth is None:
            return
        for record in records:
            if int(record["round"]) <= resumed_from_round:
                self._write(record, ckpt.weights_url(self.plan.checkpoint_url, int(record["round"])))

    def _write(self, record: Mapping[str, Any], checkpoint: str | None) -> None:
        assert self.truth is not None and self.ground_truth is not None
        row = metrics_row(
            self.plan.run,
            "student",
            _restricted(record, self.truth),
            round=int(record["round"]),
            iteration=int(record["iteration"]),
            images=len(self.truth),
            config_hash=self.plan.config_hash,
            checkpoint=checkpoint,
            ground_truth=self.ground_truth.url,
            flow_run_id=self.flow_run_id,
        )
        write_metrics(self.plan.dataset_url, [row], self.plan.storage_options)


def _restricted(record: Mapping[str, Any], truth: GroundTruth) -> dict[str, Any]:
    return restrict_summary(record, truth.evaluated)


def _outcome(
    plan: TrainingPlan,
    latest: Mapping[str, Any] | None,
    *,
    resumed_from: int | None,
    counts: dict[str, int],
    stopped: bool = False,
) -> TrainingOutcome:
    round_ = None if latest is None else int(latest["round"])
    return TrainingOutcome(
        run=plan.run,
        checkpoint_dir=plan.checkpoint_url,
        checkpoint=None if latest is None else join_url(plan.checkpoint_url, latest["weights"]),
        round=round_,
        rounds=plan.rounds,
        resumed_from_round=resumed_from,
        stopped=stopped or (round_ is not None and round_ < plan.rounds),
        metrics=read_metrics(plan.dataset_url, plan.storage_options, run=plan.run),
        counts=counts,
    )
