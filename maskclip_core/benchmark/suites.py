"""The eight training-free segmentation benchmarks: on-disk layouts (mmsegmentation's), label conventions
and class tables.

Layouts follow mmsegmentation's dataset preparation guide (``data/VOCdevkit/VOC2012``, ``data/VOCdevkit/VOC2010``,
``data/coco_stuff164k``, ``data/cityscapes``, ``data/ade/ADEChallengeData2016``); COCO-Object is the
``*_instanceTrainIds.png`` conversion of COCO-Stuff164k that SCLIP / ClearCLIP / NACLIP / ProxyCLIP ship
(``datasets/cvt_coco_object.py``: 0 background, 1..80 the things, stuff and unlabeled pixels background).

Class tables are the successors' query lists (their ``configs/cls_*.txt``): one row per ground-truth class,
synonyms after ``;``. Two variants exist where the repositories differ: ``sclip`` (SCLIP, NACLIP, and the
MaskCLIP rows of their tables) and ``proxyclip`` (ClearCLIP, ProxyCLIP: plain ``person`` / ``tvmonitor`` and, for
COCO-Object, a shorter background list); ``clearclip`` is ``proxyclip`` with background queried by the single word
"background" everywhere (ClearCLIP's files). Background (VOC21, Context60, COCO-Object) is ground-truth id 0; it is
queried by a list of scene words (VOC21, COCO-Object) or by the word "background" (Context60), and it is our
vocabulary's ``background`` class, which the labeler puts last (see :func:`label_lookup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from maskclip_core.types import IGNORE_INDEX

NameSet = Literal["sclip", "proxyclip", "clearclip"]
NAME_SETS: tuple[str, ...] = ("sclip", "proxyclip", "clearclip")


def _table(text: str) -> tuple[tuple[str, ...], ...]:
    """Classes separated by newlines or ``|``, synonyms by ``;`` -> one tuple of queries per class."""
    rows = (item for line in text.strip().splitlines() for item in line.split("|"))
    return tuple(tuple(q.strip() for q in row.split(";") if q.strip()) for row in rows if row.strip())


# --- class tables (successors' configs/cls_*.txt) ----------------------------------------------------------

VOC_BACKGROUND = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed", "building",
    "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair", "floor", "hill", "rail",
    "fence",
)  # fmt: skip
# ProxyCLIP's / ClearCLIP's COCO-Object background: the VOC list without the indoor words.
COCO_OBJECT_BACKGROUND_PROXYCLIP = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed", "building",
    "cloud", "floor", "hill", "rail",
)  # fmt: skip
CONTEXT_BACKGROUND = ("background",)

PERSON_SYNONYMS = (
    "person", "person in shirt", "person in jeans", "person in dress", "person in sweater", "person in skirt",
    "person in jacket",
)  # fmt: skip

VOC = _table(
    """
aeroplane | bicycle | bird | ship | bottle | bus | car | cat | chair | cow | table | dog | horse | motorbike
person; person in shirt; person in jeans; person in dress; person in sweater; person in skirt; person in jacket
pottedplant | sheep | sofa | train
television monitor; tv monitor; monitor; television; screen
"""
)
VOC_PROXYCLIP = _table(
    """
aeroplane | bicycle | bird | ship | bottle | bus | car | cat | chair | cow | table | dog | horse | motorbike
person | pottedplant | sheep | sofa | train | tvmonitor
"""
)

CONTEXT59 = _table(
    """
aeroplane | bag | bed | bedclothes | bench | bicycle | bird | boat | book | bottle | building | bus | cabinet
car | cat | ceiling | chair | cloth | computer | cow | cup | curtain | dog | door | fence | floor | flower
food | grass | ground | horse | keyboard | light | motorbike | mountain | mouse | person | plate | platform
pottedplant | road | rock | sheep | shelves | sidewalk | sign | sky | snow | sofa | table | track | train
tree | truck | tvmonitor | wall | water | window | wood
"""
)
COCO_OBJECT = _table(
    """
person; person in shirt; person in jeans; person in dress; person in sweater; person in skirt; person in jacket; body
bicycle | car | motorcycle | airplane | bus | train | truck | boat | traffic light | fire hydrant | stop sign
parking meter | bench | bird | cat | dog | horse | sheep | cow | elephant | bear | zebra | giraffe | backpack
umbrella | handbag | tie | suitcase | frisbee | skis | snowboard | sports ball | kite | baseball bat
baseball glove | skateboard | surfboard | tennis racket | bottle | wine glass | cup | fork | knife | spoon
bowl | banana | apple | sandwich | orange | broccoli | carrot | hot dog | pizza | donut | cake | chair | couch
potted plant | bed | dining table | toilet | tv | laptop | mouse | remote | keyboard | cell phone | microwave
oven | toaster | sink | refrigerator | book | clock | vase | scissors | teddy bear | hair drier | toothbrush
"""
)
COCO_STUFF = _table(
    """
