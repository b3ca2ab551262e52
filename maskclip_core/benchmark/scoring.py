"""Training-free segmentation benchmarks: any of our labelers on the eight standard suites, under the
protocol each method's paper uses (``benchmark.protocols``), scored with :mod:`maskclip_core.segmentation_metrics`.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from maskclip_core.benchmark.protocols import METHOD_NAMES, METHODS, MethodProtocol, SuiteSettings, get_method
from maskclip_core.benchmark.suites import (
    SUITE_NAMES,
    BenchmarkSuite,
    NameSet,
    SplitCheck,
    check_split,
    expected_class_names,
    get_suite,
    load_image,
    load_label_map,
    save_prediction,
    to_ground_truth_ids,
)
from maskclip_core.segmentation_metrics import SegmentationMetrics
from maskclip_core.teacher.clip_loader import DEFAULT_MODEL, DEFAULT_PRETRAINED, is_vit_architecture
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
    templates: TemplateSetName | None = Field(None, description="Prompt template set (default: the method's)")
    checkpoint: str | None = Field(None, description="Student weights file / checkpoint directory (method student)")
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default: CUDA when present")
    limit: int | None = Field(None, ge=1, description="At most this many images per suite (quick looks)")
    inference: dict[str, Any] = Field(default_factory=dict, description="InferenceConfig fields over the protocol")
    labeler_options: dict[str, Any] = Field(default_factory=dict, description="Other LabelerConfig fields")
    names: NameSet | None = Field(None, description="Class-name table (default: the method's)")
    prob_threshold: float | None = Field(None, ge=0, le=1, description="Background threshold (default: method's)")
    allow_incomplete: bool = Field(
        False,
        description="Score what can be read: images that fail or are missing, and splits smaller than the "
        "official ones, are reported instead of failing the run (no eight-suite average then)",
    )
    save_predictions: str | None = Field(
        None, description="Folder for each image's predicted ground-truth ids: DIR/<suite>/<image stem>.png"
    )

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
            **get_suite(suite).vocabulary_fields(settings.names),
            **settings.labeler_fields(),
            **method.labeler_options,
            **({"templates": self.templates} if self.templates else {}),
            **self.labeler_options,
        }
        try:
            config = LabelerConfig(**fields, inference=InferenceConfig(**inference))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"method {self.method!r} on {suite}: {problems}") from None
        needs_vit = [f"attention {config.inference.attention!r}"] if config.inference.attention != "maskclip" else []
        needs_vit += [f"proxy {config.proxy!r}"] if config.proxy is not None else []
        if needs_vit and not is_vit_architecture(self.model):
            raise ValueError(
                f"method {self.method!r} needs a ViT CLIP ({', '.join(needs_vit)}); {self.model} is a ResNet: "
                "choose a ViT (--model ViT-B-16) or --method maskclip"
            )
        return config


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
        model=request.model, pretrained=request.pretrained, seed=request.seed, templates=request.templates or "maskclip"
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
    split: dict[str, Any] = field(default_factory=dict)  # SplitCheck.to_dict(): the official split's count
    predictions: str | None = None  # folder of the saved predictions

    @property
    def complete(self) -> bool:
        """Every image of the split scored (the first ``limit`` under a limit)."""
        return self.failed == 0 and bool(self.split.get("complete", True)) and self.images > 0

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
            "complete": self.complete,
            "split": self.split,
            "predictions": self.predictions,
            "settings": self.settings,
            "per_class_iou": self.per_class_iou,
        }


def _finite(value: float, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


@dataclass
class BenchmarkReport:
    """All suites of a run; ``eight_suite_average`` only when the eight standard suites all ran, whole.

    A run with failed or missing images, or a split smaller than the official one, has ``failed`` set and no
    average unless ``allow_incomplete``; even then the eight-suite average (the papers' number) needs all.
    """

    method: str
    model: str
    pretrained: str
    results: list[SuiteResult]
    limit: int | None = None
    allow_incomplete: bool = False
    predictions: str | None = None
    pending: list[str] = field(default_factory=list)  # suites not scored (yet): a report written mid-run

    @property
    def complete(self) -> bool:
        return not self.pending and all(r.complete for r in self.results)

    @property
    def failed(self) -> bool:
        """Images failed or were missing and the user did not allow it, or a suite scored nothing."""
        return any(r.images == 0 for r in self.results) or (not self.complete and not self.allow_incomplete)

    @property
    def average(self) -> float:
        values = [r.miou for r in self.results if math.isfinite(r.miou)]
        whole = values and len(values) == len(self.results) and not self.failed
        return float(np.mean(values)) if whole else float("nan")

    @property
    def eight_suite_average(self) -> float | None:
        every = {r.suite for r in self.results} == set(SUITE_NAMES) and self.limit is None and self.complete
        return self.average if every and math.isfinite(self.average) else None

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
            "limit_note": f"the first {self.limit} images of each split, not the official splits: no split "
            "counts checked, no eight-suite average"
            if self.limit
            else None,
            "complete": self.complete,
            "failed": self.failed,
            "allow_incomplete": self.allow_incomplete,
            "pending": self.pending,
            "predictions": self.predictions,
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
Notify = Callable[[str], None]  # one status line (model loading, a suite done)


def score_suite(
    suite: BenchmarkSuite,
    root: str,
    labeler: Labeler,
    settings: SuiteSettings,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    split: SplitCheck | None = None,
    predictions: str | Path | None = None,
) -> SuiteResult:
    """Label every sample of ``split`` (default: :func:`check_split` of ``root``) one image at a time and
    accumulate one confusion matrix.

    An image or label map that cannot be read, or an image the labeler fails on, is counted in ``failed`` with
    its reason and left out of the score; the suite goes on (whether that fails the run is the report's call).
    ``predictions``: a folder; each scored image's ground-truth ids go to ``<folder>/<suite>/<image stem>.png``.
    """
    expected = expected_class_names(suite, settings.names)
    if tuple(labeler.class_names) != expected:
        raise ValueError(f"{suite.name}: labeler classes {tuple(labeler.class_names)[:4]}... are not the suite's")
    split = split if split is not None else check_split(suite, root, limit)
    out = Path(predictions) / suite.name if predictions is not None else None
    metrics = SegmentationMetrics(suite.num_classes, suite.class_names)
    failures = [f"{name}: missing" for name in split.missing[:MAX_FAILURES_LISTED]]
    failed = scored = 0
    labeling = 0.0
    start = time.perf_counter()
    for i, sample in enumerate(split.samples):
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
            if out is not None:
                save_prediction(out / f"{sample.image.stem}.png", pred)
            scored += 1
        except Exception as exc:  # one bad file must not cost the suite: recorded, not scored
            failed += 1
            if len(failures) < MAX_FAILURES_LISTED:
                failures.append(f"{sample.name}: {type(exc).__name__}: {exc}")
        if progress is not None:
            progress(suite.name, i + 1, len(split.samples))
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
        split=split.to_dict(),
        predictions=str(out) if out is not None else None,
    )


def preflight(request: BenchmarkParameters) -> dict[str, SplitCheck]:
    """Every requested suite checked before the first model loads or image is read: the method's configuration
    (a ViT-only method with a ResNet, an option this version lacks), each dataset's layout and, unless
    ``allow_incomplete``, its split against the official one. All problems are raised together, one line."""
    checks: dict[str, SplitCheck] = {}
    problems: list[str] = []
    hint = ""
    maskclip = get_method(request.method).labeler == "maskclip"
    if maskclip:
        request.labeler_config(request.suites[0])  # a method problem is the same on every suite: said once
    for suite in request.suites:
        try:
            if maskclip:
                request.labeler_config(suite)
            check = checks[suite] = check_split(get_suite(suite), request.root(suite), request.limit)
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
            continue
        if not request.allow_incomplete and check.problem() is not None:
            problems.append(check.problem() or "")
            hint = " (--allow-incomplete scores the images that are there)"
    if problems:
        raise FileNotFoundError(f"nothing was scored: {' | '.join(problems)}{hint}")
    return checks


def benchmark_suite(
    request: BenchmarkParameters,
    suite: str,
    *,
    labeler_factory: LabelerFactory = build_labeler,
    progress: Progress | None = None,
    notify: Notify | None = None,
    split: SplitCheck | None = None,
) -> SuiteResult:
    """One suite of ``request``: its labeler built, its split scored, the labeler released."""
    say = notify or (lambda line: None)
    settings = request.settings(suite)
    split = split if split is not None else check_split(get_suite(suite), request.root(suite), request.limit)
    classes = len(expected_class_names(get_suite(suite), settings.names))
    say(f"{suite}: loading {request.model} ({request.pretrained}) and encoding {classes} classes' prompts")
    start = time.perf_counter()
    labeler = labeler_factory(request, suite)
    say(f"{suite}: ready in {time.perf_counter() - start:.1f} s; labeling {len(split.samples)} images")
    result = score_suite(
        get_suite(suite),
        request.root(suite),
        labeler,
        settings,
        limit=request.limit,
        progress=progress,
        split=split,
        predictions=request.save_predictions,
    )
    say(
        f"{suite}: mIoU {result.miou:.2f} over {result.images} images"
        + (f", {result.failed} failed" if result.failed else "")
        + (f", {result.split['missing']} missing" if result.split.get("missing") else "")
    )
    return result


def run_benchmark(
    request: BenchmarkParameters,
    *,
    labeler_factory: LabelerFactory = build_labeler,
    progress: Progress | None = None,
    notify: Notify | None = None,
    on_suite: Callable[[BenchmarkReport], None] | None = None,
) -> BenchmarkReport:
    """Every suite of ``request`` in order, after :func:`preflight`. ``on_suite`` gets the report so far after
    each suite (finished suites survive a later one's crash)."""
    checks = preflight(request)
    results: list[SuiteResult] = []
    for suite in request.suites:
        results.append(
            benchmark_suite(
                request, suite, labeler_factory=labeler_factory, progress=progress, notify=notify, split=checks[suite]
            )
        )
        if on_suite is not None:
            on_suite(report_of(request, results))
    return report_of(request, results)


def report_of(request: BenchmarkParameters, results: Sequence[SuiteResult]) -> BenchmarkReport:
    """The report of ``results``; the request's suites without a result are ``pending``."""
    done = {r.suite for r in results}
    return BenchmarkReport(
        request.method,
        request.model,
        request.pretrained,
        list(results),
        request.limit,
        allow_incomplete=request.allow_incomplete,
        predictions=request.save_predictions,
        pending=[s for s in request.suites if s not in done],
    )
