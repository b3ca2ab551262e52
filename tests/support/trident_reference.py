"""Trident's arithmetic written out from the reference code (YuHengsss/Trident: ``trident.py``,
``seg_utils/utils.py`` ``preprocess_image``, ``open_clip/transformer.py`` ``custom_attn`` / ``guidance_attn`` /
``get_sam_sim``, ``segment_anything`` ``Attention`` with ``return_attn`` and ``ResizeLongestSide``), for the
equivalence tests. It uses the models' weights and timm's own blocks, nothing of maskclip_core's Trident code.

Where the reference would give NaN (a DINO row whose every similarity falls below the threshold, its own
included) the tests' random weights never get there, so the formula is kept as written.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from support.vit_reference import _standard_block, layer_norm, out_proj, project, split_qkv, until_last_block

SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)


def preprocess_image(image, stride=16, slide_crop=336):
    longer_side = max(image.shape[2:])
    h, w = image.shape[2:]
    if h % stride == 0 and w % stride == 0:
        return image
    if longer_side % stride != 0:
        dst_longer = (longer_side // stride + 1) * stride
    else:
        dst_longer = longer_side
    new_h = int(h * dst_longer / longer_side)
    new_w = int(w * dst_longer / longer_side)
    if new_h % stride != 0:
        new_h = (new_h // stride + 1) * stride
    if new_w % stride != 0:
        new_w = (new_w // stride + 1) * stride
    new_h, new_w = max(new_h, slide_crop), max(new_w, slide_crop)
    return F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False)


def windowed_imgs(img, patch_size, stride, crop):
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    crops, locs = [], []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            crops.append(img[:, :, y1:y2, x1:x2])
            locs.append(torch.tensor([y1 // patch_size, x1 // patch_size, y2 // patch_size, x2 // patch_size]))
    return torch.cat(crops), locs, (h_grids, w_grids)


def sam_input(image: np.ndarray, img_size: int):
    """ResizeLongestSide (Pillow bilinear on uint8), Sam.preprocess (normalise, pad bottom/right)."""
    oldh, oldw = image.shape[:2]
    scale = img_size * 1.0 / max(oldh, oldw)
    newh, neww = int(oldh * scale + 0.5), int(oldw * scale + 0.5)
    resized = np.array(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    x = (x - SAM_MEAN) / SAM_STD
    x = F.pad(x, (0, img_size - neww, 0, img_size - newh))
    return x[None], (newh, neww)


def _rel_pos(q_size, k_size, rel_pos):
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    assert rel_pos.shape[0] == max_rel_dist
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def sam_last_attn_and_v(encoder, pixels):
    """SAM's image encoder up to its last block (timm's blocks), then segment_anything's Attention with
    add_decomposed_rel_pos written out: attn [1, heads, N, N], v [1, heads, H, W, d]."""
    x = encoder.patch_embed(pixels)
    x = x + encoder.pos_embed
    for blk in encoder.blocks[:-1]:
        x = blk(x)
    last = encoder.blocks[-1]
    x = last.norm1(x)
    attn_layer = last.attn
    B, H, W, _ = x.shape
    heads = attn_layer.num_heads
    qkv = attn_layer.qkv(x).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * heads, H * W, -1).unbind(0)
    attn = (q * attn_layer.scale) @ k.transpose(-2, -1)
    Rh, Rw = _rel_pos(H, H, attn_layer.rel_pos_h), _rel_pos(W, W, attn_layer.rel_pos_w)
    r_q = q.reshape(B * heads, H, W, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    attn = (attn.view(B * heads, H, W, H, W) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
        B * heads, H * W, H * W
    )
    attn = attn.softmax(dim=-1)
    return attn.view(B, heads, H * W, H * W), v.view(B, heads, H, W, -1)


def get_sam_feat(encoder, image, img_size, stride=16):
    pixels, input_size = sam_input(image, img_size)
    sam_attn, sam_v = sam_last_attn_and_v(encoder, pixels)
    heads = sam_attn.shape[1]
    hw = img_size // stride
    vh, vw = input_size[0] // stride, input_size[1] // stride
    sam_attn = sam_attn.view(1, heads, hw, hw, hw, hw)[:, :, :vh, :vw, :vh, :vw]
    sam_attn = sam_attn.flatten(2, 3).flatten(3, 4)
    return sam_attn, sam_v[:, :, :vh, :vw, :], vh, vw


def get_sam_sim(sam_v, sam_attn, cos_fac, heads, refine_neg_cos=True):
    sam_v = F.normalize(sam_v.flatten(2, 3), dim=-1)
    sam_sim = torch.einsum("b h m c, b h n c -> b h m n", sam_v, sam_v)
    sim_thresh = cos_fac * sam_sim.mean(dim=1, keepdim=True).mean(dim=-1, keepdim=True)
    if not refine_neg_cos:
        sim_thresh = torch.where(sim_thresh < 0.0, 0.6, sim_thresh)
    sim_thresh = torch.where(sim_thresh > 0.9, 0.9, sim_thresh)
    refined = torch.where(sam_sim > sim_thresh, sam_attn, torch.zeros_like(sam_attn)).mean(dim=1)
    similarity = refined / refined.sum(dim=-1, keepdim=True)
    return similarity.unsqueeze(0).repeat(1, heads, 1, 1)


def _scaled_positions(pos, gh, gw):
    """open_clip's / DINO's ``interpolate_pos_encoding`` in the reference: bicubic with
    ``scale_factor=((g + 0.1) / N)`` used as given."""
    n = int(math.isqrt(pos.shape[0]))
    grid = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / n, (gw + 0.1) / n), mode="bicubic")
    assert grid.shape[-2:] == (gh, gw)
    return grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)


def clip_until_last_block_scaled(model, pixels):
    """``until_last_block`` with the reference's scaled positional embeddings."""
    sd = model.state_dict()
    visual = model.visual
    blocks = visual.transformer.resblocks
    quick = type(blocks[0].mlp.gelu).__name__ == "QuickGELU"
    heads = blocks[0].attn.num_heads
    patch = visual.patch_size[0]
    B, _, H, W = pixels.shape
    gh, gw = H // patch, W // patch
    w = sd["visual.conv1.weight"]
    x = F.unfold(pixels, kernel_size=patch, stride=patch).transpose(1, 2) @ w.reshape(w.shape[0], -1).T
    x = torch.cat([sd["visual.class_embedding"].expand(B, 1, -1), x], 1)
    pos = sd["visual.positional_embedding"]
    if (gh, gw) != tuple(visual.grid_size):
        pos = torch.cat([pos[:1], _scaled_positions(pos[1:], gh, gw)])
    x = layer_norm(x + pos, sd, "visual.ln_pre")
    for i in range(len(blocks) - 1):
        x = _standard_block(sd, f"visual.transformer.resblocks.{i}", x, heads, quick)
    return sd, x, (gh, gw), f"visual.transformer.resblocks.{len(blocks) - 1}", heads