person | bicycle | car | motorcycle | airplane | bus | train | truck | boat | trafficlight | firehydrant
stopsign | parkingmeter | bench | bird | cat | dog | horse | sheep | cow | elephant | bear | zebra | giraffe
backpack | umbrella | handbag | tie | suitcase | frisbee | skis | snowboard | sportsball | kite | baseballbat
baseballglove | skateboard | surfboard | tennisracket | bottle | wineglass | cup | fork | knife | spoon | bowl
banana | apple | sandwich | orange | broccoli | carrot | hotdog | pizza | donut | cake | chair | couch
pottedplant | bed | diningtable | toilet | tv | laptop | mouse | remote | keyboard | cellphone | microwave
oven | toaster | sink | refrigerator | book | clock | vase | scissors | teddybear | hairdrier | toothbrush
banner | blanket | branch | bridge | building-other | bush | cabinet | cage | cardboard | carpet
ceiling-other | ceiling-tile | cloth | clothes | clouds | counter | cupboard | curtain | desk-stuff | dirt
door-stuff | fence | floor-marble | floor-other | floor-stone | floor-tile | floor-wood | flower | fog
food-other | fruit | furniture-other | grass | gravel | ground-other | hill | house | leaves | light | mat
metal | mirror-stuff | moss | mountain | mud | napkin | net | paper | pavement | pillow | plant-other
plastic | platform | playingfield | railing | railroad | river | road | rock | roof | rug | salad | sand | sea
shelf | sky-other | skyscraper | snow | solid-other | stairs | stone | straw | structural-other | table | tent
textile-other | towel | tree | vegetable | wall-brick | wall-concrete | wall-other | wall-panel | wall-stone
wall-tile | wall-wood | water-other | waterdrops | window-blind | window-other | wood
"""
)
CITYSCAPES = _table(
    """
road | sidewalk | building | wall | fence | pole | trafficlight | trafficsign | vegetation | terrain | sky
person | rider | car | truck | bus | train | motorcycle | bicycle
"""
)
ADE20K = _table(
    """
wall | building | sky | floor | tree | ceiling | road | bed | windowpane | grass | cabinet | sidewalk | person
earth | door | table | mountain | plant | curtain | chair | car | water | painting | sofa | shelf | house
sea | mirror | rug | field | armchair | seat | fence | desk | rock | wardrobe | lamp | bathtub | railing
cushion | base | box | column | signboard | chestofdrawers | counter | sand | sink | skyscraper | fireplace
refrigerator | grandstand | path | stairs | runway | case | pooltable | pillow | screendoor | stairway | river
bridge | bookcase | blind | coffeetable | toilet | flower | book | hill | bench | countertop | stove | palm
kitchenisland | computer | swivelchair | boat | bar | arcademachine | hovel | bus | towel | light | truck
tower | chandelier | awning | streetlight | booth | televisionreceiver | airplane | dirttrack | apparel | pole
land | bannister | escalator | ottoman | bottle | buffet | poster | stage | van | ship | fountain
conveyerbelt | canopy | washer | plaything | swimmingpool | stool | barrel | basket | waterfall | tent | bag
minibike | cradle | oven | ball | food | step | tank | tradename | microwave | pot | animal | bicycle | lake
dishwasher | screen | blanket | sculpture | hood | sconce | vase | trafficlight | tray | ashcan | fan | pier
crtscreen | plate | monitor | bulletinboard | shower | radiator | glass | clock | flag
"""
)

COCO_OBJECT_PROXYCLIP = (("person",), *COCO_OBJECT[1:])


# --- suites ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSuite:
    """One benchmark: where its validation images and label maps are, and what the label values mean.

    ``classes`` and ``proxyclip_classes`` hold the queries of each foreground ground-truth class in id order
    (after ``reduce_zero_label``); ``background`` the queries of ground-truth id 0 where the suite has a
    background class.
    """

    name: str
    title: str
    folder: str  # the dataset's folder under an mmseg data root
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_file: str | None  # image stems, one a line; None: every image under image_dir (recursively)
    reduce_zero_label: bool  # label 0 is "unlabeled": 0 -> ignore, k -> k - 1
    classes: tuple[tuple[str, ...], ...]
    background: tuple[str, ...] | None = None
    proxyclip_classes: tuple[tuple[str, ...], ...] | None = None
    proxyclip_background: tuple[str, ...] | None = None
    other_folders: tuple[str, ...] = ()  # other usual folder names under a data root
    official_images: int = 0  # images of the official validation split (a half-extracted folder has fewer)

    @property
    def has_background(self) -> bool:
        return self.background is not None

    @property
    def num_classes(self) -> int:
        """Ground-truth classes scored (background included)."""
        return len(self.classes) + self.has_background

    @property
    def background_id(self) -> int | None:
        return 0 if self.has_background else None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each ground-truth id: the first query of its row."""
        names = tuple(q[0] for q in self.classes)
        return ("background", *names) if self.has_background else names

    def queries(self, names: NameSet = "sclip") -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...] | None]:
        """(foreground queries per class, background queries or None) of a name set."""
        if names not in NAME_SETS:
            raise ValueError(f"unknown class-name set {names!r}; known: {', '.join(NAME_SETS)}")
        if names == "proxyclip":
            return self.proxyclip_classes or self.classes, self.proxyclip_background or self.background
        if names == "clearclip":  # ProxyCLIP's tables; background is the one word "background" (its cls_*.txt)
            return self.proxyclip_classes or self.classes, CONTEXT_BACKGROUND if self.has_background else None
        return self.classes, self.background

    def vocabulary_fields(self, names: NameSet = "sclip") -> dict[str, str | None]:
        """``classes`` / ``background`` strings for a ``LabelerConfig`` (class i = foreground class i)."""
        classes, background = self.queries(names)
        return {
            "classes": ", ".join("; ".join(q) for q in classes),
            "background": ", ".join(background) if background else None,
        }


