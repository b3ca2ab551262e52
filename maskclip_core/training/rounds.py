"""Training a MaskCLIP+ student on a labeling run's dataset, end to end, without Prefect.

The ``tasks`` layer wraps three steps, which pass only small records (:class:`TrainingPlan`,
:class:`TrainingOutcome`, metrics rows) and URLs between them:

1. :func:`plan_training`: which teacher labeling to train on (its config hash), its classes, the CLIP model
   whose text embeddings become the student's classifier (from the labeling record, or given), the filter,
   the network and schedule, a fingerprint of the data, and from all of that the run's name and its
   checkpoint folder ``OUTPUT/checkpoints/<run>/``. A run folder holds ``run.json`` with that identity: the
   same parameters on the same data give the same run, which resumes from its newest checkpoint.
2. :func:`evaluate_teacher`: the teacher's stored pseudo-labels against a ground truth.
3. :func:`run_training`: samples from the store (``training_data``), text embeddings built exactly as the
   teacher's (``load_clip`` + the text-classifier cache over the same vocabulary and templates), the
   pseudo-label phase and the self-training rounds (``student.fit_student``; relabelled pool filtered by
   the labeling flow's own ``filter_labels``), checkpoints and a metrics row after every round.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.dataset.fs import atomic_write_bytes, join_url, read_bytes, resolve
from maskclip_core.dataset.labelings import read_labeling_record
from maskclip_core.dataset.metrics import metrics_row, read_metrics, write_metrics
from maskclip_core.dataset.reader import source_root
from maskclip_core.dataset.store import LabelStore
from maskclip_core.evaluation.ground_truth import GroundTruth, GroundTruthSpec, load_ground_truth
from maskclip_core.labeling.filter import FilterConfig, filter_labels
from maskclip_core.student.backbones import BackboneName
from maskclip_core.student.model import HeadName
from maskclip_core.teacher.clip_loader import DEFAULT_MODEL, DEFAULT_PRETRAINED
from maskclip_core.teacher.prompts import TemplateSetName, templates_for
from maskclip_core.teacher.vocabulary import ClassSpec, Vocabulary
from maskclip_core.training.data import ImageRef, LazyImages, load_training_set, training_fingerprint
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

log = logging.getLogger(__name__)

RUN_MANIFEST = "run.json"


# --- parameters (flow parameters: their bounds and descriptions show in the deployment form) -------------


class ClipSpec(BaseModel):
    """The CLIP model whose text embeddings are the student's frozen classifier (the teacher's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="open_clip model name of the teacher, e.g. ViT-B-16")
    pretrained: str = Field(DEFAULT_PRETRAINED, description="open_clip tag, a local checkpoint path, or 'none'")
    seed: int = Field(0, description="Seed of random weights (pretrained='none')")
    templates: TemplateSetName = Field("maskclip", description="Prompt templates of the teacher")

    @classmethod
    def from_labeler_config(cls, config: Mapping[str, Any]) -> ClipSpec:
        """From a ``LabelerConfig`` (object or dict)."""
        data = config.model_dump() if hasattr(config, "model_dump") else dict(config)
        return cls(model=data["model"], pretrained=data["pretrained"], seed=data["seed"], templates=data["templates"])


