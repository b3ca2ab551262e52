"""Which labeler produces the labels: the registry of labeler kinds and the per-process loader.

In the style of segment-anything's ``sam_model_registry``: :data:`LABELER_REGISTRY` maps each kind to its
loader, and everything that offers a choice of kind (the ``LabelerParameters.labeler`` field, CLI choices, docs)
derives from it through :data:`LABELER_KINDS`. The kinds are the values the dataset's ``labeler`` columns may
hold (``dataset.schema.LABELERS`` / ``LabelerKind``, a layer below): the registry must map exactly those.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

from maskclip_core.dataset.schema import LABELERS, LabelerKind
from maskclip_core.device import resolve_device
from maskclip_core.process_cache import ProcessCache
from maskclip_core.teacher.fast_paths import resolve_precision
from maskclip_core.teacher.labeler import LabelerConfig, cached_labeler
from maskclip_core.types import Labeler


class StudentUnavailableError(RuntimeError):
    """``labeler="student"`` was asked for but ``maskclip_core.student.StudentLabeler`` cannot be imported."""


def _load_teacher(spec: LabelerParameters, device: str | None) -> Labeler:
    if not isinstance(spec.config, LabelerConfig):
        raise ValueError("labeler='maskclip' needs classes: pass `classes` (e.g. 'car, road, tree stump')")
    return cached_labeler(spec.config, device=device)


_STUDENTS: ProcessCache[Labeler] = ProcessCache()  # one load per checkpoint even when batches ask at once


def _load_student(spec: LabelerParameters, device: str | None) -> Labeler:
    key = json.dumps([spec.checkpoint, spec.checkpoint_storage_options, device], sort_keys=True, default=str)
    return _STUDENTS.get(
        key,
        lambda: _student_class().from_checkpoint(
            spec.checkpoint, device=device, storage_options=spec.checkpoint_storage_options or None
        ),
    )


# Kind -> loader(spec, device): the one list of labeler kinds; every choice of kind derives from it.
LABELER_REGISTRY: dict[str, Callable[[LabelerParameters, str | None], Labeler]] = {
    "maskclip": _load_teacher,
    "student": _load_student,
}
LABELER_KINDS: tuple[str, ...] = tuple(LABELER_REGISTRY)
if set(LABELER_KINDS) != set(LABELERS):  # the dataset's labeler columns hold these values
    raise ImportError(f"labeler kinds {LABELER_KINDS} differ from the dataset's {LABELERS}")


# The teacher's settings as a deployment's form and JSON parameters give them: every LabelerConfig field but
# `classes`, which the flows' own `classes` parameter supplies (one Classes field, not two). Built from
# LabelerConfig's fields so the two never drift; `with_classes` turns it into a LabelerConfig.
TeacherSettings = create_model(
    "TeacherSettings",
    __config__=ConfigDict(frozen=True, extra="forbid"),
    __doc__="The MaskCLIP teacher's model, weights and inference settings (the classes are the flow's `classes`).",
    **{name: (f.annotation, f) for name, f in LabelerConfig.model_fields.items() if name != "classes"},
)


class LabelerParameters(BaseModel):
    """Which labeler produces the labels: the MaskCLIP teacher, or a MaskCLIP+ student checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labeler: LabelerKind = Field(
        "maskclip", description="'maskclip' (the teacher, configured by `config`) or 'student' (`checkpoint`)"
    )
    # Python callers may pass a complete LabelerConfig (classes included); the form offers TeacherSettings only.
    config: TeacherSettings | SkipJsonSchema[LabelerConfig] | None = Field(  # type: ignore[valid-type]
        None,
        description="The MaskCLIP teacher's model, weights and inference settings (labeler='maskclip'); "
        "default: ViT-B-16 with OpenAI weights. The classes are the flow's `classes`",
    )
    checkpoint: str | None = Field(
        None, description="Student weights file or checkpoint directory URL (labeler='student'; newest round)"
    )
    checkpoint_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options to read the student checkpoint (default: environment)"
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default: CUDA when present")

    @model_validator(mode="after")
    def _complete(self) -> LabelerParameters:
        # labeler='maskclip' without `config` is completed by `with_classes` (the flows' `classes` parameter).
        if self.labeler == "student" and not self.checkpoint:
            raise ValueError("labeler='student' needs `checkpoint` (a weights file or checkpoint directory URL)")
        return self

    @classmethod
    def maskclip(cls, config: LabelerConfig, device: str | None = None) -> LabelerParameters:
        return cls(labeler="maskclip", config=config, device=device)

    @classmethod
    def student(cls, checkpoint: str, device: str | None = None, **storage_options: Any) -> LabelerParameters:
        return cls(labeler="student", checkpoint=checkpoint, checkpoint_storage_options=storage_options, device=device)

    def precision_is_default(self) -> bool:
        """A teacher whose precision was left to the default (``"auto"``: this machine's fast path)."""
        return self.labeler == "maskclip" and self.config is not None and self.config.inference.precision == "auto"

    def with_device_precision(self) -> LabelerParameters:
        """A default precision made the fast path of the device the batches run on (``device``, else this
        process's default), so every batch computes what the run's config hash names, whichever worker or device
        resolves it; any other spec as it is."""
        if not self.precision_is_default():
            return self
        return self.with_precision(resolve_precision("auto", resolve_device(self.device)))

    def with_precision(self, precision: str) -> LabelerParameters:
        """This spec with the teacher's precision set (a dataset keeps the precision its labelings record)."""
        if self.config is None:
            raise ValueError("only a teacher's precision can be set")
        inference = self.config.inference.model_copy(update={"precision": precision})
        return self.model_copy(update={"config": self.config.model_copy(update={"inference": inference})})

    def with_classes(self, classes: str | None) -> LabelerParameters:
        """This spec with the flows' top-level ``classes`` (the Run form's third field) applied.

        ``classes`` replaces ``config.classes`` of a teacher (the default ``LabelerConfig`` when ``config`` is
        unset); a teacher needs classes from one of the two; a student's classes come from its checkpoint.
        """
        if self.labeler == "student":
            if classes:
                raise ValueError("`classes` is for the MaskCLIP teacher; a student's classes come from its checkpoint")
            return self
        if classes is not None and not classes.strip():
            raise ValueError("`classes` is empty: name the classes, comma separated (synonyms after ';')")
        if not isinstance(self.config, LabelerConfig):  # no settings, or settings without classes
            if not classes:
                raise ValueError("name the classes: `classes` (e.g. 'car, road, tree stump')")
            settings = self.config.model_dump() if self.config is not None else {}
            return self.model_copy(update={"config": LabelerConfig(**settings, classes=classes)})
        if classes and classes != self.config.classes:
            return self.model_copy(update={"config": self.config.model_copy(update={"classes": classes})})
        return self


