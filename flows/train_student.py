"""The ``train-student`` flow: a MaskCLIP+ student trained on the teacher's pseudo-labels of a labeled dataset.

Orchestration only; the work is in ``maskclip_core.training`` and its Prefect wrappers in ``tasks.training``.
One run:

1. plans the run (``plan-student-training``): the teacher labeling to learn from, its classes and CLIP model
   (from ``OUTPUT/labelings/<config hash>.json``, or given), the filter, network and schedule, a fingerprint of
   the data, hence the run name and its checkpoint folder ``OUTPUT/checkpoints/<run>/``;
2. with a ground truth, scores the teacher's pseudo-labels (``evaluate-teacher``);
3. trains (``train-student``): the pseudo-label phase, then the self-training rounds, each relabelling the pool
   with the student and filtering it with the labeling flow's confidence filter; a checkpoint and (with a
   ground truth) a metrics row after every round. A run that finds checkpoints resumes after the newest;
4. ends with a table artifact of the metrics (``train-student-metrics``) and a markdown report.

Re-running the flow with the same parameters on the same data continues the same run; ``stop_after_round``
ends a run early on purpose (the next run continues it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow

from maskclip_core.dataset.metrics_table import table_rows
from maskclip_core.evaluation.ground_truth import GroundTruthParameters
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.training.parameters import (
    ClipParameters,
    DataParameters,
    ScheduleParameters,
    StudentParameters,
    TrainingRunParameters,
)
from tasks.training import (
    current_flow_run_id,
    evaluate_teacher_task,
    plan_training_task,
    publish_metrics,
    train_student_task,
)


@flow(
    name="train-student",
    description="Train a MaskCLIP+ student on the pseudo-labels of a labeled dataset (resumable, self-training).",
    validate_parameters=True,
)
def train_student(
    dataset: str,
    ground_truth: GroundTruthParameters | None = None,
    clip: ClipParameters | None = None,
    student: StudentParameters = StudentParameters(),  # noqa: B008 - pydantic defaults show in the deployment form
    schedule: ScheduleParameters = ScheduleParameters(),  # noqa: B008
    filters: FilterConfig | None = None,
    data: DataParameters = DataParameters(),  # noqa: B008
    options: TrainingRunParameters = TrainingRunParameters(),  # noqa: B008
) -> dict[str, Any]:
    """Train (or continue) a student on the dataset at ``dataset``; returns the run's summary.

    Args:
        dataset: fsspec URL of a labeling run's Parquet dataset; checkpoints and metrics are written there.
        ground_truth: human masks (COCO JSON or a folder of PNG masks) to score the teacher and each round.
        clip: the CLIP model of the text embeddings; default: the teacher's, from the labeling record.
        student: the network (backbone, stride, head, backbone weights).
        schedule: iterations, self-training rounds, optimisation, augmentation, inference sizes.
        filters: the confidence filter of the self-training rounds; default: the labeling's own.
        data: which labeling, reviewed labels, the pool, the image cache.
        options: run name, device, stopping early, retries, dataset storage options.
    """
    run_id = current_flow_run_id()
    plan = plan_training_task(dataset, clip, student, schedule, filters, data, options)
    if ground_truth is not None:
        evaluate_teacher_task(plan, ground_truth, run_id)
    train = train_student_task.with_options(retries=options.retries, retry_delay_seconds=5)
    outcome = train(plan, ground_truth, run_id)
    publish_metrics(plan, outcome)
    return {
        "run": plan.run,
        "dataset": plan.dataset_url,
        "config_hash": plan.config_hash,
        "classes": list(plan.class_names),
        "clip": plan.clip,
        "checkpoint_dir": outcome.checkpoint_dir,
        "checkpoint": outcome.checkpoint,
        "round": outcome.round,
        "rounds": outcome.rounds,
        "complete": outcome.complete,
        "stopped": outcome.stopped,
        "resumed_from_round": outcome.resumed_from_round,
        "data": outcome.counts,
        "metrics": [_json_row(r) for r in outcome.metrics],
        "metrics_table": table_rows(outcome.metrics, plan.class_names),
    }


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}


if __name__ == "__main__":  # e.g. python -m flows.train_student s3://bucket/labels/
    import json
    import sys

    print(json.dumps(train_student(sys.argv[1]), indent=2))