class StudentSpec(BaseModel):
    """The student network (``StudentConfig`` without the embedding size, which is the CLIP's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: BackboneName = Field(
        "resnet101", description="Dilated backbone; resnet101 is MaskCLIP+'s, mobilenet_v3_large the light one"
    )
    output_stride: Literal[8, 16] = Field(8, description="Feature stride of the backbone")
    head: HeadName = Field("deeplabv3", description="DeepLab head (ASPP)")
    head_channels: int = Field(256, ge=4, le=4096, description="Channels of the head")
    temperature: float = Field(50.0, gt=0, description="Logits are temperature x cosine(feature, text embedding)")
    backbone_weights: str = Field(
        "imagenet", description="'imagenet', 'none' (from scratch) or a path / URL of a torchvision state dict"
    )

    def config(self, embed_dim: int) -> Any:
        from maskclip_core.student.model import StudentConfig

        return StudentConfig(embed_dim=embed_dim, **self.model_dump())


class ScheduleSpec(BaseModel):
    """Iterations, rounds and optimisation (``TrainConfig``); the defaults are MaskCLIP+'s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(8000, ge=1, description="Total iterations, all rounds together")
    rounds: int = Field(2, ge=0, le=100, description="Self-training rounds after the pseudo-label phase")
    pseudo_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the iterations on teacher pseudo-labels")
    batch_size: int = Field(4, ge=2, le=1024, description="Images per iteration")
    lr: float = Field(0.01, gt=0, description="Initial learning rate (SGD, poly decay)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    poly_power: float = Field(0.9, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    crop_size: int = Field(512, ge=16, le=4096, description="Training crop in pixels")
    scale_range: tuple[float, float] = Field((0.5, 2.0), description="Random rescaling of the base size")
    base_short_side: int | None = Field(512, ge=16, description="Scale relative to this short side; null: as stored")
    cat_max_ratio: float = Field(0.75, gt=0, le=1, description="Re-draw crops where one class covers more")
    flip: bool = True
    photometric: bool = True
    relabel_short_side: int | None = Field(512, ge=16, description="Short side when the student relabels the pool")
    eval_short_side: int | None = Field(512, ge=16, description="Short side when the student is evaluated")
    inference_batch_size: int = Field(8, ge=1, le=1024)
    seed: int = 0
    log_every: int = Field(50, ge=0, description="Log the loss every N iterations (0: never)")

    @model_validator(mode="after")
    def _fits(self) -> ScheduleSpec:
        if self.iterations < self.rounds + 1:
            raise ValueError(
                f"{self.iterations} iterations cannot hold the pseudo-label phase and {self.rounds} rounds"
            )
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range {self.scale_range} must be increasing and positive")
        return self

    def train_config(self) -> Any:
        from maskclip_core.student.augment import AugmentConfig
        from maskclip_core.student.train import TrainConfig

        augment = AugmentConfig(
            crop_size=self.crop_size,
            scale_range=tuple(self.scale_range),
            base_short_side=self.base_short_side,
            cat_max_ratio=self.cat_max_ratio,
            flip=self.flip,
            photometric=self.photometric,
        )
        fields = self.model_dump(
            exclude={"crop_size", "scale_range", "base_short_side", "cat_max_ratio", "flip", "photometric"}
        )
        return TrainConfig(**fields, augment=augment)


class DataSpec(BaseModel):
    """Which labels and images of the dataset the student learns from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_hash: str | None = Field(
        None, description="The teacher labeling to train on; default: the dataset's only teacher labeling"
    )
    use_reviewed: bool = Field(True, description="Human-reviewed label maps replace the pseudo-labels of their images")
    pool_rejected: bool = Field(False, description="Self-training also relabels the images the teacher rejected")
    image_cache_mb: int = Field(512, ge=0, description="Decoded images kept in memory (LRU); 0 re-reads each time")
    image_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options to read the images (default: environment)"
    )


class TrainOptions(BaseModel):
    """How a training run is carried out (none of it changes the student, so none of it names the run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._=-]*$",
        description="Checkpoints go to OUTPUT/checkpoints/<run_name>/; default: derived from every setting and "
        "the data, so a re-run with the same parameters resumes",
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default: CUDA when present")
    stop_after_round: int | None = Field(
        None, ge=0, description="Stop once this round is checkpointed (train the rest in a later run)"
    )
    retries: int = Field(0, ge=0, le=10, description="Retries of a failed training; each resumes from its checkpoint")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the output dataset (default: environment)"
    )


# --- the plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPlan:
    """Everything constant over a training run (small: passed between tasks)."""

    output: str
    storage_options: dict[str, Any]
    run: str
    checkpoint_url: str
    config_hash: str
    vocabulary: str  # Vocabulary.to_json()
    clip: dict[str, Any]
    student_config: dict[str, Any]
    train_config: dict[str, Any]
    filters: dict[str, Any]
    data: dict[str, Any]
    fingerprint: str
    device: str | None = None
    stop_after_round: int | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return Vocabulary.from_json(self.vocabulary).names

    @property
    def rounds(self) -> int:
        return int(self.train_config["rounds"])

    def identity(self) -> dict[str, Any]:
        """What names the run: the student, its training and its data (not the device or where it runs)."""
        return {
            "config_hash": self.config_hash,
            "vocabulary": self.vocabulary,
            "clip": self.clip,
            "student_config": self.student_config,
            "train_config": self.train_config,
            "filters": self.filters,
            "use_reviewed": self.data["use_reviewed"],
            "pool_rejected": self.data["pool_rejected"],
            "fingerprint": self.fingerprint,
        }


