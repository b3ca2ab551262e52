"""Training-free segmentation benchmarks: any of our labelers on the eight standard suites, under the
protocol each method's paper uses (``benchmark.protocols``), scored with :mod:`maskclip_core.segmentation_metrics`.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from maskclip_core.benchmark.protocols import METHOD_NAMES, METHODS, MethodProtocol, SuiteSettings, get_method
from maskclip_core.benchmark.suites import (
    SUITE_NAMES,
    BenchmarkSuite,
    NameSet,
    expected_class_names,
    get_suite,
    list_samples,
    load_image,
    load_label_map,
    to_ground_truth_ids,
)
from maskclip_core.segmentation_metrics import SegmentationMetrics
from maskclip_core.teacher.clip_loader import DEFAULT_MODEL, DEFAULT_PRETRAINED
from maskclip_core.teacher.labeler import LabelerConfig
from maskclip_core.teacher.prompts import TemplateSetName
from maskclip_core.teacher.window_predictor import InferenceConfig
from maskclip_core.types import Labeler


def attention_modes() -> tuple[str, ...]:
    """Attention modes this version's ``InferenceConfig`` offers."""
    return tuple(typing.get_args(InferenceConfig.model_fields["attention"].annotation))


def unavailable_reason(method: MethodProtocol) -> str | None:
    """Why this version cannot run ``method`` (an attention mode or option it lacks), or None."""
    mode = method.inference.get("attention")
    if mode is not None and mode not in attention_modes():
        return f"needs attention mode {mode!r}, which this version does not offer ({', '.join(attention_modes())})"
    missing = [f"InferenceConfig.{k}" for k in method.inference if k not in InferenceConfig.model_fields]
    missing += [f"LabelerConfig.{k}" for k in method.labeler_options if k not in LabelerConfig.model_fields]
    return f"needs {', '.join(missing)}, which this version lacks" if missing else None


# --- the request -------------------------------------------------------------------------------------------


