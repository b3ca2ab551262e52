"""SAM's image encoder (Kirillov et al., 2023) through timm, for Trident's whole-image affinity.

SAM sees an image resized so its long side is the encoder's input size (1024 for the released models), normalised
with SAM's pixel statistics and padded bottom/right with zeros to a square, as ``segment_anything.SamPredictor``
prepares it. Trident reads the last block's attention (a global block in every released SAM) and its values;
:class:`SamLastAttention` holds the block's queries, keys, values and relative-position terms so that a caller
can take the softmax one head at a time (12 heads x 4096^2 tokens would be 800 MB at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskclip_core.process_cache import ProcessCache
from maskclip_core.teacher.clip_loader import is_random
from maskclip_core.teacher.timm_weights import create_timm_encoder

# The reference's model types (segment_anything's registry names) -> timm names with their pretrained tags.
SAM_ALIASES = {
    "vit_b": "samvit_base_patch16.sa1b",
    "vit_l": "samvit_large_patch16.sa1b",
    "vit_h": "samvit_huge_patch16.sa1b",
}
# SAM's pixel statistics on 0..255 (segment_anything.modeling.Sam.pixel_mean / pixel_std); timm's config for
# the sa1b tags names ImageNet's in 0..1, the same numbers.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class SamBundle:
    """A loaded SAM image encoder (timm ``VisionTransformerSAM``) and its identity."""

    encoder: torch.nn.Module
    name: str  # timm name, with its pretrained tag
    weights_id: str  # stable identity of the weights, hashed into labeler configs

    @property
    def input_size(self) -> int:
        return int(self.encoder.patch_embed.img_size[0])

    @property
    def patch_size(self) -> int:
        return int(self.encoder.patch_embed.patch_size[0])

    @property
    def num_heads(self) -> int:
        return int(self.encoder.blocks[-1].attn.num_heads)

    @property
    def device(self) -> torch.device:
        return self.encoder.patch_embed.proj.weight.device


def resolve_sam_name(name: str) -> str:
    return SAM_ALIASES.get(name.strip(), name.strip())


def load_sam(
    name: str = "vit_b",
    weights: str = "pretrained",
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **arch,
) -> SamBundle:
    """Build SAM's image encoder with timm.

    ``name`` is ``vit_b`` / ``vit_l`` / ``vit_h`` or a timm ``samvit_*`` name; ``weights`` is ``pretrained``
    (timm's hub download), a local file (the original ``sam_vit_b_01ec64.pth`` or timm's; timm's loader keeps
    the image encoder's part), or ``none`` for random weights seeded by ``seed``. ``arch`` overrides the
    architecture (tests build small encoders: ``img_size``, ``embed_dim``, ``depth``, ...).
    """
    import timm

    timm_name = resolve_sam_name(name)
    arch_name = timm_name.split(".", 1)[0]
    if not arch_name.startswith("samvit") or not timm.is_model(arch_name):
        raise ValueError(f"unknown SAM encoder '{name}': use {', '.join(SAM_ALIASES)} or a timm samvit_* name")
    encoder, identity = create_timm_encoder(
        timm_name,
        weights,
        seed=seed,
        role="SAM",
        flag="--sam-weights",
        local_example="/path/to/sam_vit_b_01ec64.pth, or timm's",
        num_classes=0,
        **arch,
    )
    if is_random(weights) and arch:  # a test's small architecture is another random model
        identity += f"/{sorted(arch.items())}"
    if encoder.blocks[-1].window_size != 0:
        raise ValueError(f"SAM encoder {timm_name}: its last block uses window attention; Trident needs a global one")
    encoder.eval()
    return SamBundle(encoder=encoder.to(device), name=timm_name, weights_id=identity)


_SAMS: ProcessCache[SamBundle] = ProcessCache()


def cached_sam(name: str, weights: str, *, device: str | torch.device, seed: int = 0) -> SamBundle:
    """One SAM encoder per (name, weights, device, seed) per process, shared by every labeler using it."""
    key = (resolve_sam_name(name), weights, str(device), seed)
    return _SAMS.get(key, lambda: load_sam(name, weights, device=device, seed=seed))


def resized_for_sam(height: int, width: int, input_size: int) -> tuple[int, int]:
    """The image size SAM's encoder sees before padding: long side ``input_size`` (``ResizeLongestSide``)."""
    scale = input_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_pixels(image: np.ndarray, input_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple]:
    """SAM's input [1, 3, S, S] for an RGB uint8 image [H, W, 3], and the resized (h, w) it occupies.

    The resize is Pillow's bilinear on uint8, as ``ResizeLongestSide.apply_image`` does it."""
    h, w = resized_for_sam(image.shape[0], image.shape[1], input_size)
    resized = np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))  # writable
    x = torch.from_numpy(resized).to(device).permute(2, 0, 1).float()
    mean = torch.tensor(SAM_PIXEL_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD, device=x.device).view(3, 1, 1)
    x = F.pad((x - mean) / std, (0, input_size - w, 0, input_size - h))
    return x[None], (h, w)