def teacher_config_hashes(store: LabelStore) -> list[str]:
    """Config hashes with labeled images from the teacher (``labeler == "maskclip"``), newest first."""
    images = store.images(statuses=["labeled"])
    images = images.filter(pc.equal(images["labeler"], "maskclip"))
    newest: dict[str, Any] = {}
    for h, t in zip(images["config_hash"].to_pylist(), images["created_at"].to_pylist(), strict=True):
        newest[h] = max(newest.get(h, t), t)
    return sorted(newest, key=lambda h: newest[h], reverse=True)


def training_vocabulary(record: Mapping[str, Any] | None, store: LabelStore) -> Vocabulary:
    """The teacher's vocabulary (with its background queries) from the labeling record; without one, the
    dataset's categories in id order, synonyms as extra queries."""
    if record is not None:
        config = (record.get("spec") or {}).get("config")
        if config:
            from maskclip_core.teacher.labeler import LabelerConfig

            return LabelerConfig(**config).vocabulary()
        if record.get("classes"):
            return Vocabulary(tuple(ClassSpec(c["name"], (c["name"], *c["synonyms"])) for c in record["classes"]))
    categories = store.categories()
    if not categories:
        raise ValueError(f"{store.url} holds no categories: nothing was labeled there")
    specs = []
    for c in categories:
        queries = tuple(dict.fromkeys([c["name"], *c["synonyms"]]))
        specs.append(ClassSpec(c["name"], queries))
    return Vocabulary(tuple(specs))


def clip_embed_dim(clip: ClipSpec) -> int:
    """The joint embedding size of the CLIP model, from its open_clip config (no weights loaded)."""
    import open_clip

    from maskclip_core.teacher.clip_loader import normalise_model_name

    config = open_clip.get_model_config(normalise_model_name(clip.model))
    if not config:
        raise ValueError(f"unknown CLIP model {clip.model!r}")
    return int(config["embed_dim"])


def plan_training(
    output: str,
    *,
    clip: ClipSpec | None = None,
    student: StudentSpec | None = None,
    schedule: ScheduleSpec | None = None,
    filters: FilterConfig | None = None,
    data: DataSpec | None = None,
    options: TrainOptions | None = None,
) -> TrainingPlan:
    """Resolve the run: labeling, classes, CLIP, filter, network, schedule, data fingerprint, run name.

    Writes (or checks) ``OUTPUT/checkpoints/<run>/run.json``: a run name given twice for different settings
    or data raises instead of resuming a checkpoint that belongs to something else.
    """
    student, schedule = student or StudentSpec(), schedule or ScheduleSpec()
    data, options = data or DataSpec(), options or TrainOptions()
    storage_options = dict(options.storage_options)
    store = LabelStore(output, storage_options)
    config_hash = data.config_hash
    if config_hash is None:
        hashes = teacher_config_hashes(store)
        if not hashes:
            raise ValueError(f"{output} holds no images labeled by the teacher (maskclip): label it first")
        if len(hashes) > 1:
            raise ValueError(
                f"{output} holds {len(hashes)} teacher labelings ({', '.join(hashes)}, newest first): "
                "choose one with config_hash"
            )
        config_hash = hashes[0]
    record = read_labeling_record(output, config_hash, storage_options)
    vocabulary = training_vocabulary(record, store)
    if clip is None:
        config = ((record or {}).get("spec") or {}).get("config")
        if not config:
            raise ValueError(
                f"no teacher CLIP recorded for labeling {config_hash} of {output} (labelings/{config_hash}.json "
                "missing or from a student): give the CLIP model (clip / --clip-model, --clip-pretrained)"
            )
        clip = ClipSpec.from_labeler_config(config)
    if filters is None:
        filters = FilterConfig(**record["filters"]) if record else FilterConfig()
    fingerprint = training_fingerprint(
        output,
        config_hash,
        vocabulary.names,
        storage_options=storage_options,
        use_reviewed=data.use_reviewed,
        pool_rejected=data.pool_rejected,
    )
    plan = TrainingPlan(
        output=output,
        storage_options=storage_options,
        run="",
        checkpoint_url="",
        config_hash=config_hash,
        vocabulary=vocabulary.to_json(),
        clip=clip.model_dump(mode="json"),
        student_config=student.config(clip_embed_dim(clip)).to_dict(),
        train_config=schedule.train_config().to_dict(),
        filters=filters.model_dump(mode="json"),
        data=data.model_dump(mode="json"),
        fingerprint=fingerprint,
        device=options.device,
        stop_after_round=options.stop_after_round,
    )
    identity = plan.identity()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    run = options.run_name or f"student-{digest[:12]}"
    checkpoint_url = join_url(output, "checkpoints", run)
    plan = TrainingPlan(**{**plan.__dict__, "run": run, "checkpoint_url": checkpoint_url})
    _claim_run(plan, identity)
    return plan


