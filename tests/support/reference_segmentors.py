"""The reference segmentors' arithmetic, rewritten from their code for equivalence tests of the benchmark path.

Written from SCLIP's ``clip_segmentor.py`` (wangf3014/SCLIP) and its descendants ``naclip.py`` (sinahmr/NACLIP),
``clearclip_segmentor.py`` (mc-lan/ClearCLIP) and ``proxyclip_segmentor.py`` (mc-lan/ProxyCLIP), with their
``clip/model.py`` / ``open_clip/transformer.py`` last blocks, NACLIP's ``pamr.py`` and DINO's torch-hub positional
embeddings; nothing here calls the project's inference code (only its model loading, and the explicit matmuls of
``support.vit_reference`` for the unchanged blocks). One image at a time, as the references' batch size 1:

- mmsegmentation's test pipeline: ``Resize(scale=(2048, S), keep_ratio=True)`` (mmcv ``imrescale``: sizes
  ``int(x * s + 0.5)``, OpenCV bilinear on uint8), ``SegDataPreProcessor`` (mean / std in 0..255);
- the query features: each query in open_clip's 80 ImageNet templates, encoded, normalised, averaged,
  normalised; the queries in the class file's order (background words first: class 0);
- ``forward_slide``: windows (the last shifted back to the edge), each window's logits (cosine with every
  query, on the floored patch grid) bilinearly resized to the window (ClearCLIP: padded centred to the patch
  size, ProxyCLIP to 56, the padding cut off after), summed and divided by the count; NACLIP's whole image:
  resized to the resized image; then resized to the original size; NACLIP's PAMR there;
- ``postprocess_result``: softmax of ``logit_scale`` x logits over the queries, each class the max over its
  queries, SCLIP's ``area_thd``, argmax (first index on ties), ``prob_thd`` -> class 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from support.vit_reference import (
    _mlp,
    _standard_block,
    layer_norm,
    merge_heads,
    out_proj,
    project,
    split_heads,
    split_qkv,
)

MEAN = torch.tensor([122.771, 116.746, 104.094]).view(1, 3, 1, 1)
STD = torch.tensor([68.501, 66.632, 70.323]).view(1, 3, 1, 1)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ReferenceSetup:
    """One method's reference on one suite: its segmentor's arguments and its config's resize."""

    method: str  # maskclip, sclip, naclip, clearclip, proxyclip
    short_side: int
    slide_crop: int  # 0: the whole image
    slide_stride: int
    logit_scale: float
    area_thd: float | None = None
    pamr_steps: int = 0
    pamr_stride: tuple[int, ...] = (8, 16)


# --- text ---------------------------------------------------------------------------------------------------


def query_features(model, tokenizer, query_words: list[str]) -> torch.Tensor:
    """The references' ``__init__``: per query, its 80 prompts encoded and normalised, averaged, normalised."""
    features = []
    with torch.no_grad():
        for qw in query_words:
            feature = model.encode_text(tokenizer([temp(qw) for temp in OPENAI_IMAGENET_TEMPLATES]))
            feature = feature / feature.norm(dim=-1, keepdim=True)
            feature = feature.mean(dim=0)
            features.append((feature / feature.norm())[None])
    return torch.cat(features, dim=0)


def class_file(classes: tuple[tuple[str, ...], ...], background: tuple[str, ...] | None) -> list[list[str]]:
    """The rows of a reference's ``cls_*.txt``: background words first (class 0), then the classes."""
    return ([list(background)] if background else []) + [list(c) for c in classes]


# --- image --------------------------------------------------------------------------------------------------


def mmseg_input(image: np.ndarray, short_side: int) -> torch.Tensor:
    """``Resize(scale=(2048, short_side), keep_ratio=True)`` and ``SegDataPreProcessor`` -> [1, 3, h, w]."""
    h, w = image.shape[:2]
    scale = min(2048 / max(h, w), short_side / min(h, w))
    new_w, new_h = int(w * float(scale) + 0.5), int(h * float(scale) + 0.5)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float()
    return (x - MEAN) / STD


# --- encoders (the last blocks as the references write them) ------------------------------------------------


