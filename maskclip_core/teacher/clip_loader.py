"""Loading CLIP through open_clip: model names, pretrained tags, local checkpoints or random weights."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from safetensors import SafetensorError

from maskclip_core.device import resolve_device
from maskclip_core.teacher.hub import hub_downloads

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
RANDOM_WEIGHTS = ("none", "random", "")

# Small architectures for tests and smoke runs; registered with open_clip so they load like any other name.
_CONFIG_DIR = Path(__file__).with_name("model_configs")
open_clip.add_model_config(_CONFIG_DIR)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (offline site, unknown tag, missing file)."""


@dataclass
class ClipBundle:
    """A loaded CLIP model with what the labeler needs around it."""

    model: torch.nn.Module
    tokenizer: Any
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_name: str
    pretrained: str
    weights_id: str  # stable identity of the weights, hashed into labeler configs
    device: torch.device

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual

    @property
    def is_vit(self) -> bool:
        return isinstance(self.model.visual, VisionTransformer)

    @property
    def stride(self) -> int:
        """Pixels per feature cell: the patch size for ViTs, 32 for ModifiedResNets."""
        return feature_stride(self.model)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if self.model.text_projection is not None else 0


def feature_stride(model: torch.nn.Module) -> int:
    visual = getattr(model, "visual", model)
    if isinstance(visual, VisionTransformer):
        return int(visual.patch_size[0])
    if isinstance(visual, ModifiedResNet):
        return 32
    raise TypeError(f"unsupported CLIP image encoder {type(visual).__name__}: need a ViT or a ModifiedResNet")


def normalise_model_name(name: str) -> str:
    """Accept OpenAI spellings ('ViT-B/16') as well as open_clip's ('ViT-B-16')."""
    return name.strip().replace("/", "-")


def is_random(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).strip().lower() in RANDOM_WEIGHTS


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_identity(model_name: str, pretrained: str | None, seed: int = 0) -> str:
    """A string that changes whenever the weights do (tag name, checkpoint content, or random seed)."""
    model_name = normalise_model_name(model_name)
    if is_random(pretrained):
        return f"{model_name}/random-seed{seed}"
    if os.path.isfile(str(pretrained)):
        st = os.stat(str(pretrained))
        return f"{model_name}/sha256:{_file_sha256(os.path.abspath(str(pretrained)), st.st_size, st.st_mtime_ns)}"
    return f"{model_name}/{pretrained}"


def is_vit_architecture(model_name: str) -> bool:
    """Whether an open_clip architecture's image encoder is a ViT (read from its config: no model is built).
    An unknown name counts as a ViT here; :func:`load_clip` names the problem."""
    vision = (open_clip.get_model_config(normalise_model_name(model_name)) or {}).get("vision_cfg") or {}
    return not isinstance(vision.get("layers"), (list, tuple))  # ModifiedResNets list their stages' depths