def _claim_run(plan: TrainingPlan, identity: Mapping[str, Any]) -> None:
    url = join_url(plan.checkpoint_url, RUN_MANIFEST)
    fs, path = resolve(url, plan.storage_options)
    fs.invalidate_cache(path.rsplit("/", 1)[0])
    if fs.exists(path):
        saved = json.loads(read_bytes(url, plan.storage_options))
        if saved.get("identity") != json.loads(json.dumps(identity)):
            differ = sorted(k for k in identity if saved.get("identity", {}).get(k) != identity[k])
            raise ValueError(
                f"run {plan.run!r} at {plan.checkpoint_url} was started with other settings or data "
                f"({', '.join(differ)} differ): choose another run name, or none to derive one"
            )
        return
    manifest = {"run": plan.run, "output": plan.output, "identity": identity}
    atomic_write_bytes(url, json.dumps(manifest, indent=2, sort_keys=True).encode(), plan.storage_options)


# --- text embeddings and the label filter ----------------------------------------------------------------


def text_embeddings(clip: ClipSpec, vocabulary: Vocabulary, device: str | None = None) -> tuple[Any, Any]:
    """([Q, D] CPU tensor, ``ClassVocabulary``): the teacher's text classifier for ``vocabulary``, built as
    the teacher builds it (same CLIP weights, prompt templates and per-query ensembles; same cache)."""
    from maskclip_core.student.classifier import ClassVocabulary
    from maskclip_core.teacher.clip_loader import load_clip
    from maskclip_core.teacher.text_classifier import default_text_cache

    bundle = load_clip(clip.model, clip.pretrained, device=device, seed=clip.seed)
    classifier = default_text_cache().get(bundle, vocabulary, templates_for(clip.templates))
    query_to_class = tuple(int(c) for c in classifier.query_to_class.cpu().tolist())
    return classifier.embeddings.detach().float().cpu(), ClassVocabulary(vocabulary.names, query_to_class)


def confidence_filter(filters: FilterConfig) -> Callable[[SegmentationResult], np.ndarray]:
    """The labeling flow's confidence filter as a ``label_filter``: a rejected image becomes all ignore."""

    def label_filter(result: SegmentationResult) -> np.ndarray:
        filtered = filter_labels(result, filters)
        if filtered.rejection is not None:
            return np.full(filtered.labels.shape, IGNORE_INDEX, dtype=np.uint8)
        return filtered.labels

    return label_filter


# --- evaluation --------------------------------------------------------------------------------------------


def _config_refs(store: LabelStore, config_hash: str) -> list[ImageRef]:
    rows = store.images(config_hash=config_hash, statuses=["labeled", "rejected"]).to_pylist()
    return [ImageRef.from_row(r) for r in rows if r["sha256"] and r["height"] is not None and r["width"] is not None]


def ground_truth_for(plan: TrainingPlan, spec: GroundTruthSpec) -> GroundTruth:
    """The ground truth of the plan's labeled and rejected images (the dataset's own file-name root)."""
    store = LabelStore(plan.output, plan.storage_options)
    vocabulary = Vocabulary.from_json(plan.vocabulary)
    return load_ground_truth(spec, _config_refs(store, plan.config_hash), vocabulary, default_root=source_root(store))


def evaluate_teacher(plan: TrainingPlan, spec: GroundTruthSpec, flow_run_id: str | None = None) -> dict[str, Any]:
    """Score the teacher's stored (filtered) pseudo-labels against the ground truth; writes and returns the
    metrics row. An ignored or rejected pixel on a scored ground-truth pixel counts as a miss."""
    from maskclip_core.evaluation.metrics import SegmentationMetrics
    from maskclip_core.training.data import category_index

    truth = ground_truth_for(plan, spec)
    store = LabelStore(plan.output, plan.storage_options)
    id_to_index, _ = category_index(store.categories(), truth.class_names)
    ids = [ref.image_id for ref in truth.refs]
    pseudo = {
        int(row["image_id"]): label_map
        for row, label_map in store.iter_label_maps(
            config_hash=plan.config_hash, image_ids=ids, category_to_index=id_to_index
        )
    }
    metrics = SegmentationMetrics(len(truth.class_names), truth.class_names)
    for i, ref in enumerate(truth.refs):
        target = truth.target(i)
        pred = pseudo.get(ref.image_id)
        metrics.update(np.full(target.shape, IGNORE_INDEX, np.uint8) if pred is None else pred, target)
    row = metrics_row(
        plan.run,
        "teacher",
        truth.summary(metrics),
        images=len(truth),
        config_hash=plan.config_hash,
        ground_truth=spec.url,
        flow_run_id=flow_run_id,
    )
    write_metrics(plan.output, [row], plan.storage_options)
    return row


