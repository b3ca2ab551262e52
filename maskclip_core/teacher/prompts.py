"""Prompt templates for the text classifier, and the registry of template sets.

MaskCLIP uses the 80 ImageNet templates of the CLIP paper (open_clip ships them as
``OPENAI_IMAGENET_TEMPLATES``) plus 5 scene templates of its own; each class name is put in every template,
encoded, L2-normalised and averaged (then normalised again).
"""

from __future__ import annotations

from typing import Literal

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

# open_clip's templates are callables (name -> prompt); as format strings they hash into labeler configs
# and text-classifier cache keys exactly as the hand-written copy did.
IMAGENET_TEMPLATES: tuple[str, ...] = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)

SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

MASKCLIP_TEMPLATES: tuple[str, ...] = IMAGENET_TEMPLATES + SCENE_TEMPLATES

# A single template, for quick experiments and the ablation "without prompt engineering".
SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of a {}.",)

# The template-set registry: ``TemplateSetName`` (the configs' Literal), the CLI's choices and the docs derive
# from its keys; a new set is one entry here.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "maskclip": MASKCLIP_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,  # the successors' (SCLIP, NACLIP, ClearCLIP, ProxyCLIP) benchmark prompts
    "single": SINGLE_TEMPLATE,
}
TemplateSetName = Literal[tuple(TEMPLATE_SETS)]  # type: ignore[valid-type]


def templates_for(name: str) -> tuple[str, ...]:
    """The templates registered as ``name``; a clear error for an unknown one."""
    try:
        return TEMPLATE_SETS[name]
    except KeyError:
        raise ValueError(f"unknown template set {name!r}; choose one of {tuple(TEMPLATE_SETS)}") from None