def resolve_labeler(classes: str | None, labeler: LabelerParameters | None) -> LabelerParameters:
    """The flows' ``classes`` and optional ``labeler`` parameters as one complete :class:`LabelerParameters`."""
    return (labeler or LabelerParameters()).with_classes(classes)


def load_labeler(spec: LabelerParameters, *, device: str | None = None) -> Labeler:
    """The labeler of ``spec``, loaded once per process and configuration (later calls reuse it).

    ``device`` overrides ``spec.device`` (a flow that only needs the labeler's config loads it on the CPU).
    """
    return LABELER_REGISTRY[spec.labeler](spec, device if device is not None else spec.device)


def _student_class() -> Any:
    """``maskclip_core.student.StudentLabeler``, imported only when a student is asked for."""
    try:
        from maskclip_core.student import StudentLabeler  # optional and heavy: imported only when asked for
    except ImportError as e:
        raise StudentUnavailableError(
            "labeler='student' needs maskclip_core.student.StudentLabeler, which cannot be imported here "
            f"({type(e).__name__}: {e}); use labeler='maskclip' or install a version with the student"
        ) from e
    return StudentLabeler


def labeler_round(labeler: Labeler, kind: LabelerKind) -> int:
    """The ``round`` recorded on rows (their ``labeler`` is ``kind``): 0 for the teacher, the round of its
    checkpoint (``labeler.round``, else ``labeler.config()["round"]``) for a student."""
    if kind == "maskclip":
        return 0
    value = getattr(labeler, "round", None)
    if value is None:
        value = labeler.config().get("round")
    return int(value or 0)


def labeler_categories(labeler: Labeler) -> list[tuple[str, list[str]]]:
    """(name, synonyms) per class index, for ``LabelDataset.ensure_categories``."""
    vocabulary = getattr(labeler, "vocabulary", None)
    if vocabulary is not None and hasattr(vocabulary, "to_records"):
        records = vocabulary.to_records()
        if [r["name"] for r in records] == list(labeler.class_names):
            return [(r["name"], list(r["synonyms"])) for r in records]
    return [(name, []) for name in labeler.class_names]
