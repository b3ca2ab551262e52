"""Ground truth for scoring the teacher's pseudo-labels and the student: human masks matched to dataset images.

Two forms:

- a COCO instances JSON (RLE or polygons, e.g. ``coco-sample/val/annotations.json``), its images matched to
  the dataset's by image id (a file from our own export) or by ``file_name`` relative to a root folder
  (default: the folder holding every image of the dataset), falling back to a unique base name;
- a folder of single-channel PNG masks, one per image at the image's relative path with a ``.png``
  extension (or its unique base name), with a class map (JSON or TSV) from mask values to class names.
  Without a class map the mask values are the training class indices themselves (255 = ignore).

Ground-truth classes are matched to the training classes by name (case, ``_`` / ``-`` and spacing aside),
including the classes' synonyms, or through explicit ``class_aliases``. Pixels of unmatched ground-truth
classes are not scored, and only training classes some ground-truth class maps to enter the mIoU (a class
the ground truth has no name for would otherwise score 0 however right the model is).
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from maskclip_core.dataset.reader import relative_file_name
from maskclip_core.interchange.coco import load_coco_annotations
from maskclip_core.segmentation_metrics import SegmentationMetrics
from maskclip_core.storage.fs import iter_source_files, read_bytes
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.types import IGNORE_INDEX


class GroundTruthParameters(BaseModel):
    """Where the human masks are and how they line up with the dataset (a flow parameter)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="A COCO instances JSON file, or a folder of PNG masks (one per image)")
    format: Literal["auto", "coco", "masks"] = Field(
        "auto", description="auto: a URL ending in .json is COCO, anything else a folder of masks"
    )
    class_map: str | None = Field(
        None,
        description="Masks: JSON ({value: name}, {name: value} or a list of names) or TSV (value, name, ...) "
        "mapping mask values to class names; none: mask values are the training class indices",
    )
    root: str | None = Field(
        None,
        description="Image URIs relative to this folder are the COCO file_name / the masks' paths "
        "(default: the folder holding every image of the dataset)",
    )
    match: Literal["auto", "image_id", "file_name"] = Field(
        "auto", description="COCO: match images by our image id or by file name (auto: ids when any match)"
    )
    class_aliases: dict[str, str] = Field(
        default_factory=dict, description="Ground-truth class name -> training class name, where names differ"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options to read it")

    @property
    def kind(self) -> Literal["coco", "masks"]:
        if self.format != "auto":
            return self.format
        return "coco" if self.url.lower().rstrip("/").endswith(".json") else "masks"


@dataclass(frozen=True)
class GroundTruthRef:
    """A dataset image the ground truth covers (the minimum :class:`ImageRef` fields)."""

    image_id: int
    uri: str
    height: int
    width: int


@dataclass
class GroundTruth:
    """Targets (uint8 class-index maps, 255 = not scored) for the dataset images the ground truth covers."""

    refs: list[Any]  # the dataset's image records (ImageRef or GroundTruthRef), sorted by uri
    class_names: tuple[str, ...]
    evaluated: tuple[str, ...]  # training classes some ground-truth class maps to
    unmatched: tuple[str, ...]  # ground-truth class names that map to no training class
    _loaders: list[Callable[[], np.ndarray]]

    def __len__(self) -> int:
        return len(self.refs)

    def target(self, index: int) -> np.ndarray:
        target = self._loaders[index]()
        ref = self.refs[index]
        if target.shape != (ref.height, ref.width):
            raise ValueError(f"ground truth of {ref.uri} is {target.shape}, the image {(ref.height, ref.width)}")
        return target

    def pairs(self, images: Sequence[np.ndarray]) -> EvalPairs:
        """(image, target) pairs for ``fit_student(eval_pairs=...)``; ``images`` in the order of ``refs``."""
        return EvalPairs(images, self)

    def summary(self, metrics: SegmentationMetrics) -> dict[str, Any]:
        return restrict_summary(metrics.summary(), self.evaluated)


class EvalPairs(Sequence[tuple[np.ndarray, np.ndarray]]):
    """Lazy (image, target) pairs: nothing is held between accesses."""

    def __init__(self, images: Sequence[np.ndarray], truth: GroundTruth) -> None:
        if len(images) != len(truth):
            raise ValueError(f"{len(images)} images for {len(truth)} ground-truth maps")
        self.images, self.truth = images, truth

    def __len__(self) -> int:
        return len(self.truth)

    @overload
    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.images[index], self.truth.target(index)


def restrict_summary(summary: Mapping[str, Any], evaluated: Sequence[str]) -> dict[str, Any]:
    """A metrics summary with ``per_class_iou`` cut to ``evaluated`` and the mIoU over those classes."""
    per_class = {name: summary["per_class_iou"].get(name) for name in evaluated}
    scored = [v for v in per_class.values() if v is not None]
    miou = float(np.mean(scored)) if scored else float("nan")
    return {**summary, "miou": miou, "per_class_iou": per_class}


def normalize_name(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def class_lookup(vocabulary: Vocabulary, aliases: Mapping[str, str] | None = None) -> dict[str, int]:
    """Normalised ground-truth name -> training class index: names, then synonyms that do not clash."""
    lookup = {normalize_name(name): i for i, name in enumerate(vocabulary.names)}
    seen: dict[str, set[int]] = {}
    for i, spec in enumerate(vocabulary.all_classes):
        for query in spec.queries:
            seen.setdefault(normalize_name(query), set()).add(i)
    for query, classes in seen.items():
        if query not in lookup and len(classes) == 1:
            lookup[query] = next(iter(classes))
    for gt_name, class_name in (aliases or {}).items():
        if class_name not in vocabulary.names:
            raise ValueError(f"class alias {gt_name!r} -> {class_name!r}: no such training class")
        lookup[normalize_name(gt_name)] = vocabulary.names.index(class_name)
    return lookup


def load_ground_truth(
    spec: GroundTruthParameters,
    refs: Sequence[Any],
    vocabulary: Vocabulary,
    *,
    default_root: str | None = None,
) -> GroundTruth:
    """The ground truth of the dataset images ``refs`` (records with image_id, uri, height, width).

    Images the ground truth does not cover are left out; none covered raises (a wrong root or folder).
    """
    lookup = class_lookup(vocabulary, spec.class_aliases)
    root = spec.root if spec.root is not None else default_root
    if spec.kind == "coco":
        matched, loaders, gt_names = _coco(spec, refs, lookup, root)
    else:
        matched, loaders, gt_names = _masks(spec, refs, lookup, root, vocabulary)
    if not matched:
        raise ValueError(
            f"ground truth {spec.url} matches none of the {len(refs)} dataset images "
            f"(root {root!r}, match {spec.match!r}): check the root folder or the file names"
        )
    order = sorted(range(len(matched)), key=lambda i: matched[i].uri)
    mapped = {lookup[normalize_name(n)] for n in gt_names if normalize_name(n) in lookup}
    return GroundTruth(
        refs=[matched[i] for i in order],
        class_names=vocabulary.names,
        evaluated=tuple(name for i, name in enumerate(vocabulary.names) if i in mapped),
        unmatched=tuple(sorted(n for n in gt_names if normalize_name(n) not in lookup)),
        _loaders=[loaders[i] for i in order],
    )


def _name_index(refs: Sequence[Any], root: str | None) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    by_name: dict[str, Any] = {}
    by_base: dict[str, list[Any]] = {}
    for ref in refs:
        name = relative_file_name(ref.uri, root)
        by_name[name] = ref
        by_base.setdefault(posixpath.basename(name), []).append(ref)
    return by_name, by_base


def _coco(
    spec: GroundTruthParameters, refs: Sequence[Any], lookup: Mapping[str, int], root: str | None
) -> tuple[list[Any], list[Callable[[], np.ndarray]], list[str]]:
    coco = load_coco_annotations(spec.url, storage_options=spec.storage_options, overlap="ignore")
    to_index = {
        int(c["id"]): lookup[normalize_name(c["name"])] for c in coco.categories if normalize_name(c["name"]) in lookup
    }
    coco.category_to_index = to_index
    ours = {ref.image_id: ref for ref in refs}
    by_id = spec.match == "image_id" or (
        spec.match == "auto" and any(int(image["id"]) in ours for image in coco.images)
    )
    by_name, by_base = _name_index(refs, root)
    matched, loaders = [], []
    for image in coco.images:
        if by_id:
            ref = ours.get(int(image["id"]))
        else:
            name = str(image.get("file_name", "")).replace("\\", "/")
            ref = by_name.get(name)
            if ref is None and len(by_base.get(posixpath.basename(name), [])) == 1:
                ref = by_base[posixpath.basename(name)][0]
        if ref is None:
            continue
        if (int(image["height"]), int(image["width"])) != (ref.height, ref.width):
            raise ValueError(
                f"COCO image {image.get('file_name')!r} is {image['height']}x{image['width']}, "
                f"the dataset's {ref.uri} is {ref.height}x{ref.width}"
            )
        matched.append(ref)
        loaders.append(_bind(coco.label_map, int(image["id"])))
    return matched, loaders, [str(c["name"]) for c in coco.categories]


def _masks(
    spec: GroundTruthParameters,
    refs: Sequence[Any],
    lookup: Mapping[str, int],
    root: str | None,
    vocabulary: Vocabulary,
) -> tuple[list[Any], list[Callable[[], np.ndarray]], list[str]]:
    if spec.class_map is not None:
        values = read_class_map(spec.class_map, spec.storage_options)
        gt_names = list(values.values())
        lut_size = max(max(values) + 1, 256)
        lut = np.full(lut_size, IGNORE_INDEX, dtype=np.uint8)
        for value, name in values.items():
            lut[value] = lookup.get(normalize_name(name), IGNORE_INDEX)
    else:  # mask values are class indices already
        gt_names = list(vocabulary.names)
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[: len(vocabulary)] = np.arange(len(vocabulary), dtype=np.uint8)
    masks: dict[str, str] = {}
    base = spec.url.rstrip("/")
    for f in iter_source_files(spec.url, extensions=[".png"], storage_options=spec.storage_options):
        rel = f.uri[len(base) :].lstrip("/") if f.uri.startswith(base) else posixpath.basename(f.uri)
        masks[posixpath.splitext(rel)[0]] = f.uri
    by_base: dict[str, list[str]] = {}
    for rel, uri in masks.items():
        by_base.setdefault(posixpath.basename(rel), []).append(uri)
    matched, loaders = [], []
    for ref in refs:
        stem = posixpath.splitext(relative_file_name(ref.uri, root))[0]
        uri = masks.get(stem)
        if uri is None and len(by_base.get(posixpath.basename(stem), [])) == 1:
            uri = by_base[posixpath.basename(stem)][0]
        if uri is None:
            continue
        matched.append(ref)
        loaders.append(_bind(_read_mask, uri, lut, spec.storage_options))
    return matched, loaders, gt_names


def _bind(fn: Callable[..., np.ndarray], *args: Any) -> Callable[[], np.ndarray]:
    return lambda: fn(*args)


def _read_mask(uri: str, lut: np.ndarray, storage_options: Mapping[str, Any]) -> np.ndarray:
    with Image.open(io.BytesIO(read_bytes(uri, storage_options))) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise ValueError(f"mask {uri} is {im.mode}: masks must be single-channel (values = classes)")
        values = np.asarray(im).astype(np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) >= len(lut):
        raise ValueError(f"mask {uri} has values outside the class map")
    return lut[values]


def read_class_map(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[int, str]:
    """Mask value -> class name from JSON (``{"0": "sky"}``, ``{"sky": 0}`` or ``["sky", ...]``) or TSV / CSV
    (``value<TAB>name[<TAB>...]`` per line; a header line is skipped)."""
    text = read_bytes(url, storage_options).decode("utf-8-sig")
    if url.lower().endswith(".json") or text.lstrip()[:1] in "[{":
        data = json.loads(text)
        if isinstance(data, list):
            out = {i: str(name) for i, name in enumerate(data) if name is not None}
        elif isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
            out = {int(v): str(k) for k, v in data.items()}
        elif isinstance(data, dict):
            out = {int(k): str(v) for k, v in data.items()}
        else:
            raise ValueError(f"class map {url}: expected a JSON object or list")
    else:
        out = {}
        sep = "\t" if "\t" in text else ","
        for line in text.splitlines():
            fields = [f.strip() for f in line.split(sep)]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if len(fields) < 2 or not fields[0].lstrip("-").isdigit():
                if out:
                    raise ValueError(f"class map {url}: bad line {line!r}")
                continue  # header
            out[int(fields[0])] = fields[1]
    if not out or min(out) < 0:
        raise ValueError(f"class map {url} maps no non-negative mask value to a class")
    return out
