"""The 1x1 classifier made of CLIP text embeddings of the vocabulary (prompt-template ensembles)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from maskclip_core.process_cache import ProcessCache
from maskclip_core.teacher.clip_loader import ClipBundle
from maskclip_core.teacher.prompts import MASKCLIP_TEMPLATES
from maskclip_core.teacher.vocabulary import Vocabulary


@dataclass
class TextClassifier:
    """Query embeddings [Q, D] (unit norm) and which class each query votes for."""

    embeddings: torch.Tensor
    query_to_class: torch.Tensor  # [Q] long
    class_names: tuple[str, ...]
    # Decided once here: checked per call it would be a host-device sync stalling the GPU pipeline.
    one_query_per_class: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        q = self.query_to_class.cpu()
        self.one_query_per_class = len(q) == self.num_classes and bool((q == torch.arange(len(q))).all())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextClassifier:
        return TextClassifier(
            self.embeddings.to(device=device, dtype=dtype or self.embeddings.dtype),
            self.query_to_class.to(device),
            self.class_names,
        )

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of [B, D, h, w] features with every class -> [B, K, h, w].

        Features are L2-normalised here; a class with synonyms scores the max over its queries.
        """
        return self.class_max(self.query_cosine(features), dim=1)

    def query_cosine(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of [B, D, h, w] features (L2-normalised here) with every query -> [B, Q, h, w]."""
        feats = F.normalize(features.float(), dim=1)
        return torch.einsum("bdhw,qd->bqhw", feats, self.embeddings.float())

    def class_max(self, values: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Per-query values (queries along ``dim``) -> each class's max over its queries."""
        if self.one_query_per_class:
            return values
        shape = [1] * values.dim()
        shape[dim] = -1
        index = self.query_to_class.view(shape).expand_as(values)
        out_shape = list(values.shape)
        out_shape[dim] = self.num_classes
        out = values.new_full(out_shape, float("-inf"))
        return out.scatter_reduce(dim, index, values, reduce="amax", include_self=True)


def _encode_text_truncated(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` without the padding positions.

    CLIP's text transformer is causal and pools at the end-of-text token, so positions after the longest
    prompt's end cannot change the result; prompts are ~15 of the 77 positions, so this is ~4x less work.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1  # argmax = position of the end-of-text token
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    return (
        x @ model.text_projection
        if not isinstance(model.text_projection, torch.nn.Linear)
        else (model.text_projection(x))
    )


def _can_truncate(model: torch.nn.Module) -> bool:
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    )


def encode_texts(bundle: ClipBundle, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings [N, D]."""
    model = bundle.model
    encode = (lambda t: _encode_text_truncated(model, t)) if _can_truncate(model) else model.encode_text
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = bundle.tokenizer(list(texts[start : start + batch_size])).to(bundle.device)
            out.append(F.normalize(encode(tokens).float(), dim=-1))
    return torch.cat(out).cpu()


def template_ensemble(bundle: ClipBundle, query: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Per query: encode every template, normalise, average, normalise again -> [Q, D]."""
    texts = [t.format(q) for q in query for t in templates]
    emb = encode_texts(bundle, texts).view(len(query), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def default_cache_dir() -> Path | None:
    """``$MASKCLIP_CACHE_DIR`` (empty: no disk cache), else ``$XDG_CACHE_HOME/maskclip`` or ~/.cache/maskclip."""
    configured = os.environ.get("MASKCLIP_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskclip"


class TextClassifierCache:
    """Classifiers per (weights, vocabulary, templates), in memory and optionally on disk.

    Encoding 85 templates per class is the slow part of starting a labeler on a CPU; a labeling flow
    re-creates labelers in every worker process, so the disk cache is what makes that cheap.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self._memory: ProcessCache[TextClassifier] = ProcessCache()

    @staticmethod
    def key(bundle: ClipBundle, vocabulary: Vocabulary, templates: Sequence[str]) -> str:
        payload = json.dumps(
            {"weights": bundle.weights_id, "queries": vocabulary.queries(), "templates": list(templates)},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def get(
        self, bundle: ClipBundle, vocabulary: Vocabulary, templates: Sequence[str] = MASKCLIP_TEMPLATES
    ) -> TextClassifier:
        key = self.key(bundle, vocabulary, templates)
        return self._memory.get(key, lambda: self._load_or_build(key, bundle, vocabulary, templates)).to(bundle.device)

    def _load_or_build(
        self, key: str, bundle: ClipBundle, vocabulary: Vocabulary, templates: Sequence[str]
    ) -> TextClassifier:
        classifier = self._load(key, vocabulary) or build_text_classifier(bundle, vocabulary, templates)
        self._store(key, classifier)
        return classifier

    def _path(self, key: str) -> Path | None:
        return self.directory / f"text-{key}.pt" if self.directory else None

    def _load(self, key: str, vocabulary: Vocabulary) -> TextClassifier | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache entry is rebuilt, never fatal
            return None
        embeddings = share_repeated_queries(data["embeddings"], [q for q, _ in vocabulary.queries()])
        return TextClassifier(embeddings, data["query_to_class"], vocabulary.names)

    def _store(self, key: str, classifier: TextClassifier) -> None:
        path = self._path(key)
        if path is None or path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"_tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
            torch.save({"embeddings": classifier.embeddings, "query_to_class": classifier.query_to_class}, tmp)
            os.replace(tmp, path)  # atomic: concurrent workers never read a half-written entry
        except OSError:  # a read-only or full cache directory only costs speed
            pass


_TEXT_CACHES: ProcessCache[TextClassifierCache] = ProcessCache()


def default_text_cache() -> TextClassifierCache:
    """The process-wide cache in :func:`default_cache_dir` (shared by the teacher and the student's training)."""
    directory = default_cache_dir()
    return _TEXT_CACHES.get(str(directory), lambda: TextClassifierCache(directory))


def build_text_classifier(
    bundle: ClipBundle, vocabulary: Vocabulary, templates: Sequence[str] = MASKCLIP_TEMPLATES
) -> TextClassifier:
    """Encode every query of the vocabulary with the template ensemble."""
    pairs = vocabulary.queries()
    texts = [q for q, _ in pairs]
    embeddings = share_repeated_queries(template_ensemble(bundle, texts, templates), texts)
    query_to_class = torch.tensor([i for _, i in pairs], dtype=torch.long)
    return TextClassifier(embeddings, query_to_class, vocabulary.names)


def share_repeated_queries(embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """A query text asked for twice (COCO-Object's ``bed``: a background word and a class) gets its first
    embedding both times: encoded in other batches the two differ in the last bits, which would decide a tie
    that the references leave exact (and give to the first class)."""
    first = {t: i for i, t in reversed(list(enumerate(texts)))}
    rows = [first[t] for t in texts]
    if rows == list(range(len(texts))):
        return embeddings
    return embeddings[rows]
