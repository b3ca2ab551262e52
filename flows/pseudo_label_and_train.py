"""The ``pseudo-label-and-train`` flow: MaskCLIP+ end to end, as subflows of the project's flows.

1. **label** the images under ``source`` with the MaskCLIP teacher (the ``label-dataset`` flow; incremental);
2. **filter**: the labeling flow's confidence filter (``filters``) decides what the student learns from;
3. **train** a MaskCLIP+ student on those labels (the ``train-student`` flow: pseudo-label phase, then
   self-training rounds filtered the same way; checkpoints under ``DATASET/checkpoints/<run>/``);
4. **relabel** the images with the trained student (``label-dataset`` with ``labeler="student"``), into the
   same dataset or a separate one (``relabel.dataset``); its annotations carry ``labeler=student`` and the round;
5. **export** the student's labels as COCO (the ``export-annotations`` flow).

Each step is idempotent, so a failed or stopped run is simply started again: labeled images are skipped,
training resumes from its newest checkpoint, relabeling skips what the same checkpoint labeled already.
Each step is a sub-run with its own artifacts; the parent's artifact ``pseudo-label-and-train-steps`` links
them (``tasks.sub_runs``), also when a step failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.export_annotations import export_annotations
from flows.label_dataset import LabelingRunParameters, label_dataset
from flows.train_student import train_student
from maskclip_core.evaluation.ground_truth import GroundTruthParameters
from maskclip_core.interchange.export import ExportParameters
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.registry import LabelerParameters, resolve_labeler
from maskclip_core.storage.fs import join_url
from maskclip_core.training.parameters import (
    ClipParameters,
    DataParameters,
    ScheduleParameters,
    StudentParameters,
    TrainingRunParameters,
)
from tasks.sub_runs import linked_sub_runs

STEPS_ARTIFACT_KEY = "pseudo-label-and-train-steps"


class TrainingStepParameters(BaseModel):
    """The train-student subflow's parameters (the data's labeling and storage come from the pipeline)."""

    model_config = ConfigDict(extra="forbid")

    clip: ClipParameters | None = Field(None, description="CLIP of the text embeddings; default: the teacher's")
    student: StudentParameters = Field(default_factory=StudentParameters)
    schedule: ScheduleParameters = Field(default_factory=ScheduleParameters)
    data: DataParameters = Field(default_factory=DataParameters)
    ground_truth: GroundTruthParameters | None = Field(None, description="Human masks to score the teacher and student")
    options: TrainingRunParameters = Field(default_factory=TrainingRunParameters)


class RelabelStepParameters(BaseModel):
    """Labeling the images again with the trained student."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    dataset: str | None = Field(None, description="Parquet dataset URL for the student's labels; default: the same")
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default: CUDA when present")
    force: bool = Field(False, description="Relabel images the same checkpoint labeled already")


