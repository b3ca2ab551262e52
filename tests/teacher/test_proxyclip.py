"""ProxyCLIP: the proxy encoder's attention applied to CLIP's last-block values, against a hand-written
computation of the reference's formula (mc-lan/ProxyCLIP), with random CLIP and random DINO / DINOv2."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from support.vit_reference import layer_norm, max_rel_error, out_proj, project, split_qkv, until_last_block

from maskclip_core.teacher.clip_loader import load_clip
from maskclip_core.teacher.proxy import ProxyBundle, proxy_dense_features, proxy_patch_features

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BETA, GAMMA = 1.2, 3.0


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _proxy(name: str, seed: int, **arch) -> ProxyBundle:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **arch)
    return ProxyBundle.from_model(model, name, f"{name}/random-seed{seed}")


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=21).model


# Small timm variants (2 blocks) of both proxies: DINO with 8-pixel patches, DINOv2 with 14 and 4 registers.
SMALL_PROXIES = {
    "dino": ("vit_small_patch8_224.dino", {"depth": 2}),
    "dinov2": ("vit_small_patch14_reg4_dinov2.lvd142m", {"depth": 2}),
}
# Sizes are multiples of both patch sizes (lcm(16, 8) = 16, lcm(16, 14) = 112), square and not.
SIZES = {"dino": [(224, 224), (160, 272)], "dinov2": [(224, 224), (224, 336)]}


def _reference_proxyclip(clip, proxy: ProxyBundle, pixels: torch.Tensor) -> torch.Tensor:
    """The reference's forward_feature + custom_attn, written out: un-normalise CLIP's input, normalise for
    the proxy, its last normalised patch tokens, cosine similarity, (S - beta mean S) gamma, negatives to
    -inf, softmax repeated per head, each head's values bilinearly resized to the proxy grid, out_proj,
    ln_post, proj."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    imnet_mean, imnet_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (proxy.mean, proxy.std))
    imgs_norm = (pixels * std + mean - imnet_mean) / imnet_std
    ex_feats = proxy.model.get_intermediate_layers(imgs_norm, n=1, reshape=True, norm=True)[0]
    B, C, H, W = ex_feats.shape

    sd, x, grid, last, heads = until_last_block(clip, pixels)
    _, _, v = split_qkv(sd, last, layer_norm(x, sd, f"{last}.ln_1"))
    embed = v.shape[-1]
    head_dim = embed // heads
    q_k = F.normalize(ex_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("bcm,bcn->bmn", q_k, q_k)
    similarity = (similarity - similarity.mean(dim=(1, 2), keepdim=True) * BETA) * GAMMA
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.unsqueeze(1).repeat(1, heads, 1, 1).reshape(B * heads, H * W, H * W)
    attn_weights = F.softmax(mask, dim=-1)
    v = v.permute(1, 0, 2).contiguous().view(-1, B * heads, head_dim).transpose(0, 1)  # sequence-first, per head
    v = v[:, 1:, :].reshape(B * heads, grid[0], grid[1], head_dim).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(H, W), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(B * heads, H * W, head_dim)
    out = torch.bmm(attn_weights, v).transpose(0, 1).contiguous().view(-1, B, embed).permute(1, 0, 2)
    out = project(sd, out_proj(sd, last, out))
    return out.transpose(1, 2).reshape(B, -1, H, W)


def _check(clip, proxy, size, seed=0):
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    expected = _reference_proxyclip(clip, proxy, pixels)
    features, keys = proxy_dense_features(clip, pixels, proxy, (CLIP_MEAN, CLIP_STD), beta=BETA, gamma=GAMMA)
    p = proxy.patch_size
    assert features.shape == expected.shape and features.shape[-2:] == (size[0] // p, size[1] // p)
    assert keys.shape[-2:] == features.shape[-2:]
    error = max_rel_error(features, expected)
    assert error <= 1e-4, error
    return features


@pytest.mark.parametrize("kind", ["dino", "dinov2"])
def test_proxyclip_equals_reference_formula_small_proxies(tiny_clip, kind):
    name, arch = SMALL_PROXIES[kind]
    proxy = _proxy(name, seed=1, **arch)
    for size in SIZES[kind]:
        _check(tiny_clip, proxy, size)


def test_proxyclip_equals_reference_formula_base_models():
    """ViT-B/16 CLIP with the reference's B-size proxies (random weights): DINO ViT-B/8, DINOv2 ViT-B/14 + reg."""
    clip = load_clip("ViT-B-16", "none", device="cpu", seed=22).model
    _check(clip, _proxy("vit_base_patch8_224.dino", seed=2), (224, 224))
    _check(clip, _proxy("vit_base_patch14_reg4_dinov2.lvd142m", seed=3), (224, 336))


def test_proxy_features_are_the_final_normalised_patch_tokens(tiny_clip):
    """Class and register tokens dropped; the same as timm's get_intermediate_layers(norm=True), the call the
    reference makes on DINOv2."""
    name, arch = SMALL_PROXIES["dinov2"]
    proxy = _proxy(name, seed=4, **arch)
    x = torch.randn(1, 3, 112, 168)
    expected = proxy.model.get_intermediate_layers(x, n=1, reshape=True, norm=True)[0]
    torch.testing.assert_close(proxy_patch_features(proxy, x), expected)


def test_output_depends_on_proxy_weights_not_on_clip_queries_and_keys(tiny_clip):
    name, arch = SMALL_PROXIES["dino"]
    proxy = _proxy(name, seed=5, **arch)
    pixels = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(6))

    def run(clip, prox):
        return proxy_dense_features(clip, pixels, prox, (CLIP_MEAN, CLIP_STD))

    base_features, base_keys = run(tiny_clip, proxy)
    other_features, _ = run(tiny_clip, _proxy(name, seed=6, **arch))
    assert max_rel_error(other_features, base_features) > 1e-2

    # Rewrite the last block's query and key projections (weights and biases): nothing changes.
    clip = copy.deepcopy(tiny_clip)
    attn = clip.visual.transformer.resblocks[-1].attn
    width = attn.embed_dim
    attn.in_proj_weight[: 2 * width].normal_(generator=torch.Generator().manual_seed(7))
    attn.in_proj_bias[: 2 * width].normal_(generator=torch.Generator().manual_seed(8))
    features, keys = run(clip, proxy)
    torch.testing.assert_close(features, base_features, rtol=0, atol=0)
    torch.testing.assert_close(keys, base_keys, rtol=0, atol=0)
    # ...while the values do matter (the test would notice a path that ignores CLIP altogether).
    attn.in_proj_weight[2 * width :].normal_(std=0.1, generator=torch.Generator().manual_seed(9))
    assert max_rel_error(run(clip, proxy)[0], base_features) > 1e-2


def test_scale_factor_positions_are_the_hub_models(tiny_clip):
    """position_resize='scale_factor' resizes DINO's positional embeddings as its torch-hub model does
    (``interpolate_pos_encoding``, rewritten in support.reference_segmentors); timm's own resize differs."""
    from support.reference_segmentors import dino_features

    name, arch = SMALL_PROXIES["dino"]
    proxy = _proxy(name, seed=7, **arch)
    x = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(8))
    expected = dino_features(proxy.model, x)
    assert max_rel_error(proxy_patch_features(proxy, x, "scale_factor"), expected) <= 1e-5
    assert max_rel_error(proxy_patch_features(proxy, x), expected) > 1e-3
