"""Trident's optional SAM refinement (``sam_refinement``): the coarse labels become prompts for SAM's decoder.

Reference: YuHengsss/Trident, ``seg_utils/utils.py`` (``sam_refinement``). Per image, with the coarse
probabilities P [C, H, W] and labels L [H, W] at the image's size:

1. P and L are halved (bilinear / nearest); a pixel whose best probability is below ``coarse_thresh`` is
   set aside. Each class whose best probability reaches ``coarse_thresh`` is split into 8-connected regions
   of at least ``minimal_area`` (halved) pixels.
2. Every region prompts SAM's decoder once: its bounding box, the point of its class's highest probability
   inside it, and a dense prompt ``SAM_MASK_COFF * P_c`` where P_c > ``coarse_thresh`` (else 0), resized to
   the decoder's mask-input size (long side 256 for SAM). One mask, no multimask output.
3. A mask whose predicted IoU exceeds ``sam_iou_thresh`` is kept. Per class, the refined score is the max
   over its kept masks of sigmoid(mask logit) x P_c, zero outside the union of those masks; each pixel takes
   the class of the highest refined score, and pixels no kept mask covers keep their coarse label.

Deviations from the reference, and why:
- The dense prompt reaches SAM's prompt encoder unbatched, as the reference passes it ([1, 256, 256]), so
  the encoder's LayerNorm2d normalises over rows instead of channels; kept, since the released weights were
  evaluated that way in Trident's numbers.
- The reference's handling of regions whose mask fails the IoU test (their coarse probabilities merged into
  the returned logits) never changes a label; only the labels and their confidence are produced here, the
  confidence being the refined score where a mask was kept and the coarse probability elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from maskclip_core.teacher.clip_loader import WeightsUnavailableError, is_random
from maskclip_core.teacher.sam import SamBundle, SamLastAttention, resized_for_sam

# Trident's constructor defaults (trident.py) and its scale of the dense prompt (``sam_mask_coff``).
TRIDENT_COARSE_THRESH = 0.10
TRIDENT_SAM_IOU_THRESH = 0.9
TRIDENT_MINIMAL_AREA = 225
SAM_MASK_COFF = 0.005
# The reference finds regions on the probabilities halved each way, for speed.
REGION_DOWN_RATIO = 2
# SAM's decoder: the released models' sizes (segment_anything.build_sam); its width is the encoder neck's (256).
SAM_MASK_IN_CHANS = 16
SAM_DECODER_MLP = 2048


@dataclass
class SamPromptDecoder:
    """SAM's prompt encoder and mask decoder (``segment_anything`` modules) for one image encoder."""

    prompt_encoder: torch.nn.Module
    mask_decoder: torch.nn.Module

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return tuple(self.prompt_encoder.mask_input_size)


@dataclass(frozen=True)
class RefinementSettings:
    """The decoder (its weights are the SAM encoder's file, so the encoder's identity names them) and the
    reference's thresholds."""

    decoder: SamPromptDecoder
    coarse_thresh: float = TRIDENT_COARSE_THRESH
    sam_iou_thresh: float = TRIDENT_SAM_IOU_THRESH
    minimal_area: int = TRIDENT_MINIMAL_AREA

    def config(self) -> dict[str, float | int]:
        return {
            "coarse_thresh": self.coarse_thresh,
            "sam_iou_thresh": self.sam_iou_thresh,
            "minimal_area": self.minimal_area,
        }


