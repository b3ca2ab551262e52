"""The method protocols: each method's evaluation settings on the eight suites, as its repository configures them.

A *method protocol* is what the method's repository configures per suite (``configs/cfg_*.py`` and its
segmentor's defaults): the short side images are resized to (long side capped at 2048, mmseg's
``Resize(scale=(2048, S), keep_ratio=True)``), sliding windows (size / stride) or the whole image, the softmax
temperature (``logit_scale``), the probability below which a pixel is called background on suites with a
background class (``prob_thd``), and which class-name table it queries. Scores are mIoU over the whole split
(one confusion matrix per suite, classes absent from both prediction and ground truth left out), in percent.

Each method row computes what its reference segmentor computes (issue 22; ``tests/benchmark/
test_reference_segmentors.py`` checks the label maps against a rewrite of each reference's arithmetic): the
rows set :data:`REFERENCE_ARITHMETIC` (``InferenceConfig`` fields whose defaults stay this project's labeling
conventions) and the references' 80 ImageNet templates. What each reference difference became:

1. one softmax over *all* queries, a class scored by its best query's share (``class_scores="query_share"``);
2. ClearCLIP's background is the single word ``background`` (name set ``clearclip``);
3. SCLIP's VOC21 ``area_thd=0.1`` (``area_threshold``);
4. PAMR (``naclip-pamr``) once on the whole image at its original size, on the averaged logits (``merge``);
5. a tie with the background goes to the background, the references' class 0 (``background_wins_ties``);
6. positional embeddings resized with ``scale_factor=(g + 0.1) / N`` for CLIP and the proxy (``position_resize``);
7. open_clip's 80 ImageNet templates (template set ``imagenet``);
8. mmsegmentation's resize: OpenCV bilinear on uint8, no antialiasing, sizes rounded half up (``resize``);
9. MaskCLIP's rows follow the successors' tables (SCLIP's configs and arithmetic, MaskCLIP's own last block):
   its own repository configures four of the eight suites;
10. raw window logits averaged, resized to the original size, one softmax there (``merge="logits"``);

and a window side that is no multiple of the patch size: SCLIP's and NACLIP's patch grid floors, its logits
stretched over the side (``partial_patches="floor"``: NACLIP's whole images); ClearCLIP and ProxyCLIP pad it
centred, to 16 / 56 pixels (``"pad_centred"``, ``pad_to``). ClearCLIP's repository commits
``model_type='vanilla'`` in its base config; the row runs its ``'ClearCLIP'`` mode, the paper's q-q attention.
``maskclip-kspd`` and ``student`` keep our window merging (key smoothing needs per-window probabilities).
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
    area_threshold: float | None = None  # SCLIP's area_thd (InferenceConfig.area_threshold)
    sam_cos_fac: float | None = None  # Trident's cos_fac (LabelerConfig.sam_cos_fac)
    sam_refine_neg_cos: bool | None = None  # Trident's refine_neg_cos (LabelerConfig.sam_refine_neg_cos)

    def inference_fields(self) -> dict[str, Any]:
        window = {"mode": "whole"} if self.crop is None else {"mode": "slide", "crop": self.crop, "stride": self.stride}
        area = {} if self.area_threshold is None else {"area_threshold": self.area_threshold}
        return {"short_side": self.short_side, "max_long_side": 2048, "logit_scale": self.logit_scale, **window, **area}

    def labeler_fields(self) -> dict[str, Any]:
        """The LabelerConfig fields a suite sets (Trident's SAM threshold)."""
        sam = {"sam_cos_fac": self.sam_cos_fac, "sam_refine_neg_cos": self.sam_refine_neg_cos}
        return {k: v for k, v in sam.items() if v is not None}


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
# The reference segmentors' arithmetic (SCLIP's clip_segmentor.py and its descendants), as InferenceConfig settings:
# raw window logits averaged and resized to the original size before one softmax over all queries, a class
# scored by its best query's share, ties to background (their class 0), mmseg's OpenCV resize, positional
# embeddings resized by scale factor, patch grids that floor (SCLIP, NACLIP; ClearCLIP's and ProxyCLIP's rows pad
# centred, as they do).
REFERENCE_ARITHMETIC = {
    **NO_REFINEMENTS,
    "merge": "logits",
    "class_scores": "query_share",
    "background_wins_ties": True,
    "resize": "opencv",
    "position_resize": "scale_factor",
    "partial_patches": "floor",
}
# ... and their prompts: open_clip's 80 ImageNet templates.
REFERENCE_TEMPLATES = {"templates": "imagenet"}

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
        SuiteSettings(448, 448, 224, 50.0, 0.0, "clearclip"),
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
    # YuHengsss/Trident configs/base_config.py (336 windows, stride 224, Trident's logit scale 40 and prob_thd 0)
    # and cfg_*.py: each suite's Resize scale, prob_thd, VOC20's stride 112 and cos_fac 0, Cityscapes' cos_fac 3,
    # refine_neg_cos off on Cityscapes and ADE20K. Its cls_*.txt of the eight suites are ProxyCLIP's, byte for byte.
    "trident": (
        SuiteSettings(336, 336, 224, 40.0, 0.0, "proxyclip"),
        {
            "voc21": {"short_side": 448, "prob_threshold": 0.2},
            "voc20": {"stride": 112, "sam_cos_fac": 0.0},
            "context60": {"short_side": 576, "prob_threshold": 0.15},
            "context59": {"short_side": 576},
            "coco-object": {"short_side": 448, "prob_threshold": 0.25},
            "coco-stuff": {"short_side": 448},
            "cityscapes": {"short_side": 688, "sam_cos_fac": 3.0, "sam_refine_neg_cos": False},
            "ade20k": {"short_side": 576, "sam_refine_neg_cos": False},
        },
    ),
}
# SCLIP's own temperatures where they differ from its shared configs, and its VOC21 area_thd.
_SCLIP_OWN = {
    "voc21": {"logit_scale": 65.0, "area_threshold": 0.1},
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
    # Item 9 of issue 22: chongzhou96/MaskCLIP's own configs cover four of the eight suites (VOC20, Context59,
    # COCO-Stuff, ADE20K; no background suites, no Cityscapes), so the row follows the successors' tables, which
    # evaluate MaskCLIP in SCLIP's framework: SCLIP's configs and arithmetic, MaskCLIP's own last block.
    method(
        "maskclip",
        title="MaskCLIP (Zhou et al., ECCV 2022), no key smoothing / prompt denoising",
        configs="sclip",
        source="the successors' tables: SCLIP's configs and segmentor arithmetic with MaskCLIP's last block "
        "(chongzhou96/MaskCLIP's own configs cover 4 of the 8 suites)",
        inference={"attention": "maskclip", **REFERENCE_ARITHMETIC},
        labeler_options=REFERENCE_TEMPLATES,
        published_average=30.3,
    ),
    method(
        "maskclip-kspd",
        title="MaskCLIP with key smoothing and prompt denoising",
        configs="sclip",
        source="SCLIP's configs; MaskCLIP's refinements on (our window merging: they need per-window probabilities)",
        inference={"attention": "maskclip", "key_smoothing": True, "prompt_denoising": True},
    ),
    method(
        "sclip",
        title="SCLIP (Wang et al., ECCV 2024)",
        configs="sclip",
        source="wangf3014/SCLIP clip_segmentor.py and configs/cfg_*.py (VOC21: logit scale 65, area_thd 0.1)",
        inference={"attention": "sclip", **REFERENCE_ARITHMETIC},
        labeler_options=REFERENCE_TEMPLATES,
        published_average=38.2,
        per_suite=_SCLIP_OWN,
    ),
    method(
        "clearclip",
        title="ClearCLIP (Lan et al., ECCV 2024)",
        configs="clearclip",
        source="mc-lan/ClearCLIP clearclip_segmentor.py and configs/cfg_*.py (448 windows, stride 224, logit scale "
        "50, background the one word 'background'; its model_type 'ClearCLIP', the paper's q-q attention)",
        inference={"attention": "clearclip", **REFERENCE_ARITHMETIC, "partial_patches": "pad_centred"},
        labeler_options=REFERENCE_TEMPLATES,
        published_average=38.1,
    ),
    method(
        "naclip",
        title="NACLIP (Hajimiri et al., WACV 2025), without PAMR",
        configs="naclip",
        source="sinahmr/NACLIP naclip.py and configs/cfg_*.py (VOC whole image, PAMR off)",
        inference={"attention": "naclip", **REFERENCE_ARITHMETIC},
        labeler_options=REFERENCE_TEMPLATES,
        published_average=39.4,
    ),
    method(
        "naclip-pamr",
        title="NACLIP with PAMR (10 iterations, dilations 8 and 16), its repository's default",
        configs="naclip",
        source="sinahmr/NACLIP as above, PAMR on: once on the whole image at its original size, on the averaged logits",
        inference={"attention": "naclip", **REFERENCE_ARITHMETIC, "pamr": True, "pamr_iterations": 10},
        labeler_options=REFERENCE_TEMPLATES,
    ),
    # The proxy's attention replaces the last block's, so the attention mode stays at CLIP's value path.
    method(
        "proxyclip",
        title="ProxyCLIP (Lan et al., ECCV 2024), DINO ViT-B/8 proxy",
        configs="proxyclip",
        source="mc-lan/ProxyCLIP proxyclip_segmentor.py and configs/cfg_*.py (336 windows, stride 112, beta 1.2, "
        "gamma 3)",
        inference={"attention": "maskclip", **REFERENCE_ARITHMETIC, "partial_patches": "pad_centred", "pad_to": 56},
        published_average=42.3,
        labeler_options={"proxy": "dino_vitb8", **REFERENCE_TEMPLATES},
    ),
    # Trident's windows, splicing and SAM aggregation are its own labeler (teacher/trident.py); its base config
    # leaves SAM's mask-decoder refinement off.
    method(
        "trident",
        title="Trident (Shi et al., ICCV 2025): CLIP ViT-B/16, DINO ViT-B/16 proxy, SAM ViT-B affinity",
        configs="trident",
        source="YuHengsss/Trident trident.py and configs/cfg_*.py (336 windows, stride 224, beta 1.2, gamma 3, "
        "cos_fac 1.2, sam_refinement off)",
        inference={"attention": "maskclip", **NO_REFINEMENTS, "resize": "opencv", "position_resize": "scale_factor"},
        published_average=45.8,
        labeler_options={"proxy": "vit_base_patch16_224.dino", "sam": "vit_b", **REFERENCE_TEMPLATES},
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


def _with_global_block(inference: Mapping[str, Any]) -> dict[str, Any]:
    """``inference`` with the global block on; windows it cannot place (padded centred) are floored instead,
    which changes nothing where a window is a whole crop (as on the eight suites' images)."""
    fields = {**inference, "global_block": True}
    if fields.get("partial_patches") == "pad_centred":
        fields["partial_patches"] = "floor"
        fields.pop("pad_to", None)
    return fields


# The global final block (teacher/global_block.py, OV-Stitcher's idea) on each method whose last block it runs
# over the whole image: the method's own protocol with global_block on (no published figure: not OV-Stitcher).
_GLOBAL_BLOCK = tuple(
    replace(
        p,
        name=f"{p.name}-global",
        title=f"{p.title}, with a global final block",
        inference=_with_global_block(p.inference),
        published_average=None,
    )
    for p in _PROTOCOLS
    if p.name in ("maskclip", "sclip", "clearclip", "naclip", "proxyclip")
)

METHODS: dict[str, MethodProtocol] = {p.name: p for p in (*_PROTOCOLS, *_GLOBAL_BLOCK)}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> MethodProtocol:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}") from None