class BenchmarkParameters(BaseModel):
    """What to run: suites and where their data is, the method (protocol) and the model's weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suites: list[str] = Field(default_factory=lambda: list(SUITE_NAMES), min_length=1, description="Suite names")
    data_root: str | None = Field(None, description="mmseg data root holding each dataset's folder (data/)")
    suite_roots: dict[str, str] = Field(default_factory=dict, description="Per-suite dataset folder (wins)")
    method: str = Field("maskclip", description=f"Protocol: {', '.join(METHOD_NAMES)}")
    model: str = Field(DEFAULT_MODEL, description="open_clip model name")
    pretrained: str = Field(DEFAULT_PRETRAINED, description="open_clip tag, a local checkpoint path, or 'none'")
    seed: int = Field(0, description="Seed of random weights (pretrained='none')")
    templates: TemplateSetName = Field("maskclip", description="Prompt template set (teacher.prompts TEMPLATE_SETS)")
    checkpoint: str | None = Field(None, description="Student weights file / checkpoint directory (method student)")
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default: CUDA when present")
    limit: int | None = Field(None, ge=1, description="At most this many images per suite (quick looks)")
    inference: dict[str, Any] = Field(default_factory=dict, description="InferenceConfig fields over the protocol")
    labeler_options: dict[str, Any] = Field(default_factory=dict, description="Other LabelerConfig fields")
    names: NameSet | None = Field(None, description="Class-name table (default: the method's)")
    prob_threshold: float | None = Field(None, ge=0, le=1, description="Background threshold (default: method's)")

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, suites: list[str]) -> list[str]:
        for name in suites:
            get_suite(name)
        return list(dict.fromkeys(suites))

    @model_validator(mode="after")
    def _complete(self) -> BenchmarkParameters:
        method = get_method(self.method)
        for name in self.suite_roots:
            get_suite(name)
        without = [s for s in self.suites if s not in self.suite_roots and self.data_root is None]
        if without:
            raise ValueError(f"no data root for {', '.join(without)}: give data_root or suite_roots")
        if method.labeler == "student" and not self.checkpoint:
            raise ValueError("method 'student' needs `checkpoint` (a weights file or checkpoint directory URL)")
        return self

    def root(self, suite: str) -> str:
        root = self.suite_roots.get(suite, self.data_root)
        assert root is not None  # validated
        return root

    def settings(self, suite: str) -> SuiteSettings:
        settings = get_method(self.method).settings(suite)
        if self.names is not None:
            settings = replace(settings, names=self.names)
        if self.prob_threshold is not None:
            settings = replace(settings, prob_threshold=self.prob_threshold)
        # The request's inference overrides, so the report states the sizes the labeler really used.
        sizes = {k: self.inference[k] for k in ("short_side", "crop", "stride", "logit_scale") if k in self.inference}
        if self.inference.get("mode") == "whole":
            sizes["crop"] = None
        elif self.inference.get("mode") == "slide" and settings.crop is None and "crop" not in sizes:
            sizes["crop"] = InferenceConfig.model_fields["crop"].default  # what the labeler will use
        return replace(settings, **sizes)

    def labeler_config(self, suite: str) -> LabelerConfig:
        """The teacher's configuration on ``suite``: the protocol's, then the request's overrides.

        A method whose attention mode (or option) this version lacks fails here with a one-line error.
        """
        method = get_method(self.method)
        reason = unavailable_reason(method)
        if reason is not None:
            raise ValueError(f"method {self.method!r} {reason}")
        settings = self.settings(suite)
        inference = {**settings.inference_fields(), **method.inference, **self.inference}
        mode = inference.get("attention")
        if mode is not None and mode not in attention_modes():
            raise ValueError(f"attention mode {mode!r} is not offered here ({', '.join(attention_modes())})")
        fields = {
            "model": self.model,
            "pretrained": self.pretrained,
            "seed": self.seed,
            "templates": self.templates,
            **get_suite(suite).vocabulary_fields(settings.names),
            **method.labeler_options,
            **self.labeler_options,
        }
        try:
            return LabelerConfig(**fields, inference=InferenceConfig(**inference))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"method {self.method!r} on {suite}: {problems}") from None


# --- labelers ----------------------------------------------------------------------------------------------

LabelerFactory = Callable[[BenchmarkParameters, str], Labeler]


def build_labeler(request: BenchmarkParameters, suite: str) -> Labeler:
    """The request's labeler for ``suite`` (its classes are the suite's, in :func:`expected_class_names` order).

    Built per suite and not cached: each suite has its own vocabulary and inference settings, and keeping
    eight models alive would cost eight times the memory for seconds of loading saved.
    """
    method = get_method(request.method)
    if method.labeler == "student":
        return _student_labeler(request, suite)
    from maskclip_core.teacher.labeler import MaskCLIPLabeler

    return MaskCLIPLabeler.from_config(request.labeler_config(suite), device=request.device)


def _student_labeler(request: BenchmarkParameters, suite: str) -> Labeler:
    from maskclip_core.student import StudentLabeler
    from maskclip_core.teacher.vocabulary import Vocabulary
    from maskclip_core.training.embeddings import text_embeddings
    from maskclip_core.training.parameters import ClipParameters

    assert request.checkpoint is not None  # validated
    settings = request.settings(suite)
    labeler = StudentLabeler.from_checkpoint(request.checkpoint, device=request.device, short_side=settings.short_side)
    vocabulary = Vocabulary.parse(**get_suite(suite).vocabulary_fields(settings.names))
    clip = ClipParameters(
        model=request.model, pretrained=request.pretrained, seed=request.seed, templates=request.templates
    )
    embeddings, classes = text_embeddings(clip, vocabulary, device=request.device)
    labeler.set_vocabulary(embeddings, classes)
    return labeler


# --- results -----------------------------------------------------------------------------------------------

MAX_FAILURES_LISTED = 20


@dataclass
class SuiteResult:
    """Scores and speed of one suite. ``miou`` and the per-class IoUs are in percent (as papers print them)."""

    suite: str
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    images: int  # scored
    failed: int  # images that could not be read or labeled (not scored)
    failures: list[str]  # "name: reason", the first MAX_FAILURES_LISTED
    labeling_seconds: float
    seconds: float
    settings: dict[str, Any]

    @property
    def images_per_second(self) -> float:
        return self.images / self.labeling_seconds if self.labeling_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "miou": _finite(self.miou),
            "pixel_accuracy": _finite(self.pixel_accuracy),
            "images": self.images,
            "failed": self.failed,
            "failures": self.failures,
            "images_per_second": _finite(self.images_per_second, 3),
            "labeling_seconds": round(self.labeling_seconds, 3),
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
            "per_class_iou": self.per_class_iou,
        }


def _finite(value: float, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


@dataclass
class BenchmarkReport:
    """All suites of a run; ``eight_suite_average`` only when the eight standard suites all ran."""

    method: str
    model: str
    pretrained: str
    results: list[SuiteResult]
    limit: int | None = None

    @property
    def average(self) -> float:
        values = [r.miou for r in self.results if math.isfinite(r.miou)]
        return float(np.mean(values)) if values and len(values) == len(self.results) else float("nan")

    @property
    def eight_suite_average(self) -> float | None:
        complete = {r.suite for r in self.results} == set(SUITE_NAMES) and self.limit is None
        return self.average if complete and math.isfinite(self.average) else None

    @property
    def images_per_second(self) -> float:
        seconds = sum(r.labeling_seconds for r in self.results)
        return sum(r.images for r in self.results) / seconds if seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        published = get_method(self.method).published_average if self.method in METHODS else None
        return {
            "method": self.method,
            "model": self.model,
            "pretrained": self.pretrained,
            "limit": self.limit,
            "suites": {r.suite: r.to_dict() for r in self.results},
            "miou": {r.suite: _finite(r.miou) for r in self.results},
            "average": _finite(self.average),
            "eight_suite_average": _finite(self.eight_suite_average) if self.eight_suite_average else None,
            "published_eight_suite_average": published,
            "images_per_second": _finite(self.images_per_second, 3),
        }

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per suite and an average row: suite, mIoU, images, failed, images/s."""
        rows = [
            {
                "suite": r.suite,
                "mIoU": _finite(r.miou),
                "images": r.images,
                "failed": r.failed,
                "images/s": _finite(r.images_per_second, 3),
            }
            for r in self.results
        ]
        label = "eight-suite average" if self.eight_suite_average is not None else f"mean of {len(self.results)}"
        rows.append(
            {
                "suite": label,
                "mIoU": _finite(self.average),
                "images": sum(r.images for r in self.results),
                "failed": sum(r.failed for r in self.results),
                "images/s": _finite(self.images_per_second, 3),
            }
        )
        return rows


