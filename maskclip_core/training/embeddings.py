"""The teacher's text embeddings, which become the student's frozen classifier."""

from __future__ import annotations

from typing import Any

from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.training.parameters import ClipParameters


def clip_embed_dim(clip: ClipParameters) -> int:
    """The joint embedding size of the CLIP model, from its open_clip config (no weights loaded)."""
    import open_clip

    from maskclip_core.teacher.clip_loader import normalise_model_name

    config = open_clip.get_model_config(normalise_model_name(clip.model))
    if not config:
        raise ValueError(f"unknown CLIP model {clip.model!r}")
    return int(config["embed_dim"])


def text_embeddings(clip: ClipParameters, vocabulary: Vocabulary, device: str | None = None) -> tuple[Any, Any]:
    """([Q, D] CPU tensor, ``ClassVocabulary``): the teacher's text classifier for ``vocabulary``, built as
    the teacher builds it (same CLIP weights, prompt templates and per-query ensembles; same cache)."""
    from maskclip_core.student.classifier import ClassVocabulary
    from maskclip_core.teacher.clip_loader import load_clip
    from maskclip_core.teacher.prompts import templates_for
    from maskclip_core.teacher.text_classifier import default_text_cache

    bundle = load_clip(clip.model, clip.pretrained, device=device, seed=clip.seed)
    classifier = default_text_cache().get(bundle, vocabulary, templates_for(clip.templates))
    query_to_class = tuple(int(c) for c in classifier.query_to_class.cpu().tolist())
    return classifier.embeddings.detach().float().cpu(), ClassVocabulary(vocabulary.names, query_to_class)