def interpolate_pos_encoding(pos: torch.Tensor, w: int, h: int, patch: int) -> torch.Tensor:
    """``VisionTransformer.interpolate_pos_encoding`` of SCLIP / NACLIP / ClearCLIP / ProxyCLIP and DINO's hub
    models (``w``, ``h``: the input's rows and columns in pixels, named as they name them); [1 + N, C] ->
    [1 + w0 * h0, C]."""
    N = pos.shape[0] - 1
    npatch = (w // patch) * (h // patch)
    if npatch == N and w == h:
        return pos
    dim = pos.shape[-1]
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    side = int(math.sqrt(N))
    patch_pos = F.interpolate(
        pos[1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
    )
    assert int(w0) == patch_pos.shape[-2] and int(h0) == patch_pos.shape[-1]
    return torch.cat([pos[:1], patch_pos.permute(0, 2, 3, 1).reshape(-1, dim)])


def _clip_last_block_input(model, img: torch.Tensor):
    """conv1 (floors), class token, the references' positional embeddings, ln_pre, all blocks but the last."""
    sd = model.state_dict()
    visual = model.visual
    blocks = visual.transformer.resblocks
    patch = visual.patch_size[0]
    B, _, w, h = img.shape
    x = F.conv2d(img, sd["visual.conv1.weight"], stride=patch)
    grid = tuple(x.shape[-2:])
    x = x.reshape(B, x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([sd["visual.class_embedding"].expand(B, 1, -1), x], 1)
    x = layer_norm(x + interpolate_pos_encoding(sd["visual.positional_embedding"], w, h, patch), sd, "visual.ln_pre")
    quick = type(blocks[0].mlp.gelu).__name__ == "QuickGELU"
    heads = blocks[0].attn.num_heads
    for i in range(len(blocks) - 1):
        x = _standard_block(sd, f"visual.transformer.resblocks.{i}", x, heads, quick)
    return sd, x, grid, f"visual.transformer.resblocks.{len(blocks) - 1}", heads, quick


def _gaussian_addition(n_patches: tuple[int, int], std: float = 5.0) -> torch.Tensor:
    """NACLIP's ``gaussian_window`` convolved over one-hot maps (``get_attention_addition``), class token 0."""
    dim1, dim2 = n_patches
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in (dim1 * 2 - 1, dim2 * 2 - 1):
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim))
    window = torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2)).permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(m.view(-1, dim1, dim2).unsqueeze(1), window[None, None], padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    out = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
    return torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), out])