# --- running -----------------------------------------------------------------------------------------------

Progress = Callable[[str, int, int], None]  # (suite, images done, images in the suite)


def score_suite(
    suite: BenchmarkSuite,
    root: str,
    labeler: Labeler,
    settings: SuiteSettings,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
) -> SuiteResult:
    """Label every sample of ``suite`` one image at a time and accumulate one confusion matrix.

    An image or label map that cannot be read, or an image the labeler fails on, is counted in ``failed``
    with its reason and left out of the score; the suite goes on. Layout problems (no such folder, label
    maps missing) raise: a silently smaller split would give a wrong number.
    """
    expected = expected_class_names(suite, settings.names)
    if tuple(labeler.class_names) != expected:
        raise ValueError(f"{suite.name}: labeler classes {tuple(labeler.class_names)[:4]}... are not the suite's")
    samples = list_samples(suite, root, limit)
    metrics = SegmentationMetrics(suite.num_classes, suite.class_names)
    failures: list[str] = []
    failed = scored = 0
    labeling = 0.0
    start = time.perf_counter()
    for i, sample in enumerate(samples):
        try:
            target = load_label_map(sample.label, suite)
            image = load_image(sample.image, target.shape)
            if image.shape[:2] != target.shape:
                raise ValueError(f"image {image.shape[:2]} and label map {target.shape} differ in size")
            t0 = time.perf_counter()
            [result] = labeler.label([image])
            labeling += time.perf_counter() - t0
            pred = to_ground_truth_ids(suite, result.labels, result.confidence, settings.prob_threshold)
            metrics.update(pred, target)
            scored += 1
        except Exception as exc:  # one bad file must not cost the suite: recorded, not scored
            failed += 1
            if len(failures) < MAX_FAILURES_LISTED:
                failures.append(f"{sample.name}: {type(exc).__name__}: {exc}")
        if progress is not None:
            progress(suite.name, i + 1, len(samples))
    summary = metrics.summary()
    iou = {name: None if v is None else round(100 * v, 2) for name, v in summary["per_class_iou"].items()}
    return SuiteResult(
        suite=suite.name,
        miou=100 * summary["miou"] if scored else float("nan"),
        pixel_accuracy=100 * summary["pixel_accuracy"] if scored else float("nan"),
        per_class_iou=iou,
        images=scored,
        failed=failed,
        failures=failures,
        labeling_seconds=labeling,
        seconds=time.perf_counter() - start,
        settings={**asdict(settings), "root": str(root)},
    )


def benchmark_suite(
    request: BenchmarkParameters,
    suite: str,
    *,
    labeler_factory: LabelerFactory = build_labeler,
    progress: Progress | None = None,
) -> SuiteResult:
    """One suite of ``request``: its labeler built, its split scored, the labeler released."""
    labeler = labeler_factory(request, suite)
    return score_suite(
        get_suite(suite), request.root(suite), labeler, request.settings(suite), limit=request.limit, progress=progress
    )


def run_benchmark(
    request: BenchmarkParameters,
    *,
    labeler_factory: LabelerFactory = build_labeler,
    progress: Progress | None = None,
) -> BenchmarkReport:
    """Every suite of ``request`` in order. Configurations are all checked before the first image is read."""
    if get_method(request.method).labeler == "maskclip":
        for suite in request.suites:
            request.labeler_config(suite)
    results = [
        benchmark_suite(request, suite, labeler_factory=labeler_factory, progress=progress) for suite in request.suites
    ]
    return report_of(request, results)


def report_of(request: BenchmarkParameters, results: Sequence[SuiteResult]) -> BenchmarkReport:
    return BenchmarkReport(request.method, request.model, request.pretrained, list(results), request.limit)