def dino_features_scaled(dino, pixels):
    """DINO's torch-hub ``get_intermediate_layers(x)[0]`` (prepare_tokens with scaled positions, the blocks,
    the final norm) on a timm DINO's weights: [B, 1 + N, C]."""
    p = dino.patch_embed.patch_size[0]
    proj = dino.patch_embed.proj
    x = F.conv2d(pixels, proj.weight, proj.bias, stride=p).flatten(2).transpose(1, 2)
    x = torch.cat([dino.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    pos = dino.pos_embed[0]
    gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
    if (gh, gw) != tuple(dino.patch_embed.grid_size):
        pos = torch.cat([pos[:1], _scaled_positions(pos[1:], gh, gw)])
    x = x + pos
    for blk in dino.blocks:
        x = blk(x)
    return dino.norm(x)


def reference_trident(
    clip,
    dino,
    dino_norm,
    sam_encoder,
    src_img,
    image,
    clip_norm,
    *,
    crop=336,
    stride=224,
    beta=1.2,
    gamma=3.0,
    cos_fac=1.2,
    refine_neg_cos=True,
    scaled_positions=False,
):
    """Trident's features [D, vh, vw] (before the text classifier): ``src_img`` [1, 3, h, w] is the
    CLIP-normalised image, ``image`` the RGB uint8 array SAM reads, ``dino`` a timm ViT with its
    ``dino_norm`` (mean, std)."""
    patch = clip.visual.patch_size[0]
    sam_attn, sam_v, vh, vw = get_sam_feat(sam_encoder, image, sam_encoder.patch_embed.img_size[0])
    processed = preprocess_image(src_img, patch, crop)
    feat_h, feat_w = processed.shape[-2] // patch, processed.shape[-1] // patch
    img_batch, locs, (win_h, win_w) = windowed_imgs(processed, patch, stride, crop)

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in clip_norm)
    imnet_mean, imnet_std = (torch.tensor(v).view(1, 3, 1, 1) for v in dino_norm)
    imgs_norm = (img_batch * std + mean - imnet_mean) / imnet_std
    vfm_p = dino.patch_embed.patch_size[0]
    if scaled_positions:
        feat = dino_features_scaled(dino, imgs_norm)[:, 1:]
    else:
        feat = dino.get_intermediate_layers(imgs_norm, n=1, norm=True)[0]
    nb = feat.shape[0]
    vfm_h, vfm_w = imgs_norm.shape[-2] // vfm_p, imgs_norm.shape[-1] // vfm_p
    ex_feats = feat.reshape(nb, vfm_h, vfm_w, -1).permute(0, 3, 1, 2)

    # custom_attn
    sd, x, grid, last, heads = (clip_until_last_block_scaled if scaled_positions else until_last_block)(clip, img_batch)
    _, _, v = split_qkv(sd, last, layer_norm(x[:, 1:], sd, f"{last}.ln_1"))
    bsz, _, embed = v.shape
    head_dim = embed // heads
    v = v.permute(1, 0, 2).contiguous().view(-1, bsz * heads, head_dim).transpose(0, 1)
    B, C, H, W = ex_feats.shape
    q_k = F.normalize(ex_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.unsqueeze(1).repeat(1, heads, 1, 1).reshape(bsz * heads, H * W, H * W)
    attn_weights = F.softmax(mask, dim=-1)
    v = v.reshape(bsz * heads, grid[0], grid[1], head_dim).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(H, W), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(bsz * heads, H * W, head_dim)
    x = torch.bmm(attn_weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed)
    x = out_proj(sd, last, x)  # L, B, D

    # guidance_attn
    token_size = grid
    v = x.view(-1, bsz, heads, head_dim).permute(1, 2, 0, 3).contiguous()
    v = v.permute(2, 0, 1, 3).flatten(2)
    v_img = v.view(vfm_h, vfm_w, bsz, embed).permute(2, 3, 0, 1).contiguous()
    if v_img.shape[-1] % token_size[1] != 0:
        ratio = int(round(vfm_h / token_size[0]))
        v_img = F.interpolate(
            v_img, size=(token_size[0] * ratio, token_size[1] * ratio), mode="bilinear", align_corners=False
        )
    else:
        ratio = v_img.shape[-1] // token_size[1]
    dst_v = v.new_zeros(1, embed, feat_h * ratio, feat_w * ratio)
    count = v.new_zeros(1, 1, feat_h * ratio, feat_w * ratio)
    for h_idx in range(win_h):
        for w_idx in range(win_w):
            c = locs[h_idx * win_w + w_idx]
            dst_v[0, :, c[0] * ratio : c[2] * ratio, c[1] * ratio : c[3] * ratio] += v_img[h_idx * win_w + w_idx]
            count[:, :, c[0] * ratio : c[2] * ratio, c[1] * ratio : c[3] * ratio] += 1
    dst_v = dst_v / count
    dst_v = F.interpolate(dst_v, size=(vh, vw), mode="bilinear", align_corners=False)
    weights = get_sam_sim(sam_v, sam_attn, cos_fac, heads, refine_neg_cos)
    dst_v = dst_v.view(1, heads, head_dim, -1).permute(0, 1, 3, 2).contiguous()
    out = torch.matmul(weights, dst_v).permute(2, 0, 1, 3).flatten(2)  # M, 1, D
    out = project(sd, out.permute(1, 0, 2))[0]  # ln_post, proj: [M, Dout]
    return out.T.reshape(-1, vh, vw)


# --- SAM refinement (seg_utils/utils.py sam_refinement and its helpers, with segment_anything's SamPredictor) ---


class _EncoderSize(torch.nn.Module):
    """Stands in for SAM's image encoder in ``Sam``: the predictor reads only its ``img_size``; the image
    embedding is set on the predictor directly."""

    def __init__(self, img_size: int):
        super().__init__()
        self.img_size = img_size


def sam_predictor(prompt_encoder, mask_decoder, img_size, features, original_size):
    """``SamPredictor`` as after ``set_image``: the given embedding, sizes as ``set_image`` records them."""
    from segment_anything.modeling import Sam
    from segment_anything.predictor import SamPredictor

    sam = Sam(_EncoderSize(img_size), prompt_encoder, mask_decoder, pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])
    predictor = SamPredictor(sam)
    predictor.features = features
    predictor.original_size = tuple(original_size)
    predictor.input_size = predictor.transform.get_preprocess_shape(original_size[0], original_size[1], img_size)
    predictor.is_image_set = True
    return predictor


def _masks_to_boxes(masks):
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes.append(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float())
    return torch.stack(boxes)


def split_connected_regions(segmentation, seg_logits, split_last=False, minimal_area=0, coarse_thresh=0.0):
    from skimage import measure

    C, H, W = segmentation.shape
    regions, boxes, clip_box_score, points = {}, {}, {}, {}
    for c in range(C):
        if not split_last and c == C - 1:
            continue
        regions[c], points[c], clip_box_score[c], boxes[c] = [], [], [], []
        class_mask = segmentation[c]
        class_logit = seg_logits[c]
        if class_logit.max() < coarse_thresh:
            continue
        labeled_mask = measure.label(class_mask, connectivity=2)  # 8-connectivity
        num_regions = labeled_mask.max()
        for region_label in range(1, num_regions + 1):
            region_mask = (labeled_mask == region_label).astype(np.uint8)
            if region_mask.sum() < minimal_area:
                continue
            region_score = class_logit[region_mask.astype(bool)].mean()
            region_logit = class_logit * torch.tensor(region_mask)
            max_pos = torch.argmax(region_logit)
            max_h, max_w = max_pos // class_logit.size(1), max_pos % class_logit.size(1)
            points[c].append(torch.tensor([max_w, max_h]))
            regions[c].append(region_mask)
            clip_box_score[c].append(region_score)
        if len(regions[c]):
            regions[c] = torch.from_numpy(np.stack(regions[c]))
        if isinstance(regions[c], list):
            boxes[c] = regions[c]
        else:
            boxes[c] = _masks_to_boxes(regions[c])
    return regions, boxes, clip_box_score, points


def map_refinement_coarse(refined_masks, refined_logits, coarse_boxes, seg_logits, img_shape):
    refined_whole_logits = torch.zeros([len(coarse_boxes), img_shape[0], img_shape[1]])
    cumsum = 0
    for i in range(len(coarse_boxes)):
        if isinstance(coarse_boxes[i], list):
            continue
        tmp_cls_num = coarse_boxes[i].shape[0]
        tmp_cls_mask = refined_masks[cumsum : cumsum + tmp_cls_num, 0].sum(dim=0).bool()
        tmp_cls_logit = (refined_logits[cumsum : cumsum + tmp_cls_num, 0] * seg_logits[i]).max(dim=0)
        refined_whole_logits[i] = tmp_cls_logit.values * tmp_cls_mask
        cumsum += tmp_cls_num
    refined_whole_masks = refined_whole_logits.argmax(0, keepdim=True)
    return refined_whole_masks, refined_whole_logits


def map_failed_regions(refined_masks, refined_logits, failed_regions, seg_logits, segmentation):
    failed_area = failed_regions.sum(dim=0, keepdim=True) != 0
    failed_logit = failed_area * seg_logits
    refined_logits = torch.where(failed_logit > refined_logits, failed_logit, refined_logits)
    refined_masks = torch.where(
        failed_logit.max(dim=0, keepdim=True)[0] > refined_logits.max(dim=0, keepdim=True)[0],
        segmentation,
        refined_masks,
    )
    return refined_masks, refined_logits


def sam_refinement(
    img,
    segmentations,
    seg_logits,
    num_classes,
    predictor,
    coarse_thresh=0.0,
    minimal_area=0,
    sam_mask_coff=0.005,
    sam_iou_thresh=0.9,
):
    """The reference's ``sam_refinement``: ``img`` an RGB array [H, W, 3], ``segmentations`` [1, H, W] long,
    ``seg_logits`` [C, H, W] probabilities."""
    down_ratio = 2
    dh, dw = seg_logits.shape[-2] // down_ratio, seg_logits.shape[-1] // down_ratio
    segmentations_down = F.interpolate(segmentations.unsqueeze(0).half(), [dh, dw], mode="nearest").squeeze(0).long()
    seg_logits_down = F.interpolate(seg_logits.unsqueeze(0), [dh, dw], mode="bilinear", align_corners=False).squeeze(0)
    if coarse_thresh > 0:
        segmentations_down[seg_logits_down.max(0, keepdim=True)[0] < coarse_thresh] = num_classes
        cls_pred = F.one_hot(segmentations_down.squeeze(0).long(), num_classes=num_classes + 1).permute(2, 0, 1).float()
        split_last = False
    else:
        cls_pred = F.one_hot(segmentations_down.squeeze(0).long(), num_classes=num_classes).permute(2, 0, 1).float()
        split_last = True
    coarse_regions, coarse_boxes, _, coarse_points = split_connected_regions(
        cls_pred.numpy(), seg_logits_down, split_last=split_last, minimal_area=minimal_area, coarse_thresh=coarse_thresh
    )
    mask_size = predictor.model.prompt_encoder.mask_input_size[0]  # 256 for SAM
    combined_boxes, cls_wise_masks, cls_wise_scores, cls_wise_logits, failed_regions = [], [], [], [], []
    predictor.features = predictor.features.float()
    for i in range(num_classes):
        tmp_r = coarse_regions.get(i, [])
        tmp_b = coarse_boxes.get(i, [])
        tmp_p = coarse_points.get(i, [])
        if isinstance(tmp_r, list):
            continue
        cls_wise_r = seg_logits_down[i].unsqueeze(0)
        new_h, new_w = predictor.transform.get_preprocess_shape(img.shape[0], img.shape[1], mask_size)
        cls_wise_r = F.interpolate(cls_wise_r.unsqueeze(0), [new_h, new_w], mode="bilinear", align_corners=False)
        cls_wise_r = F.pad(cls_wise_r.squeeze(0), (0, mask_size - new_w, 0, mask_size - new_h), value=0)
        cls_wise_r = torch.where(
            cls_wise_r > coarse_thresh, sam_mask_coff * cls_wise_r, torch.tensor(0.0).type_as(segmentations)
        ).float()
        cls_wise_b = predictor.transform.apply_boxes_torch(tmp_b.type_as(segmentations), [dh, dw]).float()
        cls_wise_p = torch.stack(tmp_p).type_as(segmentations)
        cls_wise_p = predictor.transform.apply_coords_torch(cls_wise_p, [dh, dw]).unsqueeze(1)
        cls_wise_mask, cls_wise_score, cls_wise_logit = predictor.predict_torch(
            point_coords=cls_wise_p.float(),
            point_labels=torch.ones([cls_wise_p.shape[0], 1]).float(),
            boxes=cls_wise_b,
            mask_input=cls_wise_r,
            multimask_output=False,
        )
        valid_masks = (cls_wise_score > sam_iou_thresh).squeeze(-1)
        if valid_masks.sum() != tmp_r.shape[0]:
            failed_regions.append(tmp_r[~valid_masks])
        if valid_masks.sum() == 0:
            coarse_boxes[i] = []
            continue
        cls_wise_masks.append(cls_wise_mask[valid_masks])
        cls_wise_scores.append(cls_wise_score[valid_masks])
        cls_wise_logits.append(cls_wise_logit[valid_masks])
        combined_boxes.append(tmp_b[valid_masks])
        coarse_boxes[i] = coarse_boxes[i][valid_masks]
    if len(combined_boxes) == 0:
        return segmentations, None, seg_logits, combined_boxes
    masks, logits = torch.cat(cls_wise_masks, dim=0), torch.cat(cls_wise_logits, dim=0)
    logits = predictor.model.postprocess_masks(logits, predictor.input_size, predictor.original_size)
    if logits.shape[-1] != img.shape[1] or logits.shape[-2] != img.shape[0]:
        logits = F.interpolate(logits, img.shape[:2], mode="bilinear", align_corners=False)
        masks = logits > predictor.model.mask_threshold
    refined_masks, refined_logits = map_refinement_coarse(masks, logits.sigmoid(), coarse_boxes, seg_logits, img.shape)
    refined_masks = torch.where(refined_logits.sum(dim=0, keepdim=True) == 0, segmentations, refined_masks)
    if len(failed_regions):
        failed_regions = torch.cat(failed_regions, dim=0)
        failed_regions = F.interpolate(failed_regions.unsqueeze(0).float(), img.shape[:2], mode="nearest").squeeze(0)
        refined_masks, refined_logits = map_failed_regions(
            refined_masks, refined_logits, failed_regions.long(), seg_logits, segmentations
        )
    return refined_masks, None, refined_logits, combined_boxes
