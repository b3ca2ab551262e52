"""Planning a training run: which teacher labeling, classes, CLIP, filter, network, schedule and data.

The run's name derives from all of that (or is given), and its checkpoint folder
``DATASET/checkpoints/<run>/`` holds ``run.json`` with that identity: the same parameters on the same data give
the same run, which resumes from its newest checkpoint; a name given twice for different settings raises.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.labelings import read_labeling_record
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.storage.fs import atomic_write_bytes, join_url, read_bytes, resolve
from maskclip_core.teacher.vocabulary import Vocabulary, VocabularyEntry
from maskclip_core.training.data import training_fingerprint
from maskclip_core.training.embeddings import clip_embed_dim
from maskclip_core.training.parameters import (
    ClipParameters,
    DataParameters,
    ScheduleParameters,
    StudentParameters,
    TrainingRunParameters,
)

RUN_MANIFEST = "run.json"


@dataclass(frozen=True)
class TrainingPlan:
    """Everything constant over a training run (small: passed between tasks)."""

    dataset_url: str
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


def teacher_config_hashes(dataset: LabelDataset) -> list[str]:
    """Config hashes with labeled images from the teacher (``labeler == "maskclip"``), newest first."""
    images = dataset.images(statuses=["labeled"])
    images = images.filter(pc.equal(images["labeler"], "maskclip"))
    newest: dict[str, Any] = {}
    for h, t in zip(images["config_hash"].to_pylist(), images["created_at"].to_pylist(), strict=True):
        newest[h] = max(newest.get(h, t), t)
    return sorted(newest, key=lambda h: newest[h], reverse=True)


def training_vocabulary(record: Mapping[str, Any] | None, dataset: LabelDataset) -> Vocabulary:
    """The teacher's vocabulary (with its background queries) from the labeling record; without one, the
    dataset's categories in id order, synonyms as extra queries."""
    if record is not None:
        config = (record.get("spec") or {}).get("config")
        if config:
            from maskclip_core.teacher.labeler import LabelerConfig

            return LabelerConfig(**config).vocabulary()
        if record.get("classes"):
            return Vocabulary(tuple(VocabularyEntry(c["name"], (c["name"], *c["synonyms"])) for c in record["classes"]))
    categories = dataset.categories()
    if not categories:
        raise ValueError(f"{dataset.url} holds no categories: nothing was labeled there")
    specs = []
    for c in categories:
        queries = tuple(dict.fromkeys([c["name"], *c["synonyms"]]))
        specs.append(VocabularyEntry(c["name"], queries))
    return Vocabulary(tuple(specs))


def plan_training(
    dataset_url: str,
    *,
    clip: ClipParameters | None = None,
    student: StudentParameters | None = None,
    schedule: ScheduleParameters | None = None,
    filters: FilterConfig | None = None,
    data: DataParameters | None = None,
    options: TrainingRunParameters | None = None,
) -> TrainingPlan:
    """Resolve the run: labeling, classes, CLIP, filter, network, schedule, data fingerprint, run name.

    Writes (or checks) ``OUTPUT/checkpoints/<run>/run.json``: a run name given twice for different settings
    or data raises instead of resuming a checkpoint that belongs to something else.
    """
    student, schedule = student or StudentParameters(), schedule or ScheduleParameters()
    data, options = data or DataParameters(), options or TrainingRunParameters()
    storage_options = dict(options.storage_options)
    dataset = LabelDataset(dataset_url, storage_options)
    config_hash = data.config_hash or _only_teacher_labeling(dataset)
    record = read_labeling_record(dataset_url, config_hash, storage_options)
    vocabulary = training_vocabulary(record, dataset)
    clip = clip or _teacher_clip(record, config_hash, dataset_url)
    if filters is None:
        filters = FilterConfig(**record["filters"]) if record else FilterConfig()
    fingerprint = training_fingerprint(
        dataset_url,
        config_hash,
        vocabulary.names,
        storage_options=storage_options,
        use_reviewed=data.use_reviewed,
        pool_rejected=data.pool_rejected,
    )
    plan = TrainingPlan(
        dataset_url=dataset_url,
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
    checkpoint_url = join_url(dataset_url, "checkpoints", run)
    plan = TrainingPlan(**{**plan.__dict__, "run": run, "checkpoint_url": checkpoint_url})
    _claim_run(plan, identity)
    return plan


def _only_teacher_labeling(dataset: LabelDataset) -> str:
    hashes = teacher_config_hashes(dataset)
    if not hashes:
        raise ValueError(f"{dataset.url} holds no images labeled by the teacher (maskclip): label it first")
    if len(hashes) > 1:
        raise ValueError(
            f"{dataset.url} holds {len(hashes)} teacher labelings ({', '.join(hashes)}, newest first): "
            "choose one with config_hash"
        )
    return hashes[0]


def _teacher_clip(record: Mapping[str, Any] | None, config_hash: str, dataset_url: str) -> ClipParameters:
    """The teacher's CLIP from the labeling record."""
    config = ((record or {}).get("spec") or {}).get("config")
    if not config:
        raise ValueError(
            f"no teacher CLIP recorded for labeling {config_hash} of {dataset_url} (labelings/{config_hash}.json "
            "missing or from a student): give the CLIP model (clip / --clip-model, --clip-pretrained)"
        )
    return ClipParameters.from_labeler_config(config)


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
    manifest = {"run": plan.run, "dataset": plan.dataset_url, "identity": identity}
    atomic_write_bytes(url, json.dumps(manifest, indent=2, sort_keys=True).encode(), plan.storage_options)