def clip_dense(model, method: str, img: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch features [B, N, D] (before normalisation) of the method's last block, and the patch grid."""
    sd, x, grid, last, heads, quick = _clip_last_block_input(model, img)
    y = layer_norm(x, sd, f"{last}.ln_1")
    q, k, v = (split_heads(t, heads) for t in split_qkv(sd, last, y))
    scale = q.shape[-1] ** -0.5
    if method == "maskclip":  # chongzhou96/MaskCLIP: v through out_proj, the residual, the FFN
        v = out_proj(sd, last, merge_heads(v)) + x
        x = v + _mlp(sd, last, layer_norm(v, sd, f"{last}.ln_2"), quick)
    elif method == "sclip":  # csa: softmax(qq) + softmax(kk), residual and FFN kept
        attn = F.softmax(q @ q.transpose(-1, -2) * scale, dim=-1) + F.softmax(k @ k.transpose(-1, -2) * scale, dim=-1)
        x = x + out_proj(sd, last, merge_heads(attn @ v))
        x = x + _mlp(sd, last, layer_norm(x, sd, f"{last}.ln_2"), quick)
    elif method == "naclip":  # arch 'reduced', attn 'naclip': softmax(kk scale + addition), nothing else
        attn = F.softmax(k @ k.transpose(-1, -2) * scale + _gaussian_addition(grid), dim=-1)
        x = out_proj(sd, last, merge_heads(attn @ v))
    elif method == "clearclip":  # model_type 'ClearCLIP', ignore_residual: softmax(qq) v only
        x = out_proj(sd, last, merge_heads(F.softmax(q @ q.transpose(-1, -2) * scale, dim=-1) @ v))
    else:
        raise ValueError(method)
    return project(sd, x)[:, 1:], grid


def dino_features(proxy_model, imgs_norm: torch.Tensor) -> torch.Tensor:
    """DINO's hub ``get_intermediate_layers(x)[0]`` patch tokens as [B, C, I, J]: patch embedding, class token,
    its ``interpolate_pos_encoding``, the blocks, the final norm."""
    B, _, w, h = imgs_norm.shape
    patch = proxy_model.patch_embed.patch_size[0]
    x = F.conv2d(imgs_norm, proxy_model.patch_embed.proj.weight, proxy_model.patch_embed.proj.bias, stride=patch)
    I, J = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([proxy_model.cls_token.expand(B, -1, -1), x], dim=1)
    x = x + interpolate_pos_encoding(proxy_model.pos_embed[0], w, h, patch)[None]
    for blk in proxy_model.blocks:
        x = blk(x)
    x = proxy_model.norm(x)
    return x[:, 1:].reshape(B, I, J, -1).permute(0, 3, 1, 2)


def proxyclip_dense(model, proxy_model, img: torch.Tensor, beta: float = 1.2, gamma: float = 3.0):
    """ProxyCLIP's ``forward_feature`` + ``custom_attn`` (DINO proxy) -> patch features [B, I*J, D], (I, J)."""
    # Its UnNormalize takes CLIP's 0..1 mean / std off mmseg's normalisation (the same colours to 1e-6).
    pixels01 = img * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    imgs_norm = (pixels01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ex_feats = dino_features(proxy_model, imgs_norm)
    B, C, H, W = ex_feats.shape
    sd, x, grid, last, heads, _ = _clip_last_block_input(model, img)
    _, _, v = split_qkv(sd, last, layer_norm(x, sd, f"{last}.ln_1"))
    head_dim = v.shape[-1] // heads
    q_k = F.normalize(ex_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    attn = F.softmax(similarity.unsqueeze(1).repeat(1, heads, 1, 1), dim=-1)  # [B, heads, M, M]
    vh = split_heads(v, heads)[:, :, 1:]  # [B, heads, N, d]
    vh = vh.reshape(B * heads, grid[0], grid[1], head_dim).permute(0, 3, 1, 2)
    vh = F.interpolate(vh, size=(H, W), mode="bilinear", align_corners=False)
    vh = vh.permute(0, 2, 3, 1).reshape(B, heads, H * W, head_dim)
    out = project(sd, out_proj(sd, last, merge_heads(attn @ vh)))
    return out, (H, W)


# --- the segmentor ------------------------------------------------------------------------------------------


class ReferenceSegmentor:
    """``forward_slide`` / ``forward_feature`` / ``predict`` / ``postprocess_result`` of the references."""

    def __init__(
        self, setup: ReferenceSetup, model, rows: list[list[str]], features: torch.Tensor, proxy_model=None
    ) -> None:
        """``features``: :func:`query_features` of the rows' words in order."""
        self.setup = setup
        self.model = model
        self.proxy_model = proxy_model
        self.query_idx = torch.tensor([i for i, row in enumerate(rows) for _ in row])
        self.query_features = features

    def forward_feature(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        with torch.no_grad():
            if self.setup.method == "proxyclip":
                features, grid = proxyclip_dense(self.model, self.proxy_model, img)
            else:
                features, grid = clip_dense(self.model, self.setup.method, img)
        features = features / features.norm(dim=-1, keepdim=True)
        logits = features @ self.query_features.T
        logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], *grid)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _pad_multiple(self) -> int | None:
        return {"clearclip": self.model.visual.patch_size[0], "proxyclip": 56}.get(self.setup.method)

    def forward_slide(self, img: torch.Tensor) -> torch.Tensor:
        stride, crop = self.setup.slide_stride, self.setup.slide_crop
        _, _, h_img, w_img = img.shape
        h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
        w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
        preds = img.new_zeros((1, len(self.query_idx), h_img, w_img))
        count = img.new_zeros((1, 1, h_img, w_img))
        multiple = self._pad_multiple()
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * stride, w_idx * stride
                y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                crop_img = img[:, :, y1:y2, x1:x2]
                H, W = crop_img.shape[2:]
                pad = _centred_padding(H, W, multiple) if multiple else (0, 0, 0, 0)
                if any(pad):
                    crop_img = F.pad(crop_img, pad)
                logits = self.forward_feature(crop_img, tuple(crop_img.shape[2:]))
                if any(pad):
                    logits = logits[:, :, pad[2] : pad[2] + H, pad[0] : pad[0] + W]
                preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count

    def seg_logits(self, image: np.ndarray) -> torch.Tensor:
        """``predict`` up to the logits at the original size (NACLIP's PAMR applied) -> [Q, H, W]."""
        inputs = mmseg_input(image, self.setup.short_side)
        ori = image.shape[:2]
        if self.setup.slide_crop > 0:
            logits = self.forward_slide(inputs)
        else:
            logits = self.forward_feature(inputs, tuple(inputs.shape[2:]))
        logits = F.interpolate(logits, size=ori, mode="bilinear", align_corners=False)
        if self.setup.pamr_steps > 0:
            img = F.interpolate(inputs, size=ori, mode="bilinear", align_corners=False)
            logits = pamr_reference(img, logits, self.setup.pamr_steps, self.setup.pamr_stride)
        return logits[0]

    def class_probabilities(self, image: np.ndarray) -> torch.Tensor:
        """``postprocess_result`` up to (and with) the area filter -> per-class probabilities [K, H, W]."""
        seg_logits = torch.softmax(self.seg_logits(image) * self.setup.logit_scale, dim=0)
        num_cls, num_queries = int(self.query_idx.max()) + 1, len(self.query_idx)
        if num_cls != num_queries:  # their max over (probabilities x one-hot), without its [K, Q, H, W] product
            seg_logits = torch.stack([seg_logits[self.query_idx == c].max(0)[0] for c in range(num_cls)])
        if self.setup.area_thd is not None:
            predictions = F.one_hot(seg_logits.argmax(0), num_cls).to(seg_logits.dtype)
            area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)
            area_pred = (area_pred > self.setup.area_thd * area_pred.sum()).to(seg_logits.dtype)
            seg_logits[1:] *= area_pred.transpose(0, -1)
        return seg_logits


def prediction(probs: torch.Tensor, prob_thd: float) -> np.ndarray:
    """argmax, pixels whose max is below ``prob_thd`` -> 0."""
    seg_pred = probs.argmax(0)
    seg_pred[probs.max(0)[0] < prob_thd] = 0
    return seg_pred.numpy().astype(np.uint8)


def exact_ties(probs: torch.Tensor) -> np.ndarray:
    """Pixels whose two best classes have exactly the same probability."""
    top = probs.topk(2, dim=0).values
    return (top[0] == top[1]).numpy()


def _centred_padding(H: int, W: int, patch_size: int) -> tuple[int, int, int, int]:
    """``compute_padsize`` of ClearCLIP / ProxyCLIP: (left, right, top, bottom)."""
    l, r, t, b = 0, 0, 0, 0
    if W % patch_size:
        lr = patch_size - (W % patch_size)
        l, r = lr // 2, lr - lr // 2
    if H % patch_size:
        tb = patch_size - (H % patch_size)
        t, b = tb // 2, tb - tb // 2
    return l, r, t, b


# --- PAMR (NACLIP's pamr.py: shift kernels as 3x3 convolutions) -----------------------------------------------


def _shift_kernels(with_centre: bool, negative_centre: bool) -> torch.Tensor:
    positions = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    if not with_centre:
        positions.remove((1, 1))
    weight = torch.zeros(len(positions), 1, 3, 3)
    for i, (a, b) in enumerate(positions):
        weight[i, 0, a, b] = -1 if negative_centre else 1
        if negative_centre:
            weight[i, 0, 1, 1] = 1
    return weight


def _local(x: torch.Tensor, kernel: torch.Tensor, dilations) -> torch.Tensor:
    B, K, H, W = x.shape
    x = x.reshape(B * K, 1, H, W)
    out = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
    return torch.cat(out, dim=1).view(B, K, -1, H, W)


def pamr_reference(x: torch.Tensor, mask: torch.Tensor, num_iter: int, dilations) -> torch.Tensor:
    """``PAMR(num_iter, dilations)(x, mask)``: affinities from the image ``x``, ``num_iter`` propagations."""
    mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=True)
    x_std = _local(x, _shift_kernels(True, False), dilations).std(2, keepdim=True)
    aff = -_local(x, _shift_kernels(False, True), dilations).abs() / (1e-8 + 0.1 * x_std)
    aff = F.softmax(aff.mean(1, keepdim=True), 2)
    copy = _shift_kernels(False, False)
    for _ in range(num_iter):
        mask = (_local(mask, copy, dilations) * aff).sum(2)
    return mask
