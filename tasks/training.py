"""Prefect tasks around ``maskclip_core.training``: plan, score the teacher, train; artifacts of the metrics.

Caching policy as in ``tasks.labeling``: nothing is cached (``NO_CACHE``) or persisted. The tasks exchange a
small :class:`TrainingPlan` and :class:`TrainingOutcome` (URLs, names, metrics rows), never a model or a tensor:
the training task builds the network, reads the images itself and leaves the weights in checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

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
from maskclip_core.training.plan import TrainingPlan, plan_training
from maskclip_core.training.run import TrainingOutcome, run_training
from maskclip_core.training.teacher_scores import evaluate_teacher
from tasks.labeling_artifacts import ProgressArtifact

PROGRESS_ARTIFACT_KEY = "train-student-progress"
METRICS_ARTIFACT_KEY = "train-student-metrics"
REPORT_ARTIFACT_KEY = "train-student-report"


def current_flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


@task(name="plan-student-training", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=2)
def plan_training_task(
    dataset: str,
    clip: ClipParameters | None,
    student: StudentParameters,
    schedule: ScheduleParameters,
    filters: FilterConfig | None,
    data: DataParameters,
    options: TrainingRunParameters,
) -> TrainingPlan:
    """Which labeling, classes, CLIP, network and schedule; the run's name and checkpoint folder."""
    plan = plan_training(
        dataset, clip=clip, student=student, schedule=schedule, filters=filters, data=data, options=options
    )
    get_run_logger().info(
        "run %s: labeling %s, %d classes, CLIP %s/%s, checkpoints at %s",
        plan.run,
        plan.config_hash,
        len(plan.class_names),
        plan.clip["model"],
        plan.clip["pretrained"],
        plan.checkpoint_url,
    )
    return plan


@task(name="evaluate-teacher", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=2)
def evaluate_teacher_task(
    plan: TrainingPlan, ground_truth: GroundTruthParameters, flow_run_id: str | None = None
) -> dict[str, Any]:
    """The teacher's pseudo-labels against the ground truth: a metrics row (written to OUTPUT/metrics/)."""
    row = evaluate_teacher(plan, ground_truth, flow_run_id=flow_run_id)
    get_run_logger().info("teacher: mIoU %s on %s images", _pct(row["miou"]), row["images"])
    return row


@task(name="train-student", cache_policy=NO_CACHE, persist_result=False)
def train_student_task(
    plan: TrainingPlan, ground_truth: GroundTruthParameters | None, flow_run_id: str | None = None
) -> TrainingOutcome:
    """Train or resume the student (a retry of this task resumes from its newest checkpoint)."""
    logger = get_run_logger()
    progress = ProgressArtifact(PROGRESS_ARTIFACT_KEY)
    total = plan.rounds + 1
    progress.update(0.0, f"run {plan.run}: training round 0 of {plan.rounds} (pseudo-labels)")

    def on_round(event: dict[str, Any]) -> None:
        metrics = event["metrics"]
        score = "" if metrics is None else f", mIoU {_pct(metrics['miou'])}"
        logger.info(
            "round %d done at iteration %d%s: %s", event["round"], event["iteration"], score, event["checkpoint"]
        )
        progress.update(
            100.0 * (event["round"] + 1) / total,
            f"run {plan.run}: round {event['round']} of {plan.rounds} checkpointed (iteration {event['iteration']})"
            + score,
        )

    # The run logger: the loss and the round results show in the run's logs in the UI and in the worker's output.
    outcome = run_training(plan, ground_truth, on_round=on_round, flow_run_id=flow_run_id, logger=logger)
    if outcome.round is not None:
        progress.update(
            100.0 * (outcome.round + 1) / total,
            f"run {plan.run}: round {outcome.round} of {plan.rounds} checkpointed"
            + (" (stopped)" if outcome.stopped else ""),
        )
    return outcome


def publish_metrics(plan: TrainingPlan, outcome: TrainingOutcome) -> None:
    """A table artifact of the run's metrics (one row per model and round) and a markdown report of the run."""
    logger = get_run_logger()
    rows = outcome.metrics
    status = "no checkpoint" if outcome.round is None else f"round {outcome.round} of {plan.rounds}"
    if outcome.stopped:
        status += " (stopped; run again to continue)"
    lines = [
        f"# Student training run `{plan.run}`: {status}",
        "",
        f"- dataset: `{plan.dataset_url}`, labeling `{plan.config_hash}`",
        f"- classes: {', '.join(plan.class_names)}",
        f"- CLIP text embeddings: `{plan.clip['model']}` / `{plan.clip['pretrained']}` "
        f"({plan.clip['templates']} templates)",
        f"- student: {plan.student_config['backbone']} (stride {plan.student_config['output_stride']}, "
        f"{plan.student_config['head']}), {plan.train_config['iterations']} iterations, "
        f"{plan.rounds} self-training rounds",
        f"- checkpoints: `{plan.checkpoint_url}`",
    ]
    if outcome.checkpoint:
        lines.append(f"- newest weights: `{outcome.checkpoint}`")
    if rows:
        lines += ["", "| model | round | iteration | mIoU | pixel accuracy |", "| --- | ---: | ---: | ---: | ---: |"]
        for r in table_rows(rows):
            it = "" if r["iteration"] is None else r["iteration"]
            rnd = "" if r["round"] is None else r["round"]
            lines.append(f"| {r['model']} | {rnd} | {it} | {_pct(r['miou'])} | {_pct(r['pixel_accuracy'])} |")
    try:
        if rows:
            create_table_artifact(
                table=table_rows(rows, plan.class_names),
                key=METRICS_ARTIFACT_KEY,
                description=f"mIoU / per-class IoU of run {plan.run} (teacher pseudo-labels, student per round)",
            )
        create_markdown_artifact("\n".join(lines) + "\n", key=REPORT_ARTIFACT_KEY, description="Student training run")
    except Exception as e:  # noqa: BLE001 - the checkpoints and metrics are written already
        logger.warning("training artifacts could not be created: %s", e)


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"
