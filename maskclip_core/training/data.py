"""Training data for the MaskCLIP+ student from a labeling run's Parquet dataset (no Prefect here).

- :class:`ImageReader`: images read lazily from their URIs (fsspec) and decoded with the project's
  ``decode_image``, checked against the SHA-256 they were labeled under, kept in an LRU cache bounded in bytes.
- :class:`DatasetSamples`: the student's ``SampleSource`` over the dataset: the teacher's pseudo-labels of one
  config hash (COCO RLE painted to uint8 maps, 255 where no annotation), where a human review exists the
  reviewed label map instead. Label maps are held zlib-compressed (a few percent of their size), images not at
  all: memory stays small whatever the dataset size.
- :func:`load_training_set`: the samples, the unlabeled pool of self-training (the labeled images, optionally
  the rejected ones too) and the reviewed samples, with a fingerprint of exactly what they hold.

Class indices are positions in the training vocabulary (the teacher's classes, in order): the dataset's category
ids are mapped to them by name, and reviewed maps (category *positions* in ``LabelDataset.categories()``) are
mapped through a lookup table; categories outside the vocabulary become ignore.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reviews import read_reviewed, reviewed_label_maps
from maskclip_core.labeling.decode import DEFAULT_MAX_PIXELS, decode_image
from maskclip_core.storage.fs import read_bytes, sha256_hex
from maskclip_core.student.data import Sample, compress_labels, decompress_labels
from maskclip_core.types import IGNORE_INDEX

DEFAULT_CACHE_BYTES = 512 * 2**20


class ImageChangedError(RuntimeError):
    """The file at an image's URI is no longer the image that was labeled (its SHA-256 differs)."""


@dataclass(frozen=True)
class ImageRef:
    """Where an image of the dataset is and what it must be (small; many of them are held)."""

    image_id: int
    uri: str
    sha256: str
    height: int
    width: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ImageRef:
        return cls(int(row["image_id"]), str(row["uri"]), str(row["sha256"]), int(row["height"]), int(row["width"]))


class ImageReader:
    """Decoded RGB uint8 images by URI with an LRU cache of at most ``cache_bytes`` of pixels (thread-safe).

    A cache smaller than one image still works: every access then reads and decodes again.
    """

    def __init__(
        self,
        storage_options: Mapping[str, Any] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        verify: bool = True,
    ) -> None:
        self.storage_options = dict(storage_options or {})
        self.cache_bytes = int(cache_bytes)
        self.max_pixels = max_pixels
        self.verify = verify
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.reads = 0

    def __getstate__(self) -> dict[str, Any]:  # picklable: without the lock and the cached pixels
        state = dict(self.__dict__)
        state.update(_cache=OrderedDict(), _cached_bytes=0, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def read(self, ref: ImageRef) -> np.ndarray:
        """The image of ``ref``; raises :class:`ImageChangedError` if the file changed. Cached arrays are shared:
        callers must not modify them in place."""
        with self._lock:
            hit = self._cache.get(ref.uri)
            if hit is not None:
                self._cache.move_to_end(ref.uri)
                self.hits += 1
                return hit
        data = read_bytes(ref.uri, self.storage_options)
        if self.verify and sha256_hex(data) != ref.sha256:
            raise ImageChangedError(
                f"{ref.uri} changed since it was labeled (sha256 {sha256_hex(data)[:12]}..., "
                f"labeled {ref.sha256[:12]}...): relabel the dataset before training on it"
            )
        rgb = decode_image(data, max_pixels=self.max_pixels).rgb
        del data
        if rgb.shape[:2] != (ref.height, ref.width):
            raise ImageChangedError(f"{ref.uri} decodes to {rgb.shape[:2]}, labeled at {(ref.height, ref.width)}")
        with self._lock:
            self.reads += 1
            if rgb.nbytes <= self.cache_bytes and ref.uri not in self._cache:
                self._cache[ref.uri] = rgb
                self._cached_bytes += rgb.nbytes
                while self._cached_bytes > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= old.nbytes
        return rgb


class LazyImages(Sequence[np.ndarray]):
    """The images of ``refs``, read through ``reader`` on access (slices give lists)."""

    def __init__(self, refs: Sequence[ImageRef], reader: ImageReader) -> None:
        self.refs = list(refs)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self.reader.read(ref) for ref in self.refs[index]]
        return self.reader.read(self.refs[index])