# --- training ----------------------------------------------------------------------------------------------


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


class _Stop(Exception):
    """Raised from ``on_round_end`` to stop after ``stop_after_round``."""


def run_training(
    plan: TrainingPlan,
    ground_truth: GroundTruthSpec | None = None,
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
    from maskclip_core.student.train import RoundEnd, TrainConfig, fit_student

    vocabulary = Vocabulary.from_json(plan.vocabulary)
    config = TrainConfig.from_dict(plan.train_config)
    latest = ckpt.read_latest(plan.checkpoint_url, plan.storage_options)
    stop = plan.stop_after_round
    if latest is not None and (latest["round"] >= config.rounds or (stop is not None and latest["round"] >= stop)):
        logger.info("run %s: round %d is checkpointed already; nothing to train", plan.run, latest["round"])
        return _outcome(plan, latest, resumed_from=latest["round"], counts={})

    data = load_training_set(
        plan.output,
        plan.config_hash,
        vocabulary.names,
        storage_options=plan.storage_options,
        image_storage_options=plan.data["image_storage_options"],
        use_reviewed=plan.data["use_reviewed"],
        pool_rejected=plan.data["pool_rejected"],
        cache_bytes=int(plan.data["image_cache_mb"]) * 2**20,
    )
    if data.fingerprint != plan.fingerprint:
        raise ValueError(f"the data at {plan.output} changed since run {plan.run} was planned: plan it again")
    logger.info("run %s: %s", plan.run, data.counts)
    truth = ground_truth_for(plan, ground_truth) if ground_truth is not None else None
    eval_pairs = truth.pairs(LazyImages(truth.refs, data.reader)) if truth is not None else None
    embeddings, class_vocabulary = text_embeddings(ClipSpec(**plan.clip), vocabulary, plan.device)

    def student_row(record: Mapping[str, Any], checkpoint: str | None) -> dict[str, Any]:
        assert truth is not None and ground_truth is not None
        return metrics_row(
            plan.run,
            "student",
            _restricted(record, truth),
            round=int(record["round"]),
            iteration=int(record["iteration"]),
            images=len(truth),
            config_hash=plan.config_hash,
            checkpoint=checkpoint,
            ground_truth=ground_truth.url,
            flow_run_id=flow_run_id,
        )

    def on_round_end(event: RoundEnd) -> None:
        if event.metrics is not None and truth is not None:
            write_metrics(plan.output, [student_row(event.metrics, event.checkpoint_url)], plan.storage_options)
        if on_round is not None:
            on_round(
                {
                    "round": event.round,
                    "iteration": event.iteration,
                    "checkpoint": event.checkpoint_url,
                    "metrics": None if event.metrics is None or truth is None else _restricted(event.metrics, truth),
                }
            )
        if stop is not None and event.round >= stop and event.round < config.rounds:
            raise _Stop

    try:
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
            on_round_end=on_round_end,
            clean=data.clean if plan.data["use_reviewed"] else None,
            logger=logger,
        )
    except _Stop:
        resumed_from = None if latest is None else int(latest["round"])
        latest = ckpt.read_latest(plan.checkpoint_url, plan.storage_options)
        return _outcome(plan, latest, resumed_from=resumed_from, counts=data.counts, stopped=True)
    if truth is not None and result.resumed_from_round is not None:
        # on_round_end wrote this run's rounds; those of the earlier, interrupted run are rewritten as they were
        for record in result.metrics:
            if int(record["round"]) <= result.resumed_from_round:
                weights = ckpt.weights_url(plan.checkpoint_url, int(record["round"]))
                write_metrics(plan.output, [student_row(record, weights)], plan.storage_options)
    latest = ckpt.read_latest(plan.checkpoint_url, plan.storage_options)
    return _outcome(plan, latest, resumed_from=result.resumed_from_round, counts=data.counts)


def _restricted(record: Mapping[str, Any], truth: GroundTruth) -> dict[str, Any]:
    from maskclip_core.evaluation.ground_truth import restrict_summary

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
        metrics=read_metrics(plan.output, plan.storage_options, run=plan.run),
        counts=counts,
    )