SUITES: dict[str, BenchmarkSuite] = {
    s.name: s
    for s in (
        BenchmarkSuite(
            "voc21", "PASCAL VOC 2012 val, 20 classes + background", "VOCdevkit/VOC2012", "JPEGImages",
            "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/val.txt", False, VOC, VOC_BACKGROUND,
            VOC_PROXYCLIP,
            official_images=1449,
        ),
        BenchmarkSuite(
            "voc20", "PASCAL VOC 2012 val, 20 classes (background ignored)", "VOCdevkit/VOC2012", "JPEGImages",
            "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/val.txt", True, VOC, None, VOC_PROXYCLIP,
            official_images=1449,
        ),
        BenchmarkSuite(
            "context60", "PASCAL Context val, 59 classes + background", "VOCdevkit/VOC2010", "JPEGImages",
            "SegmentationClassContext", ".jpg", ".png", "ImageSets/SegmentationContext/val.txt", False, CONTEXT59,
            CONTEXT_BACKGROUND,
            official_images=5105,
        ),
        BenchmarkSuite(
            "context59", "PASCAL Context val, 59 classes (background ignored)", "VOCdevkit/VOC2010", "JPEGImages",
            "SegmentationClassContext", ".jpg", ".png", "ImageSets/SegmentationContext/val.txt", True, CONTEXT59,
            official_images=5105,
        ),
        BenchmarkSuite(
            "coco-object", "COCO-Object val2017, 80 things + background", "coco_stuff164k", "images/val2017",
            "annotations/val2017", ".jpg", "_instanceTrainIds.png", None, False, COCO_OBJECT, VOC_BACKGROUND,
            COCO_OBJECT_PROXYCLIP, COCO_OBJECT_BACKGROUND_PROXYCLIP,
            ("coco_object",),  # NACLIP's README converts into a folder of its own
            official_images=5000,
        ),
        BenchmarkSuite(
            "coco-stuff", "COCO-Stuff164k val2017, 171 classes", "coco_stuff164k", "images/val2017",
            "annotations/val2017", ".jpg", "_labelTrainIds.png", None, False, COCO_STUFF,
            official_images=5000,
        ),
        BenchmarkSuite(
            "cityscapes", "Cityscapes val, 19 classes", "cityscapes", "leftImg8bit/val", "gtFine/val",
            "_leftImg8bit.png", "_gtFine_labelTrainIds.png", None, False, CITYSCAPES,
            official_images=500,
        ),
        BenchmarkSuite(
            "ade20k", "ADE20K val, 150 classes", "ade/ADEChallengeData2016", "images/validation",
            "annotations/validation", ".jpg", ".png", None, True, ADE20K,
            official_images=2000,
        ),
    )
}  # fmt: skip
SUITE_NAMES: tuple[str, ...] = tuple(SUITES)