def load_sam_decoder(sam: SamBundle, weights: str, *, seed: int = 0) -> SamPromptDecoder:
    """Build SAM's prompt encoder and mask decoder sized for ``sam``'s encoder.

    ``weights`` is the original SAM checkpoint file (``sam_vit_b_01ec64.pth`` holds encoder, prompt encoder
    and decoder) or ``none`` for random weights seeded by ``seed``."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    size, patch = sam.input_size, sam.patch_size
    width = int(sam.encoder.num_features)  # the neck's channels (256 in SAM), else the encoder's width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prompt_encoder = PromptEncoder(
            embed_dim=width,
            image_embedding_size=(size // patch, size // patch),
            input_image_size=(size, size),
            mask_in_chans=SAM_MASK_IN_CHANS,
        )
        transformer = TwoWayTransformer(depth=2, embedding_dim=width, mlp_dim=SAM_DECODER_MLP, num_heads=8)
        mask_decoder = MaskDecoder(transformer_dim=width, transformer=transformer)
    if not is_random(weights):
        if not os.path.isfile(weights):
            raise WeightsUnavailableError(
                f"SAM refinement needs the original SAM checkpoint file (e.g. sam_vit_b_01ec64.pth) for its "
                f"prompt encoder and mask decoder, or 'none'; got '{weights}'"
            )
        state = torch.load(weights, map_location="cpu", weights_only=True)
        for prefix, module in (("prompt_encoder.", prompt_encoder), ("mask_decoder.", mask_decoder)):
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not part:
                raise WeightsUnavailableError(f"{weights}: no '{prefix}*' weights (not an original SAM checkpoint)")
            module.load_state_dict(part)
    device = sam.device
    return SamPromptDecoder(prompt_encoder.to(device).eval(), mask_decoder.to(device).eval())


def sam_image_embedding(sam: SamBundle, attention: SamLastAttention) -> torch.Tensor:
    """SAM's image embedding [1, 256, g, g]: the encoder finished (last block, neck) from the pass the affinity
    already made (:func:`sam_last_attention` keeps the last block's input), as the reference's one pass gives."""
    enc = sam.encoder
    return enc.neck(enc.blocks[-1](attention.block_input).permute(0, 3, 1, 2)).float()


@dataclass
class RegionPrompts:
    """One class's regions on the halved grid: masks [n, h, w], boxes [n, 4] (x0, y0, x1, y1), points [n, 2]."""

    masks: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor


def class_regions(
    labels: torch.Tensor, probs: torch.Tensor, *, coarse_thresh: float, minimal_area: int
) -> dict[int, RegionPrompts]:
    """Per class, its 8-connected regions of ``labels`` [h, w] with at least ``minimal_area`` pixels, the box
    of each and the pixel where the class's probability ``probs`` [C, h, w] peaks inside it."""
    kept = labels.clone()
    if coarse_thresh > 0:
        kept[probs.max(dim=0).values < coarse_thresh] = -1
    out: dict[int, RegionPrompts] = {}
    eight = np.ones((3, 3), dtype=bool)
    for c in torch.unique(kept[kept >= 0]).tolist():
        if probs[c].max() < coarse_thresh:
            continue
        components, count = ndimage.label((kept == c).cpu().numpy(), structure=eight)
        masks, boxes, points = [], [], []
        for index in range(1, count + 1):
            region = torch.from_numpy(components == index).to(probs.device)
            if int(region.sum()) < minimal_area:
                continue
            ys, xs = torch.nonzero(region, as_tuple=True)
            peak = int(torch.argmax(probs[c] * region))  # the first peak in raster order, as the reference
            masks.append(region)
            boxes.append(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float())
            points.append(torch.tensor([peak % region.shape[1], peak // region.shape[1]], dtype=torch.float32))
        if masks:
            out[c] = RegionPrompts(torch.stack(masks), torch.stack(boxes), torch.stack(points).to(probs.device))
    return out


def _to_sam_frame(xy: torch.Tensor, grid: tuple[int, int], input_size: int) -> torch.Tensor:
    """Coordinates on a grid (h, w) scaled to SAM's input, as ``ResizeLongestSide.apply_coords``."""
    new_h, new_w = resized_for_sam(grid[0], grid[1], input_size)
    scale = torch.tensor([new_w / grid[1], new_h / grid[0]], dtype=xy.dtype, device=xy.device)
    return (xy.reshape(*xy.shape[:-1], -1, 2) * scale).reshape(xy.shape)


def _dense_prompt(plane: torch.Tensor, image_size: tuple[int, int], mask_size: int, coarse_thresh: float):
    """One class's probabilities as the decoder's mask input [1, m, m]: resized to long side m, zero-padded."""
    h, w = resized_for_sam(image_size[0], image_size[1], mask_size)
    x = F.interpolate(plane[None, None], size=(h, w), mode="bilinear", align_corners=False)[0]
    x = F.pad(x, (0, mask_size - w, 0, mask_size - h))
    return torch.where(x > coarse_thresh, SAM_MASK_COFF * x, torch.zeros_like(x))


def _decode(
    decoder: SamPromptDecoder, embedding: torch.Tensor, prompts: RegionPrompts, dense: torch.Tensor, input_size: int
):
    """One mask's logits [n, m, m] and predicted IoU [n] per region."""
    grid = tuple(prompts.masks.shape[1:])
    points = _to_sam_frame(prompts.points, grid, input_size)[:, None]
    boxes = _to_sam_frame(prompts.boxes, grid, input_size)
    sparse, dense_embedding = decoder.prompt_encoder(
        points=(points, torch.ones(points.shape[:2], device=points.device)), boxes=boxes, masks=dense
    )
    logits, iou = decoder.mask_decoder(
        image_embeddings=embedding,
        image_pe=decoder.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense_embedding,
        multimask_output=False,
    )
    return logits[:, 0], iou[:, 0]


def _to_image(logits: torch.Tensor, input_size: int, seen: tuple[int, int], image_size: tuple[int, int]):
    """Low-resolution mask logits [n, m, m] to the image [n, H, W]: ``Sam.postprocess_masks`` to the size of
    the image SAM saw (``seen``), then to the image's if that differs, as the reference does."""
    resized = resized_for_sam(seen[0], seen[1], input_size)
    x = F.interpolate(logits[None], size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = F.interpolate(x[..., : resized[0], : resized[1]], size=seen, mode="bilinear", align_corners=False)
    if seen != image_size:
        x = F.interpolate(x, size=image_size, mode="bilinear", align_corners=False)
    return x[0]


def sam_refine(
    probs: torch.Tensor,
    labels: torch.Tensor,
    embedding: torch.Tensor,
    decoder: SamPromptDecoder,
    input_size: int,
    *,
    coarse_thresh: float = TRIDENT_COARSE_THRESH,
    sam_iou_thresh: float = TRIDENT_SAM_IOU_THRESH,
    minimal_area: int = TRIDENT_MINIMAL_AREA,
    sam_image_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined labels [H, W] and their confidence [H, W] from the coarse probabilities ``probs`` [C, H, W],
    labels ``labels`` [H, W] and SAM's image ``embedding`` [1, 256, g, g] of the image at ``input_size``;
    ``sam_image_size`` is the size of the image SAM saw when it was resized first (default (H, W))."""
    C, H, W = probs.shape
    small = (H // REGION_DOWN_RATIO, W // REGION_DOWN_RATIO)
    if min(small) == 0:  # a one-pixel sliver has no regions to prompt with
        return labels, probs.max(dim=0).values
    labels_small = F.interpolate(labels[None, None].float(), size=small, mode="nearest")[0, 0].long()
    probs_small = F.interpolate(probs[None], size=small, mode="bilinear", align_corners=False)[0]
    regions = class_regions(labels_small, probs_small, coarse_thresh=coarse_thresh, minimal_area=minimal_area)
    seen = tuple(sam_image_size or (H, W))
    mask_size = decoder.mask_input_size[0]
    refined = torch.zeros_like(probs)
    for c, prompts in regions.items():
        dense = _dense_prompt(probs_small[c], (H, W), mask_size, coarse_thresh)
        logits, iou = _decode(decoder, embedding, prompts, dense, input_size)
        keep = iou > sam_iou_thresh
        if not keep.any():
            continue
        up = _to_image(logits[keep], input_size, seen, (H, W))
        covered = (up > 0).any(dim=0)  # SAM's mask threshold on the logits
        refined[c] = (up.sigmoid() * probs[c]).amax(dim=0) * covered
    score, refined_labels = refined.max(dim=0)
    untouched = refined.sum(dim=0) == 0
    coarse_conf = probs.max(dim=0).values
    return torch.where(untouched, labels, refined_labels.to(labels.dtype)), torch.where(untouched, coarse_conf, score)
