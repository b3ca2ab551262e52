"""The method protocols: each method's evaluation settings on the eight suites, as its repository configures them.

A *method protocol* is what the method's repository configures per suite (``configs/cfg_*.py`` and its
segmentor's defaults): the short side images are resized to (long side capped at 2048, mmseg's
``Resize(scale=(2048, S), keep_ratio=True)``), sliding windows (size / stride) or the whole image, the softmax
temperature (``logit_scale``), the probability below which a pixel is called background on suites with a
background class (``prob_thd``), and which class-name table it queries. Scores are mIoU over the whole split
(one confusion matrix per suite, classes absent from both prediction and ground truth left out), in percent.

Where we differ from the reference evaluations (all small; stated so nobody mistakes them for bugs):

- Our labeler averages window *probabilities* where windows overlap; the references average cosine logits and
  take one softmax afterwards. With synonyms, our probability of a class is the softmax over classes of the
  best query's logit; theirs is the best query's share of the softmax over all queries (same argmax; our
  probability is never lower, so a ``prob_thd`` calls background slightly less often).
- Templates: ours add MaskCLIP's 5 scene templates to the 80 ImageNet templates the references use.
- Resizing is bilinear with antialiasing (mmseg: OpenCV bilinear without), windows are padded bottom/right to
  the patch size (ProxyCLIP pads centred to 56 px).
- SCLIP's VOC21 ``area_thd`` (classes under 10 % of the predicted foreground are removed and their pixels go to
  the next class) needs the full probability maps, which our ``Labeler`` contract does not return: not applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from maskclip_core.benchmark.suites import SUITE_NAMES, NameSet
from maskclip_core.dataset.schema import LabelerKind

# --- method protocols --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteSettings:
    """The protocol's settings on one suite (``crop=None``: the whole image in one forward)."""

    short_side: int
    crop: int | None
    stride: int
    logit_scale: float
    prob_threshold: float
    names: NameSet

    def inference_fields(self) -> dict[str, Any]:
        window = {"mode": "whole"} if self.crop is None else {"mode": "slide", "crop": self.crop, "stride": self.stride}
        return {"short_side": self.short_side, "max_long_side": 2048, "logit_scale": self.logit_scale, **window}


@dataclass(frozen=True)
class MethodProtocol:
    """A method's evaluation settings: defaults plus per-suite overrides of :class:`SuiteSettings` fields."""

    name: str
    title: str
    source: str  # where the settings are read from
    labeler: LabelerKind = "maskclip"
    inference: Mapping[str, Any] = field(default_factory=dict)  # InferenceConfig fields (attention, refinements)
    labeler_options: Mapping[str, Any] = field(default_factory=dict)  # other LabelerConfig fields
    defaults: SuiteSettings = SuiteSettings(336, 224, 112, 40.0, 0.0, "sclip")
    per_suite: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    published_average: float | None = None  # the paper's eight-suite average (ViT-B/16), percent

    def settings(self, suite: str) -> SuiteSettings:
        return replace(self.defaults, **self.per_suite.get(suite, {}))


NO_REFINEMENTS = {"key_smoothing": False, "prompt_denoising": False}

# Each repository's evaluation configs: its defaults and its per-suite overrides. SCLIP's are also where the
# successors' tables evaluate MaskCLIP (and NACLIP starts from them): background at prob < 0.1.
_SCLIP_SUITES: dict[str, dict[str, Any]] = {
    "voc21": {"prob_threshold": 0.1},
    "context60": {"prob_threshold": 0.1},
    "coco-object": {"prob_threshold": 0.1},
    "cityscapes": {"short_side": 560},
    "coco-stuff": {"short_side": 448},
}
_SCLIP_DEFAULTS = SuiteSettings(336, 224, 112, 40.0, 0.0, "sclip")
CONFIGS: dict[str, tuple[SuiteSettings, dict[str, dict[str, Any]]]] = {
    "sclip": (_SCLIP_DEFAULTS, _SCLIP_SUITES),
    "clearclip": (
        SuiteSettings(448, 448, 224, 50.0, 0.0, "proxyclip"),
        {
            "voc21": {"prob_threshold": 0.5},
            "context60": {"prob_threshold": 0.15},
            "coco-object": {"prob_threshold": 0.4},
            "cityscapes": {"crop": 224},
        },
    ),
    "naclip": (
        _SCLIP_DEFAULTS,
        {
            "voc21": {"prob_threshold": 0.1, "crop": None},
            "voc20": {"crop": None},
            "context60": {"prob_threshold": 0.1},
            "coco-object": {"prob_threshold": 0.1},
            "cityscapes": {"short_side": 560},
        },
    ),
    "proxyclip": (
        SuiteSettings(336, 336, 112, 40.0, 0.0, "proxyclip"),
        {
            "voc21": {"prob_threshold": 0.2},
            "context60": {"prob_threshold": 0.15},
            "coco-object": {"prob_threshold": 0.25},
            "ade20k": {"short_side": 448},
            "cityscapes": {"short_side": 448, "crop": 224},
        },
    ),
}
# SCLIP's own temperatures where they differ from its shared configs.
_SCLIP_LOGIT_SCALES = {
    "voc21": {"logit_scale": 65.0},
    "context60": {"logit_scale": 50.0},
    "coco-object": {"logit_scale": 50.0},
}