def _unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why an open_clip architecture cannot give per-patch CLIP embeddings (None: it can), read from its
    config so that no model is built to find out."""
    vision = config.get("vision_cfg") or {}
    if config.get("multimodal_cfg") or vision.get("attentional_pool"):
        return "attentional-pooler ViTs (CoCa) have no per-patch CLIP embedding"
    if vision.get("timm_model_name"):
        return f"its image encoder is timm's {vision['timm_model_name']!r}, not an open_clip ViT or ModifiedResNet"
    return None


def clip_models() -> dict[str, tuple[str, ...]]:
    """The CLIP registry: each open_clip architecture the loader can label with (OpenAI-style ViTs and
    ModifiedResNets, our tiny test configs included) -> its pretrained tags (empty: random or local weights).

    Derived from open_clip's own registries (``list_models``, ``list_pretrained_tags_by_model``), so a newer
    open_clip brings its new models and tags without an edit here.
    """
    return {
        name: tuple(open_clip.list_pretrained_tags_by_model(name))
        for name in open_clip.list_models()
        if _unsupported_reason(open_clip.get_model_config(name) or {}) is None
    }


def _offline_message(model_name: str, pretrained: str, cause: Exception | str) -> str:
    return (
        f"Could not obtain the pretrained weights '{pretrained}' for {model_name}: {cause}\n"
        f"This machine cannot download them (no access to the model hub). Fixes:\n"
        f"  - pass a local checkpoint: --pretrained /path/to/{model_name}.pt on the command line, or the "
        f"deployment parameter labeler.config.pretrained=/path/to/{model_name}.pt (in the Run form or "
        f'`--param labeler=\'{{"config": {{"pretrained": "/path/to/{model_name}.pt"}}}}\'`): an OpenAI '
        f".pt archive or an open_clip state dict, on the machine that runs the flow, or\n"
        f"  - copy the hub cache from a connected machine (HF_HOME / ~/.cache/huggingface), or\n"
        f"  - use --pretrained none (labeler.config.pretrained=none) for random weights (labels are then "
        f"meaningless; for smoke tests only)."
    )


def _check_supported(model: torch.nn.Module, model_name: str) -> None:
    visual = model.visual
    if isinstance(visual, ModifiedResNet):
        return
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"{model_name}: image encoder {type(visual).__name__} is not supported; MaskCLIP needs an open_clip "
            "VisionTransformer or ModifiedResNet (OpenAI-style CLIP, e.g. ViT-B-16, ViT-L-14, RN50, RN101)"
        )
    if visual.attn_pool is not None:
        raise ValueError(f"{model_name}: attentional-pooler ViTs (CoCa) have no per-patch CLIP embedding")
    last = visual.transformer.resblocks[-1]
    if not isinstance(getattr(last, "attn", None), torch.nn.MultiheadAttention):
        raise ValueError(f"{model_name}: the last block uses a custom attention MaskCLIP cannot split into q, k, v")


def load_clip(
    model_name: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    seed: int = 0,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> ClipBundle:
    """Load a CLIP model for dense labeling.

    ``pretrained`` is an open_clip tag (``openai``, ``laion2b_s34b_b88k``...), a path to a local checkpoint,
    or ``none`` for random weights (seeded by ``seed``, so runs are reproducible). ``quick_gelu`` defaults
    to what the tag was trained with; for a local file, to the OpenAI setting when the architecture has
    OpenAI weights (local checkpoints of those names are almost always OpenAI's).
    """
    model_name = normalise_model_name(model_name)
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model '{model_name}'; known: {', '.join(clip_models())}")
    reason = _unsupported_reason(open_clip.get_model_config(model_name) or {})
    if reason is not None:
        raise ValueError(f"{model_name}: {reason}; MaskCLIP needs one of {', '.join(clip_models())}")
    device = resolve_device(device)
    pretrained_arg: str | None = None if is_random(pretrained) else str(pretrained)

    tag_cfg: dict[str, Any] = {}
    if pretrained_arg is not None and not os.path.isfile(pretrained_arg):
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained_arg) or {}
    if quick_gelu is None:
        if pretrained_arg is not None and not os.path.isfile(pretrained_arg):
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise WeightsUnavailableError(
                    f"'{pretrained_arg}' is neither a pretrained tag of {model_name} (tags: {tags or 'none'}) "
                    f"nor an existing checkpoint file"
                )
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        elif pretrained_arg is not None:
            openai_cfg = open_clip.get_pretrained_cfg(model_name, "openai")
            quick_gelu = bool(openai_cfg.get("quick_gelu", False)) if openai_cfg else False
        else:
            quick_gelu = False

    unreachable: str | None = None  # why the hub did not answer its probe
    try:
        if pretrained_arg is None:
            # Fork the RNG so random weights depend on the seed only, and the caller's RNG is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(
                    model_name, pretrained=None, precision=precision, device=device, force_quick_gelu=quick_gelu
                )
        else:
            # A tag open_clip fetches from the Hugging Face hub: probed first, so an unreachable hub fails at
            # once (cached weights still load) instead of after a minute of retries.
            with hub_downloads() if tag_cfg.get("hf_hub") else nullcontext() as unreachable:
                if unreachable:  # cached weights load; otherwise this fails here, before open_clip logs it
                    open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
                model = open_clip.create_model(
                    model_name,
                    pretrained=pretrained_arg,
                    precision=precision,
                    device=device,
                    force_quick_gelu=quick_gelu,
                    cache_dir=cache_dir,
                    require_pretrained=True,
                )
    except pickle.UnpicklingError as exc:  # torch's weights_only loader met Python objects beyond tensors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(
            f"--pretrained {pretrained_arg}: refused: the file pickles Python objects, not only tensors, "
            f"and loading it could run code ({reason[:160]})"
        ) from exc
    except SafetensorError as exc:  # a .safetensors name on another format (a pickle renamed): never unpickled
        raise WeightsUnavailableError(
            f"--pretrained {pretrained_arg}: refused: not a safetensors file ({exc})"
        ) from exc
    except (RuntimeError, OSError, FileNotFoundError) as exc:
        if pretrained_arg is None:
            raise
        cause = f"{unreachable}, and they are not in the local hub cache" if unreachable else exc
        raise WeightsUnavailableError(_offline_message(model_name, pretrained_arg, cause)) from exc

    _check_supported(model, model_name)
    model.eval()
    visual = model.visual
    preprocess = getattr(visual, "preprocess_cfg", None) or {}
    mean = tuple(preprocess.get("mean") or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(preprocess.get("std") or open_clip.OPENAI_DATASET_STD)
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        model_name=model_name,
        pretrained=pretrained_arg or "none",
        weights_id=weights_identity(model_name, pretrained_arg, seed),
        device=device,
    )