@dataclass
class SamLastAttention:
    """The last (global) block's attention terms for one image: per head, queries scaled, keys, values
    [heads, N, d] over the encoder's grid (gh, gw), and the decomposed relative-position terms."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    rel_h: torch.Tensor | None  # [heads, gh, gw, gh]
    rel_w: torch.Tensor | None  # [heads, gh, gw, gw]
    grid: tuple[int, int]
    block_input: torch.Tensor  # [1, gh, gw, C]: the last block's input, to finish the encoder from (no 2nd pass)

    def attention(self, head: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention [R, N] of one head's query ``rows`` (all N by default) over all keys (padding
        included, as in SAM), in fp32."""
        q = (self.q[head] if rows is None else self.q[head][rows]).float()
        logits = q @ self.k[head].float().T
        if self.rel_h is not None:
            gh, gw = self.grid
            rel_h, rel_w = self.rel_h[head].reshape(gh * gw, gh), self.rel_w[head].reshape(gh * gw, gw)
            rel_h, rel_w = rel_h.float(), rel_w.float()
            if rows is not None:
                rel_h, rel_w = rel_h[rows], rel_w[rows]
            logits = logits + (rel_h[:, :, None] + rel_w[:, None, :]).reshape(len(q), gh * gw)
        return logits.softmax(dim=-1)


def sam_last_attention(sam: SamBundle, pixels: torch.Tensor) -> SamLastAttention:
    """Run SAM's encoder up to its last block on ``pixels`` [1, 3, S, S] (from :func:`sam_pixels`) and return
    that block's attention terms (the rest of the block and the neck are not needed for the affinity)."""
    from timm.models.vision_transformer_sam import get_rel_pos, resample_abs_pos_embed_nhwc

    enc = sam.encoder
    x = enc.patch_embed(pixels.to(enc.patch_embed.proj.weight.dtype))
    if enc.pos_embed is not None:
        x = x + resample_abs_pos_embed_nhwc(enc.pos_embed, x.shape[1:3])
    x = enc.norm_pre(enc.patch_drop(enc.pos_drop(x)))
    for block in enc.blocks[:-1]:
        x = block(x)
    attn = enc.blocks[-1].attn
    y = enc.blocks[-1].norm1(x)
    B, gh, gw, C = y.shape
    if B != 1:
        raise ValueError(f"one image at a time through SAM's encoder, got a batch of {B}")
    heads = attn.num_heads
    q, k, v = attn.qkv(y.reshape(gh * gw, C)).view(gh * gw, 3, heads, -1).permute(1, 2, 0, 3).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rel_h = rel_w = None
    if attn.use_rel_pos:
        r_q = q.reshape(heads, gh, gw, -1)
        rel_h = torch.einsum("nhwc,hkc->nhwk", r_q, get_rel_pos(gh, gh, attn.rel_pos_h))
        rel_w = torch.einsum("nhwc,wkc->nhwk", r_q, get_rel_pos(gw, gw, attn.rel_pos_w))
    return SamLastAttention(q * attn.scale, k, v, rel_h, rel_w, (gh, gw), x)