@dataclass(frozen=True)
class LabeledRef:
    """An image, its compressed label map and where the labels came from (``pseudo`` or ``reviewed``)."""

    ref: ImageRef
    labels: bytes = field(repr=False)
    origin: str  # "pseudo" | "reviewed"
    labeling_id: str | None = None  # the dataset labeling of a pseudo-label map
    import_id: str | None = None  # the review import of a reviewed map

    def label_map(self) -> np.ndarray:
        return decompress_labels(self.labels, self.ref.height, self.ref.width)


class DatasetSamples(Sequence[Sample]):
    """``SampleSource`` of (image, uint8 label map with 255 = ignore) over dataset images."""

    def __init__(self, items: Sequence[LabeledRef], reader: ImageReader) -> None:
        self.items = list(items)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        item = self.items[index]
        return Sample(self.reader.read(item.ref), item.label_map())


def category_index(
    categories: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> tuple[dict[int, int], np.ndarray]:
    """(category id -> class index for the vocabulary's classes, lookup table from category *position* in
    ``categories`` to class index, 255 for categories outside the vocabulary)."""
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    missing = [name for name in class_names if name not in by_name]
    if missing:
        raise ValueError(f"classes {missing} have no category in the dataset")
    id_to_index = {by_name[name]: i for i, name in enumerate(class_names)}
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for position, c in enumerate(categories[:IGNORE_INDEX]):
        lut[position] = id_to_index.get(int(c["id"]), IGNORE_INDEX)
    return id_to_index, lut


@dataclass
class TrainingSet:
    """What a student trains on; ``fingerprint`` changes whenever any of it does."""

    config_hash: str
    class_names: tuple[str, ...]
    samples: DatasetSamples  # round 0: pseudo-labels, reviewed maps in place of theirs
    pool: LazyImages  # relabelled by the student each self-training round (reviewed images left out)
    clean: DatasetSamples  # the reviewed samples, kept in every self-training round
    reader: ImageReader
    fingerprint: str
    counts: dict[str, int]


def load_training_set(
    dataset_url: str,
    config_hash: str,
    class_names: Sequence[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    image_storage_options: Mapping[str, Any] | None = None,
    use_reviewed: bool = True,
    pool_rejected: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    reader: ImageReader | None = None,
) -> TrainingSet:
    """Samples of the current ``labeled`` images of ``config_hash``, sorted by URI, with reviewed label maps
    replacing their pseudo-labels (``use_reviewed``; a reviewed image the config rejected is added too).

    The pool is the labeled images without the reviewed ones, plus the rejected ones that decoded
    (``pool_rejected``). Reads the annotations once, holding compressed label maps only.
    """
    dataset = LabelDataset(dataset_url, storage_options)
    selection = _select(dataset, dataset_url, config_hash, storage_options, use_reviewed, pool_rejected)
    id_to_index, lut = category_index(dataset.categories(), class_names)
    reader = reader or ImageReader(image_storage_options, cache_bytes)

    wanted = {item.ref.image_id: item.origin for item in selection.items}
    labels: dict[int, bytes] = {}
    for row, label_map in dataset.iter_label_maps(config_hash=config_hash, category_to_index=id_to_index):
        if wanted.get(int(row["image_id"])) == "pseudo":
            labels[int(row["image_id"])] = compress_labels(label_map)
    if "reviewed" in wanted.values():
        for row, positions in reviewed_label_maps(dataset_url, storage_options):
            if wanted.get(int(row["image_id"])) == "reviewed":
                labels[int(row["image_id"])] = compress_labels(lut[positions])
    items = [replace(item, labels=labels[item.ref.image_id]) for item in selection.items]
    clean = [item for item in items if item.origin == "reviewed"]
    return TrainingSet(
        config_hash=config_hash,
        class_names=tuple(class_names),
        samples=DatasetSamples(items, reader),
        pool=LazyImages(selection.pool, reader),
        clean=DatasetSamples(clean, reader),
        reader=reader,
        fingerprint=_fingerprint(config_hash, class_names, selection.items, selection.pool),
        counts={
            "samples": len(items),
            "pseudo_labeled": selection.labeled,
            "reviewed": len(clean),
            "pool": len(selection.pool),
            "pool_rejected": selection.pool_rejected,
        },
    )


def training_fingerprint(
    dataset_url: str,
    config_hash: str,
    class_names: Sequence[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    use_reviewed: bool = True,
    pool_rejected: bool = False,
) -> str:
    """:attr:`TrainingSet.fingerprint` without painting a label map or reading an image (two table scans)."""
    dataset = LabelDataset(dataset_url, storage_options)
    selection = _select(dataset, dataset_url, config_hash, storage_options, use_reviewed, pool_rejected)
    return _fingerprint(config_hash, class_names, selection.items, selection.pool)


@dataclass(frozen=True)
class _Selection:
    """Which images a training set holds and where their labels come from (nothing painted yet)."""

    items: list[LabeledRef]  # by (uri, image id); ``labels`` empty
    pool: list[ImageRef]  # by (uri, image id)
    labeled: int  # images the config labeled
    pool_rejected: int  # rejected images added to the pool


def _select(
    dataset: LabelDataset,
    dataset_url: str,
    config_hash: str,
    storage_options: Mapping[str, Any] | None,
    use_reviewed: bool,
    pool_rejected: bool,
) -> _Selection:
    """The one selection both :func:`load_training_set` and :func:`training_fingerprint` use."""
    rows = dataset.images(config_hash=config_hash, statuses=["labeled", "rejected"]).to_pylist()
    decoded = {int(r["image_id"]): r for r in rows if _decoded(r)}  # labeled, or rejected by the filter
    labeled = [i for i, r in decoded.items() if r["status"] == "labeled"]
    if not labeled:
        raise ValueError(f"{dataset_url} holds no labeled images under config {config_hash}")
    imports: dict[int, str] = {}
    if use_reviewed:  # a reviewed image of another labeling of this dataset is not ours
        table = read_reviewed(dataset_url, storage_options).select(["image_id", "import_id"]).to_pylist()
        imports = {int(r["image_id"]): r["import_id"] for r in table if int(r["image_id"]) in decoded}
    items = []
    for image_id in set(labeled) | set(imports):
        row = decoded[image_id]
        if image_id in imports:
            items.append(LabeledRef(ImageRef.from_row(row), b"", "reviewed", import_id=imports[image_id]))
        else:
            items.append(LabeledRef(ImageRef.from_row(row), b"", "pseudo", row["labeling_id"]))
    items.sort(key=lambda item: (item.ref.uri, item.ref.image_id))
    pool = [
        ImageRef.from_row(r)
        for i, r in decoded.items()
        if i not in imports and (r["status"] == "labeled" or pool_rejected)
    ]
    pool.sort(key=lambda ref: (ref.uri, ref.image_id))
    rejected = sum(decoded[ref.image_id]["status"] == "rejected" for ref in pool)
    return _Selection(items, pool, len(labeled), rejected)


def _decoded(row: Mapping[str, Any]) -> bool:
    return row["sha256"] is not None and row["height"] is not None and row["width"] is not None


def _fingerprint(
    config_hash: str, class_names: Sequence[str], items: Iterable[LabeledRef], pool: Iterable[ImageRef]
) -> str:
    digest = hashlib.sha256()
    digest.update(f"{config_hash}\x1f{list(class_names)}\n".encode())
    for item in items:
        what = item.labeling_id if item.origin == "pseudo" else item.import_id
        digest.update(f"{item.origin}\x1f{item.ref.uri}\x1f{item.ref.sha256}\x1f{what}\n".encode())
    for ref in pool:
        digest.update(f"pool\x1f{ref.uri}\x1f{ref.sha256}\n".encode())
    return digest.hexdigest()[:32]