def method(
    name: str,
    *,
    title: str,
    configs: str,
    source: str,
    inference: Mapping[str, Any],
    published_average: float | None = None,
    labeler: LabelerKind = "maskclip",
    labeler_options: Mapping[str, Any] | None = None,
    per_suite: Mapping[str, Mapping[str, Any]] | None = None,
) -> MethodProtocol:
    """One method's protocol: the repository ``configs`` (a :data:`CONFIGS` key) with the method's own
    ``per_suite`` overrides merged over them setting by setting. A misspelt suite or setting fails here, at
    import, instead of being ignored (or failing only when that suite runs)."""
    defaults, configured = CONFIGS[configs]
    own = per_suite or {}
    merged = {s: {**configured.get(s, {}), **own.get(s, {})} for s in {*configured, *own}}
    unknown = [s for s in merged if s not in SUITE_NAMES]
    unknown += [f"{s}.{k}" for s, fields in merged.items() for k in fields if k not in SuiteSettings.__annotations__]
    if unknown:
        raise ValueError(f"method {name!r}: unknown suites or settings {unknown}")
    return MethodProtocol(
        name,
        title,
        source,
        labeler=labeler,
        inference=dict(inference),
        labeler_options=dict(labeler_options or {}),
        defaults=defaults,
        per_suite=merged,
        published_average=published_average,
    )


_PROTOCOLS = (
    method(
        "maskclip",
        title="MaskCLIP (Zhou et al., ECCV 2022), no key smoothing / prompt denoising",
        configs="sclip",
        source="SCLIP's configs, where the successors' tables evaluate MaskCLIP",
        inference={"attention": "maskclip", **NO_REFINEMENTS},
        published_average=30.3,
    ),
    method(
        "maskclip-kspd",
        title="MaskCLIP with key smoothing and prompt denoising",
        configs="sclip",
        source="SCLIP's configs; MaskCLIP's refinements on",
        inference={"attention": "maskclip", "key_smoothing": True, "prompt_denoising": True},
    ),
    method(
        "sclip",
        title="SCLIP (Wang et al., ECCV 2024)",
        configs="sclip",
        source="wangf3014/SCLIP configs/cfg_*.py (area_thd on VOC21 not applied)",
        inference={"attention": "sclip", **NO_REFINEMENTS},
        published_average=38.2,
        per_suite=_SCLIP_LOGIT_SCALES,
    ),
    method(
        "clearclip",
        title="ClearCLIP (Lan et al., ECCV 2024)",
        configs="clearclip",
        source="mc-lan/ClearCLIP configs/cfg_*.py and segmentor defaults (448 windows, stride 224, logit scale 50)",
        inference={"attention": "clearclip", **NO_REFINEMENTS},
        published_average=38.1,
    ),
    method(
        "naclip",
        title="NACLIP (Hajimiri et al., WACV 2025), without PAMR",
        configs="naclip",
        source="sinahmr/NACLIP configs/cfg_*.py and segmentor defaults (VOC whole image, PAMR off)",
        inference={"attention": "naclip", **NO_REFINEMENTS},
        published_average=39.4,
    ),
    method(
        "naclip-pamr",
        title="NACLIP with PAMR (10 iterations, dilations 8 and 16), its repository's default",
        configs="naclip",
        source="sinahmr/NACLIP as above, PAMR on (ours refines each window before stitching; NACLIP the whole image)",
        inference={"attention": "naclip", **NO_REFINEMENTS, "pamr": True, "pamr_iterations": 10},
    ),
    # The proxy's attention replaces the last block's, so the attention mode stays at CLIP's value path.
    method(
        "proxyclip",
        title="ProxyCLIP (Lan et al., ECCV 2024), DINO ViT-B/8 proxy",
        configs="proxyclip",
        source="mc-lan/ProxyCLIP configs/cfg_*.py and segmentor defaults (336 windows, stride 112, beta 1.2, gamma 3)",
        inference={"attention": "maskclip", **NO_REFINEMENTS},
        published_average=42.3,
        labeler_options={"proxy": "dino_vitb8"},
    ),
    method(
        "student",
        title="A MaskCLIP+ student checkpoint (its classifier re-pointed at each suite's classes)",
        configs="sclip",
        source="the maskclip protocol's sizes and thresholds",
        inference={},
        labeler="student",
    ),
)


METHODS: dict[str, MethodProtocol] = {p.name: p for p in _PROTOCOLS}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> MethodProtocol:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}") from None
