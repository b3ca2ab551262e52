"""Tiny benchmark datasets written in each suite's on-disk layout, and a labeler whose predictions are planted.

``write_sample`` puts an image and its label map where mmsegmentation expects them (and the split file's line
for the PASCAL suites); ``PlantedLabeler`` returns, for each image it is given, the label / confidence maps
registered for that image's decoded pixels, so a test knows every prediction and can compute the score by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from maskclip_core.benchmark.suites import BenchmarkSuite, load_image
from maskclip_core.types import SegmentationResult

# VOC's colour map for the first ids (palette PNGs store ids as indices; the colours are only for viewers).
_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [64, 64, 64] * 252


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class PlantedLabeler:
    """A ``Labeler`` that answers each image with the prediction planted for its pixels (class names)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        self._planted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.calls = 0

    def plant(self, image: np.ndarray, names: np.ndarray, confidence: np.ndarray | None = None) -> None:
        """``names``: [H, W] array of class names; ``confidence`` defaults to 0.9 everywhere."""
        index = {n: i for i, n in enumerate(self.class_names)}
        labels = np.vectorize(index.__getitem__, otypes=[np.int64])(names)
        conf = np.full(labels.shape, 0.9, np.float32) if confidence is None else confidence.astype(np.float32)
        self._planted[_key(image)] = (labels, conf)

    def label(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        out = []
        for image in images:
            self.calls += 1
            labels, conf = self._planted[_key(image)]
            k = len(self.class_names)
            out.append(SegmentationResult(labels, conf, np.zeros(k, np.float32), np.zeros(k, bool), self.class_names))
        return out

    def config(self) -> dict:
        return {"labeler": "planted"}


def write_sample(
    root: Path, suite: BenchmarkSuite, name: str, stored: np.ndarray, *, seed: int = 0, palette: bool | None = None
) -> np.ndarray:
    """Write ``name``'s image (noise) and label map (``stored``: the raw values on disk) under ``root`` (the
    suite's dataset folder); append ``name`` to the split file if the suite has one. Returns the image as the
    benchmark decodes it (JPEG suites are lossy), for :meth:`PlantedLabeler.plant`."""
    rng = np.random.default_rng(seed)
    image_path = root / suite.image_dir / f"{name}{suite.image_suffix}"
    label_path = root / suite.label_dir / f"{name}{suite.label_suffix}"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*stored.shape, 3), dtype=np.uint8)).save(image_path)
    if palette if palette is not None else suite.label_dir.startswith("SegmentationClass"):
        label = Image.new("P", (stored.shape[1], stored.shape[0]))
        label.putpalette(_PALETTE)
        label.putdata(stored.reshape(-1).tolist())  # the ids as palette indices, as VOC / Context store them
    else:
        label = Image.fromarray(stored.astype(np.uint8))
    label.save(label_path)
    if suite.split_file is not None:
        split = root / suite.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        with split.open("a") as f:
            f.write(f"{name}\n")
    return load_image(image_path)


def write_coco_sample_layout(sample: Path, data_root: Path, limit: int) -> list[str]:
    """The shared COCO sample's first ``limit`` val images as mmseg's ``coco_stuff164k`` folder under
    ``data_root``: images linked into ``images/val2017``, label maps written as COCO-Object
    (``*_instanceTrainIds.png``: 0 background, thing k -> its rank among the 80 thing ids + 1, stuff and
    unlabeled -> 0, as the successors' converter does) and COCO-Stuff (``*_labelTrainIds.png``: things their
    rank 0..79, stuff classes whose panoptic name is a COCO-Stuff name their train id, merged panoptic stuff
    and unlabeled -> 255). Returns the image stems."""
    from maskclip_core.benchmark.suites import COCO_STUFF

    categories = [line.split("\t") for line in (sample / "categories.tsv").read_text().splitlines()[1:]]
    things = sorted(int(c[0]) for c in categories if c[2].strip() == "1")
    stuff_ids = {name: i for i, (name, *_) in enumerate(COCO_STUFF)}
    to_object = np.zeros(256, np.uint8)  # unlabeled (0) and stuff -> background
    to_stuff = np.full(256, 255, np.uint8)
    for rank, cid in enumerate(things):
        to_object[cid] = rank + 1
        to_stuff[cid] = rank
    for cid, name, isthing in categories:
        if isthing.strip() == "0" and name in stuff_ids:
            to_stuff[int(cid)] = stuff_ids[name]
    base = data_root / "coco_stuff164k"
    (base / "images/val2017").mkdir(parents=True, exist_ok=True)
    (base / "annotations/val2017").mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in (sample / "val/images").glob("*.jpg"))[:limit]
    for stem in stems:
        (base / "images/val2017" / f"{stem}.jpg").symlink_to((sample / "val/images" / f"{stem}.jpg").resolve())
        panoptic = np.asarray(Image.open(sample / "val/masks-coco" / f"{stem}.png"))
        Image.fromarray(to_object[panoptic]).save(base / "annotations/val2017" / f"{stem}_instanceTrainIds.png")
        Image.fromarray(to_stuff[panoptic]).save(base / "annotations/val2017" / f"{stem}_labelTrainIds.png")
    return stems
