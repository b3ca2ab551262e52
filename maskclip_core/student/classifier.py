"""The student's frozen text classifier: cosine logits against CLIP text embeddings.

The classifier holds no trained weights, only buffers, so a trained student can be given a new or
renamed vocabulary by swapping them (``set_vocabulary``) without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskclip_core.types import MAX_CLASSES


@dataclass(frozen=True)
class ClassVocabulary:
    """Class names and, for classes with synonyms, which class each text query belongs to.

    ``query_to_class[q]`` is the class index of embedding row ``q``; ``None`` means one query per class
    in class order.
    """

    class_names: tuple[str, ...]
    query_to_class: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        k = len(self.class_names)
        if not 0 < k <= MAX_CLASSES:
            raise ValueError(f"a vocabulary needs 1..{MAX_CLASSES} classes, got {k}")
        if self.query_to_class is not None:
            q2c = tuple(int(c) for c in self.query_to_class)
            object.__setattr__(self, "query_to_class", q2c)
            if any(c < 0 or c >= k for c in q2c):
                raise ValueError(f"query_to_class has indices outside [0, {k})")
            missing = sorted(set(range(k)) - set(q2c))
            if missing:
                raise ValueError(f"classes without a query: {[self.class_names[c] for c in missing]}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_queries(self) -> int:
        return self.num_classes if self.query_to_class is None else len(self.query_to_class)

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "query_to_class": None if self.query_to_class is None else list(self.query_to_class),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassVocabulary:
        q2c = data.get("query_to_class")
        return cls(tuple(data["class_names"]), None if q2c is None else tuple(q2c))


class FrozenTextHead(nn.Module):
    """1x1 classifier whose weights are frozen, L2-normalised text embeddings.

    Features are L2-normalised too, so logits are ``temperature * cosine`` (MaskCLIP scores pixels
    the same way, with CLIP's logit scale of 100). Synonym logits are max-pooled per class.
    """

    embeddings: torch.Tensor
    query_to_class: torch.Tensor
    vocabulary: ClassVocabulary

    def __init__(self, embeddings: torch.Tensor, vocabulary: ClassVocabulary, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.register_buffer("embeddings", torch.empty(0))
        self.register_buffer("query_to_class", torch.empty(0, dtype=torch.long))
        self.set_vocabulary(embeddings, vocabulary)

    @property
    def num_classes(self) -> int:
        return self.vocabulary.num_classes

    def set_vocabulary(self, embeddings: torch.Tensor, vocabulary: ClassVocabulary) -> None:
        """Replace the classes: ``embeddings`` is [Q, D] (Q = vocabulary.num_queries)."""
        if embeddings.ndim != 2 or embeddings.shape[0] != vocabulary.num_queries:
            raise ValueError(f"embeddings {tuple(embeddings.shape)} do not match {vocabulary.num_queries} queries")
        if self.embeddings.numel() and embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embedding dim {embeddings.shape[1]} != {self.embeddings.shape[1]}")
        device = self.embeddings.device
        self.embeddings = F.normalize(embeddings.detach().float(), dim=1).to(device)
        q2c = vocabulary.query_to_class
        self.query_to_class = torch.tensor(
            range(vocabulary.num_queries) if q2c is None else q2c, dtype=torch.long, device=device
        )
        self.vocabulary = vocabulary

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, D, H, W] features -> [B, K, H, W] class logits."""
        feats = F.normalize(features, dim=1)
        logits = torch.einsum("bdhw,qd->bqhw", feats, self.embeddings.to(feats.dtype)) * self.temperature
        if self.vocabulary.query_to_class is None:
            return logits
        b, q, h, w = logits.shape
        index = self.query_to_class.view(1, q, 1, 1).expand(b, q, h, w)
        out = logits.new_zeros(b, self.num_classes, h, w)
        # include_self=False: every class has a query (checked), so the zeros never win.
        return out.scatter_reduce(1, index, logits, reduce="amax", include_self=False)
