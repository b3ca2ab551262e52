"""Training samples and deterministic batches.

The caller supplies samples through any sequence (built from the Parquet store in production). Batches
are a pure function of (seed, stream, step): sample order is a per-epoch permutation and each sample's
augmentation has its own seed, so resuming at step N needs no saved data-loader state.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from maskclip_core.student.augment import AugmentConfig, augment
from maskclip_core.types import IGNORE_INDEX


@dataclass(frozen=True)
class Sample:
    """An RGB uint8 [H, W, 3] image and its uint8 [H, W] label map (255 = ignore)."""

    image: np.ndarray
    labels: np.ndarray


@runtime_checkable
class SampleSource(Protocol):
    """Random access to samples; items may be ``Sample`` or ``(image, labels)`` tuples."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample | tuple[np.ndarray, np.ndarray]: ...


def as_sample(item: Sample | tuple[np.ndarray, np.ndarray]) -> Sample:
    if isinstance(item, Sample):
        return item
    image, labels = item
    return Sample(image, labels)


class LabeledPool(Sequence[Sample]):
    """The unlabeled pool's images with the label maps of the latest relabelling (images are not copied)."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label maps")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return Sample(self.images[index], self.labels[index])


def compress_labels(label_map: np.ndarray) -> bytes:
    """A uint8 label map, zlib-compressed (label maps shrink 20-100x)."""
    return zlib.compress(np.ascontiguousarray(label_map, dtype=np.uint8).tobytes(), 1)


def decompress_labels(data: bytes, height: int, width: int) -> np.ndarray:
    return np.frombuffer(bytearray(zlib.decompress(data)), dtype=np.uint8).reshape(height, width)


class CompressedLabels(Sequence[np.ndarray]):
    """uint8 label maps held zlib-compressed (label maps shrink 20-100x), decompressed on access: the
    relabelled pool of a large dataset stays small in memory."""

    def __init__(self) -> None:
        self._maps: list[tuple[bytes, tuple[int, int]]] = []

    def append(self, labels: np.ndarray) -> None:
        self._maps.append((compress_labels(labels), (int(labels.shape[0]), int(labels.shape[1]))))

    def __len__(self) -> int:
        return len(self._maps)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        data, (height, width) = self._maps[index]
        return decompress_labels(data, height, width)


class ConcatSource(Sequence[Sample]):
    """Several sample sources one after the other (e.g. a relabelled pool and human-reviewed samples)."""

    def __init__(self, *sources: SampleSource | Sequence[Sample]) -> None:
        self.sources = [s for s in sources if len(s)]
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return as_sample(self.sources[part][index - int(self._starts[part])])


def batch_indices(num_samples: int, batch_size: int, seed: int, stream: int, step: int) -> list[int]:
    """Indices of batch ``step``: consecutive slices of per-epoch permutations (no sample repeats within
    an epoch, every epoch reshuffled)."""
    if num_samples <= 0:
        raise ValueError("no training samples")
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, num_samples)
        perm = np.random.default_rng([seed, stream, epoch]).permutation(num_samples)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(int(i) for i in take)
        pos += len(take)
    return out


def make_batch(
    source: SampleSource | Sequence[Sample],
    augment_config: AugmentConfig,
    batch_size: int,
    seed: int,
    stream: int,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented batch ``step`` of ``stream`` (one stream per training phase): images [B, 3, c, c],
    labels [B, c, c] int64 with 255 = ignore."""
    images, labels = [], []
    for slot, index in enumerate(batch_indices(len(source), batch_size, seed, stream, step)):
        sample = as_sample(source[index])
        if sample.labels.dtype != np.uint8:
            raise ValueError(f"label maps must be uint8 with {IGNORE_INDEX} = ignore, got {sample.labels.dtype}")
        rng = np.random.default_rng([seed, stream, step, slot, 1])
        image, label = augment(sample.image, sample.labels, augment_config, rng)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels)