def get_suite(name: str) -> BenchmarkSuite:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown benchmark suite {name!r}; known: {', '.join(SUITE_NAMES)}") from None


# --- files -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One validation image and its label map."""

    name: str  # path of the image under image_dir, without the suffix
    image: Path
    label: Path


def dataset_dir(suite: BenchmarkSuite, root: str | Path) -> Path:
    """The suite's dataset folder from ``root``: the folder itself (it holds ``image_dir``) or an mmseg data
    root holding ``suite.folder`` (``data/`` -> ``data/VOCdevkit/VOC2012``)."""
    root = Path(root).expanduser()
    for candidate in (root, root / suite.folder, *(root / f for f in suite.other_folders)):
        if (candidate / suite.image_dir).is_dir():
            return candidate
    raise FileNotFoundError(
        f"{suite.name}: no {suite.image_dir}/ under {root} or {root / suite.folder} "
        f"(expected mmsegmentation's layout: {suite.folder}/{suite.image_dir}, {suite.folder}/{suite.label_dir})"
    )


MISSING_LISTED = 20


@dataclass(frozen=True)
class SplitCheck:
    """What a suite's folder holds against its official validation split, read before any image is labeled.

    ``listed`` counts the split's images before any limit (the split file's lines; else the images found);
    ``missing`` names the entries, within the limit, whose image or label map is absent. A ``limit`` run scores
    the first images only, so the count is not compared then.
    """

    suite: BenchmarkSuite
    folder: Path
    samples: tuple[Sample, ...]  # the samples to score: image and label map present, within the limit
    listed: int
    missing: tuple[str, ...]
    limit: int | None = None

    @property
    def count_checked(self) -> bool:
        return self.limit is None

    @property
    def complete(self) -> bool:
        """The official split, whole (or, under a limit, its first images, all present)."""
        return not self.missing and (not self.count_checked or self.listed == self.suite.official_images)

    def problem(self) -> str | None:
        """One line saying what is wrong with the split, or None."""
        parts = []
        if self.count_checked and self.listed != self.suite.official_images:
            source = self.suite.split_file or f"{self.suite.image_dir}/"
            parts.append(
                f"{self.listed} images in {self.folder / source}, the official val split has "
                f"{self.suite.official_images} (half extracted?)"
            )
        if self.missing:
            parts.append(f"{len(self.missing)} of {len(self.samples) + len(self.missing)} missing: {self.missing[0]}")
        return f"{self.suite.name}: {'; '.join(parts)}" if parts else None

    def to_dict(self) -> dict[str, object]:
        return {
            "official_images": self.suite.official_images,
            "listed_images": self.listed,
            "count_checked": self.count_checked,
            "missing": len(self.missing),
            "missing_examples": list(self.missing[:MISSING_LISTED]),
            "complete": self.complete,
        }


def check_split(suite: BenchmarkSuite, root: str | Path, limit: int | None = None) -> SplitCheck:
    """The suite's validation samples in a stable order (the split file's, else sorted paths), at most
    ``limit``, checked against the official split: its size, and every image and label map present. Layout
    errors (no such folder, no split file, no images at all) raise."""
    base = dataset_dir(suite, root)
    images, labels = base / suite.image_dir, base / suite.label_dir
    if suite.split_file is not None:
        split = base / suite.split_file
        if not split.is_file():
            raise FileNotFoundError(f"{suite.name}: split file {split} not found")
        names = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    else:
        found = sorted(p.relative_to(images).as_posix() for p in images.rglob(f"*{suite.image_suffix}"))
        names = [n[: -len(suite.image_suffix)] for n in found]
    if not names:
        raise FileNotFoundError(f"{suite.name}: no *{suite.image_suffix} images in {images}")
    listed = len(names)
    samples, missing = [], []
    for n in names[:limit] if limit is not None else names:
        sample = Sample(n, images / f"{n}{suite.image_suffix}", labels / f"{n}{suite.label_suffix}")
        absent = [path for path in (sample.image, sample.label) if not path.is_file()]
        if absent:
            missing.append(f"{n} (no {absent[0]})")
        else:
            samples.append(sample)
    return SplitCheck(suite, base, tuple(samples), listed, tuple(missing), limit)


def list_samples(suite: BenchmarkSuite, root: str | Path, limit: int | None = None) -> list[Sample]:
    """The suite's samples (see :func:`check_split`); an entry whose image or label map is absent is a clear
    error, not a silently smaller set. The split's size is not compared here."""
    check = check_split(suite, root, limit)
    if check.missing:
        n = len(check.samples) + len(check.missing)
        raise FileNotFoundError(
            f"{suite.name}: {len(check.missing)} of {n} images or label maps missing, e.g. {check.missing[0]}"
        )
    return list(check.samples)


