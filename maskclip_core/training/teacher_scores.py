"""The teacher's stored pseudo-labels scored against a ground truth (the baseline of a training run)."""

from __future__ import annotations

from typing import Any

import numpy as np

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.metrics_table import metrics_row, write_metrics
from maskclip_core.dataset.reader import source_root
from maskclip_core.evaluation.ground_truth import GroundTruth, GroundTruthParameters, load_ground_truth
from maskclip_core.segmentation_metrics import SegmentationMetrics
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.training.data import ImageRef, category_index
from maskclip_core.training.plan import TrainingPlan
from maskclip_core.types import IGNORE_INDEX


def _config_refs(dataset: LabelDataset, config_hash: str) -> list[ImageRef]:
    rows = dataset.images(config_hash=config_hash, statuses=["labeled", "rejected"]).to_pylist()
    return [ImageRef.from_row(r) for r in rows if r["sha256"] and r["height"] is not None and r["width"] is not None]


def ground_truth_for(plan: TrainingPlan, spec: GroundTruthParameters) -> GroundTruth:
    """The ground truth of the plan's labeled and rejected images (the dataset's own file-name root)."""
    dataset = LabelDataset(plan.dataset_url, plan.storage_options)
    vocabulary = Vocabulary.from_json(plan.vocabulary)
    refs = _config_refs(dataset, plan.config_hash)
    return load_ground_truth(spec, refs, vocabulary, default_root=source_root(dataset))


def evaluate_teacher(plan: TrainingPlan, spec: GroundTruthParameters, flow_run_id: str | None = None) -> dict[str, Any]:
    """Score the teacher's stored (filtered) pseudo-labels against the ground truth; writes and returns the
    metrics row. An ignored or rejected pixel on a scored ground-truth pixel counts as a miss."""
    truth = ground_truth_for(plan, spec)
    dataset = LabelDataset(plan.dataset_url, plan.storage_options)
    id_to_index, _ = category_index(dataset.categories(), truth.class_names)
    ids = [ref.image_id for ref in truth.refs]
    pseudo = {
        int(row["image_id"]): label_map
        for row, label_map in dataset.iter_label_maps(
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
    write_metrics(plan.dataset_url, [row], plan.storage_options)
    return row