class ExportStepParameters(BaseModel):
    """COCO export of the student's labels."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    destination: str | None = Field(None, description="COCO JSON URL; default: <dataset>/exports/<run>-coco.json")
    file_name_root: str | None = Field(None, description="Image file names relative to this (default: common folder)")


@flow(
    name="pseudo-label-and-train",
    description="Teacher pseudo-labels -> confidence filter -> MaskCLIP+ student -> student labels -> COCO.",
    validate_parameters=True,
)
def pseudo_label_and_train(
    source: str,
    dataset: str,
    classes: str,
    labeler: LabelerParameters | None = None,
    filters: FilterConfig = FilterConfig(),  # noqa: B008 - pydantic defaults show in the deployment form
    options: LabelingRunParameters = LabelingRunParameters(),  # noqa: B008
    training: TrainingStepParameters = TrainingStepParameters(),  # noqa: B008
    relabel: RelabelStepParameters = RelabelStepParameters(),  # noqa: B008
    export: ExportStepParameters = ExportStepParameters(),  # noqa: B008
) -> dict[str, Any]:
    """Label ``source`` into ``dataset`` with the teacher, train a student on it, relabel, export COCO.

    Args:
        source: fsspec URL of the images.
        dataset: fsspec URL of the teacher's Parquet dataset (checkpoints and metrics go there too).
        classes: the classes to label, comma separated, synonyms after ';' ("car, road, grass; lawn"); they
            replace a Python caller's ``labeler.config.classes``.
        labeler: the teacher (``labeler="maskclip"``; its settings, default ViT-B-16 with OpenAI weights).
        filters: the confidence filter of the teacher's labels, the self-training rounds and the relabeling.
        options: how the labeling runs are carried out (batches, parallelism, retries, storage options).
        training: the student, its schedule, data options, ground truth, run options.
        relabel: whether and where the student labels the images.
        export: whether and where the student's labels are exported as COCO.
    """
    logger = get_run_logger()
    labeler = resolve_labeler(classes, labeler)
    if labeler.labeler != "maskclip":
        raise ValueError("the pipeline's labeler is the teacher: labeler='maskclip' with its config")
    # Every step is a sub-run with its own artifacts; the parent's artifact links them all (also on failure).
    with linked_sub_runs(STEPS_ARTIFACT_KEY, "pseudo-label-and-train: steps") as steps:
        teacher = steps.run(
            "teacher labels", label_dataset, source, dataset, labeler=labeler, filters=filters, options=options
        )
        logger.info(
            "teacher: %d labeled, %d rejected (config %s)",
            teacher["labeled"],
            teacher["rejected"],
            teacher["config_hash"],
        )

        data, train_options, clip = _training_inputs(training, options, labeler, teacher["config_hash"])
        trained = steps.run(
            "student training",
            train_student,
            dataset,
            ground_truth=training.ground_truth,
            clip=clip,
            student=training.student,
            schedule=training.schedule,
            filters=filters,
            data=data,
            options=train_options,
        )
        result: dict[str, Any] = {"teacher": teacher, "training": trained, "relabel": None, "export": None}
        if not trained["complete"]:
            logger.warning(
                "training run %s stopped after round %s: run the pipeline again to finish",
                trained["run"],
                trained["round"],
            )
            return result
        if not relabel.enabled:
            return result

        relabel_dataset = relabel.dataset or dataset
        student_spec = LabelerParameters(
            labeler="student",
            checkpoint=trained["checkpoint"],
            checkpoint_storage_options=train_options.storage_options,
            device=relabel.device,
        )
        relabeled = steps.run(
            "student labels",
            label_dataset,
            source,
            relabel_dataset,
            labeler=student_spec,
            filters=filters,
            options=options,
            force=relabel.force,
        )
        result["relabel"] = relabeled
        if export.enabled:
            destination = export.destination or join_url(relabel_dataset, "exports", f"{trained['run']}-coco.json")
            params = ExportParameters(
                format="coco",
                dataset=relabel_dataset,
                destination=destination,
                config_hash=relabeled["config_hash"],
                file_name_root=export.file_name_root,
            )
            result["export"] = steps.run(
                "COCO export", export_annotations, params, options.dataset_storage_options or None
            )
        return result


def _training_inputs(
    training: TrainingStepParameters,
    options: LabelingRunParameters,
    labeler: LabelerParameters,
    teacher_config_hash: str,
) -> tuple[DataParameters, TrainingRunParameters, ClipParameters]:
    """The student's data, run options and CLIP: the teacher's labels, storage and model unless set."""
    data = training.data.model_copy(update={"config_hash": training.data.config_hash or teacher_config_hash})
    if not data.image_storage_options and options.source_storage_options:
        data = data.model_copy(update={"image_storage_options": options.source_storage_options})
    train_options = training.options
    if not train_options.storage_options and options.dataset_storage_options:
        train_options = train_options.model_copy(update={"storage_options": options.dataset_storage_options})
    clip = training.clip or ClipParameters.from_labeler_config(labeler.config)  # type: ignore[arg-type]
    return data, train_options, clip


if __name__ == "__main__":  # e.g. python -m flows.pseudo_label_and_train '{"source": ..., "dataset": ..., ...}'
    import json
    import sys

    print(json.dumps(pseudo_label_and_train(**json.loads(sys.argv[1])), indent=2, default=str))