def load_label_map(path: str | Path, suite: BenchmarkSuite) -> np.ndarray:
    """Ground-truth ids [H, W] uint8 (255 ignore), ``reduce_zero_label`` applied as mmseg does.

    Palette PNGs (VOC, Context) hold the ids as palette indices and are read as such, never converted.
    """
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path}: label map of mode {im.mode}; expected single-channel class ids (L or P)")
        labels = np.array(im, dtype=np.uint8)
    if suite.reduce_zero_label:
        # 0 -> 255 (ignore), k -> k - 1, 255 stays 255 (uint8 wrap-around does it: 0 - 1 = 255).
        labels = labels - np.uint8(1)
        labels[labels == 254] = IGNORE_INDEX
    # Other values mean the file is not the suite's conversion (raw COCO ids, Cityscapes labelIds instead of
    # trainIds...). mmseg would drop them from the ground truth and count the predictions there as false
    # positives, silently; the file is refused instead, with the values named.
    stray = np.unique(labels[(labels >= suite.num_classes) & (labels != IGNORE_INDEX)])
    if stray.size:
        shown = ", ".join(map(str, stray[:8].tolist())) + (", ..." if stray.size > 8 else "")
        raise ValueError(
            f"{Path(path).name}: label values {shown} are outside the suite's ids 0..{suite.num_classes - 1} and "
            f"{IGNORE_INDEX} (ignore){' after reduce_zero_label' if suite.reduce_zero_label else ''}: not the "
            f"{suite.label_suffix} conversion mmsegmentation's dataset guide describes"
        )
    return labels


def save_prediction(path: Path, ids: np.ndarray) -> None:
    """Ground-truth ids [H, W] as a single-channel 8-bit PNG at ``path``, written atomically."""
    import io

    from maskclip_core.storage.fs import atomic_write_bytes

    data = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8)).save(data, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(path), data.getvalue())


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3]. The stored pixels are used as they are (the label maps are drawn on them); only
    when they do not match the label map's ``size`` (H, W) and the EXIF-rotated image does is it rotated."""
    from PIL import ImageOps

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if size is not None and (rgb.height, rgb.width) != tuple(size):
            rotated = ImageOps.exif_transpose(im).convert("RGB")
            if (rotated.height, rotated.width) == tuple(size):
                rgb = rotated
        return np.array(rgb)  # writable: torch.from_numpy warns on read-only arrays


def label_lookup(suite: BenchmarkSuite) -> np.ndarray:
    """Labeler class index -> ground-truth id. The labeler's classes are the foreground classes in id order
    and, for a suite with background, our vocabulary's background class last (ground-truth id 0)."""
    if suite.has_background:
        return np.array([*range(1, suite.num_classes), 0], dtype=np.uint8)
    return np.arange(suite.num_classes, dtype=np.uint8)


def to_ground_truth_ids(
    suite: BenchmarkSuite, labels: np.ndarray, confidence: np.ndarray | None = None, prob_threshold: float = 0.0
) -> np.ndarray:
    """A labeler's label map as ground-truth ids; on a suite with background, pixels whose probability is
    below ``prob_threshold`` become background (the successors' ``prob_thd``)."""
    lookup = label_lookup(suite)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(lookup):
        raise ValueError(f"{suite.name}: labels outside 0..{len(lookup) - 1}")
    ids = lookup[labels]
    if suite.has_background and prob_threshold > 0 and confidence is not None:
        ids[confidence < prob_threshold] = suite.background_id
    return ids


def expected_class_names(suite: BenchmarkSuite, names: NameSet = "sclip") -> tuple[str, ...]:
    """The class names a labeler built from :meth:`BenchmarkSuite.vocabulary_fields` reports, in order."""
    classes, background = suite.queries(names)
    return tuple(q[0] for q in classes) + (("background",) if background else ())


def parse_suites(text: str | Sequence[str]) -> list[str]:
    """``"voc21,ade20k"`` / ``["voc21", "ade20k"]`` / ``"all"`` -> suite names (validated, order kept)."""
    items = text.split(",") if isinstance(text, str) else [i for t in text for i in t.split(",")]
    names = [i.strip() for i in items if i.strip()]
    if names == ["all"]:
        return list(SUITE_NAMES)
    for n in names:
        get_suite(n)
    return list(dict.fromkeys(names))
