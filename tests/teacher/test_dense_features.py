"""dense_features and the CLIP token pipeline against independent computations from the state dict."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support.vit_reference import layer_norm as _ln
from support.vit_reference import max_rel_error
from support.vit_reference import split_qkv as _split
from support.vit_reference import tokens as _tokens

from maskclip_core.teacher.clip_loader import load_clip
from maskclip_core.teacher.dense import dense_features, image_embedding, resized_positional_embedding


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # scoped to each test: a module-level switch would leak into other test modules
        yield


@pytest.fixture(scope="module", params=["maskclip-tiny-ViT", "ViT-B-16"])
def vit(request):
    return load_clip(request.param, "none", device="cpu", seed=3).model


@pytest.fixture(scope="module")
def rn50():
    return load_clip("RN50", "none", device="cpu", seed=4).model


@pytest.fixture(scope="module")
def tiny_vit():
    return load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=5).model


# ---------------------------------------------------------------- hand-written ViT from the state dict


def _gelu(x, quick: bool):
    return x * torch.sigmoid(1.702 * x) if quick else F.gelu(x)


def _attend(q, k, v, heads):
    B, L, D = q.shape
    hd = D // heads
    qh, kh, vh = (t.reshape(B, t.shape[1], heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    a = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    return (a @ vh).permute(0, 2, 1, 3).reshape(B, L, D)


def _mlp(sd, prefix, x, quick):
    h = _gelu(x @ sd[f"{prefix}.mlp.c_fc.weight"].T + sd[f"{prefix}.mlp.c_fc.bias"], quick)
    return h @ sd[f"{prefix}.mlp.c_proj.weight"].T + sd[f"{prefix}.mlp.c_proj.bias"]


def _out_proj(sd, prefix, x):
    return x @ sd[f"{prefix}.attn.out_proj.weight"].T + sd[f"{prefix}.attn.out_proj.bias"]


def _standard_block(sd, prefix, x, heads, quick):
    q, k, v = _split(sd, prefix, _ln(x, sd, f"{prefix}.ln_1"))
    x = x + _out_proj(sd, prefix, _attend(q, k, v, heads))
    return x + _mlp(sd, prefix, _ln(x, sd, f"{prefix}.ln_2"), quick)


def _vit_meta(model):
    visual = model.visual
    blocks = visual.transformer.resblocks
    quick = type(blocks[0].mlp.gelu).__name__ == "QuickGELU"
    return visual.patch_size[0], len(blocks), blocks[0].attn.num_heads, quick


def _reference_vit_until_last(model, pixels):
    sd = model.state_dict()
    patch, layers, heads, quick = _vit_meta(model)
    x, grid = _tokens(sd, pixels, patch)
    for i in range(layers - 1):
        x = _standard_block(sd, f"visual.transformer.resblocks.{i}", x, heads, quick)
    return sd, x, grid, f"visual.transformer.resblocks.{layers - 1}", heads, quick


def test_reference_vit_forward_reproduces_encode_image(vit):
    pixels = torch.randn(2, 3, 224, 224)
    sd, x, _, last, heads, quick = _reference_vit_until_last(vit, pixels)
    x = _standard_block(sd, last, x, heads, quick)
    reference = _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]
    expected = vit.encode_image(pixels)
    torch.testing.assert_close(reference, expected, rtol=1e-4, atol=1e-4)
    # our own standard path through the internals (used as the benchmark's bare forward) agrees too
    torch.testing.assert_close(image_embedding(vit, pixels), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(224, 224), (160, 272)])
def test_vit_dense_features_equal_per_token_value_path(vit, size):
    pixels = torch.randn(2, 3, *size)
    sd, x, (gh, gw), last, _, quick = _reference_vit_until_last(vit, pixels)
    # Last block, one token at a time: no attention, so no token sees another.
    feats, keys = [], []
    for t in range(1, x.shape[1]):
        xt = x[:, t]
        y = _ln(xt, sd, f"{last}.ln_1")
        _, kt, vt = _split(sd, last, y)
        h = xt + _out_proj(sd, last, vt)
        h = h + _mlp(sd, last, _ln(h, sd, f"{last}.ln_2"), quick)
        feats.append(_ln(h, sd, "visual.ln_post") @ sd["visual.proj"])
        keys.append(kt)
    ref_f = torch.stack(feats, 1).reshape(2, gh, gw, -1).permute(0, 3, 1, 2)
    ref_k = torch.stack(keys, 1).reshape(2, gh, gw, -1).permute(0, 3, 1, 2)

    features, got_keys = dense_features(vit, pixels)
    assert features.shape == (2, sd["visual.proj"].shape[1], size[0] // 16, size[1] // 16)
    torch.testing.assert_close(features, ref_f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_keys, ref_k, rtol=1e-4, atol=1e-4)


def test_clearclip_and_sclip_last_blocks(tiny_vit):
    pixels = torch.randn(1, 3, 160, 208)
    sd, x, (gh, gw), last, heads, quick = _reference_vit_until_last(tiny_vit, pixels)
    q, k, v = _split(sd, last, _ln(x, sd, f"{last}.ln_1"))

    clear = _out_proj(sd, last, _attend(q, q, v, heads))  # q-q attention, no residual, no FFN
    clear = _ln(clear, sd, "visual.ln_post") @ sd["visual.proj"]
    expected = clear[:, 1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(dense_features(tiny_vit, pixels, "clearclip")[0], expected, rtol=1e-4, atol=1e-4)

    B, L, D = q.shape
    hd = D // heads

    def per_head(t):
        return t.reshape(B, L, heads, hd).permute(0, 2, 1, 3)

    qh, kh, vh = per_head(q), per_head(k), per_head(v)
    attn = torch.softmax(qh @ qh.transpose(-1, -2) / math.sqrt(hd), -1) + torch.softmax(
        kh @ kh.transpose(-1, -2) / math.sqrt(hd), -1
    )
    h = x + _out_proj(sd, last, (attn @ vh).permute(0, 2, 1, 3).reshape(B, L, D))
    h = h + _mlp(sd, last, _ln(h, sd, f"{last}.ln_2"), quick)
    sclip = (_ln(h, sd, "visual.ln_post") @ sd["visual.proj"])[:, 1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(dense_features(tiny_vit, pixels, "sclip")[0], sclip, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["sclip", "naclip", "clearclip"])
def test_scale_factor_positions_give_the_reference_segmentors_features(tiny_vit, mode):
    """position_resize='scale_factor' at a 336 x 448 input equals the references' forward (positional embeddings
    through their ``interpolate_pos_encoding``, rewritten in support.reference_segmentors); 'size' does not."""
    from support.reference_segmentors import clip_dense

    pixels = torch.randn(1, 3, 336, 448, generator=torch.Generator().manual_seed(3))
    expected, grid = clip_dense(tiny_vit, mode, pixels)
    expected = expected.transpose(1, 2).reshape(1, -1, *grid)
    features, _ = dense_features(tiny_vit, pixels, mode, position_resize="scale_factor")
    assert max_rel_error(features, expected) <= 1e-5
    assert max_rel_error(dense_features(tiny_vit, pixels, mode)[0], expected) > 1e-4


def test_unknown_mode_is_rejected(tiny_vit, rn50):
    with pytest.raises(ValueError, match="unknown attention mode"):
        dense_features(tiny_vit, torch.zeros(1, 3, 32, 32), "nope")
    with pytest.raises(ValueError, match="ViT encoders only"):
        dense_features(rn50, torch.zeros(1, 3, 64, 64), "clearclip")


# ---------------------------------------------------------------- hand-written ModifiedResNet
def _bn(x, sd, prefix):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _bottleneck(sd, prefix, x, stride):
    out = F.relu(_bn(F.conv2d(x, sd[f"{prefix}.conv1.weight"]), sd, f"{prefix}.bn1"))
    out = F.relu(_bn(F.conv2d(out, sd[f"{prefix}.conv2.weight"], padding=1), sd, f"{prefix}.bn2"))
    if stride > 1:
        out = F.avg_pool2d(out, stride)
    out = _bn(F.conv2d(out, sd[f"{prefix}.conv3.weight"]), sd, f"{prefix}.bn3")
    identity = x
    if f"{prefix}.downsample.0.weight" in sd:
        identity = F.avg_pool2d(x, stride) if stride > 1 else x
        identity = _bn(F.conv2d(identity, sd[f"{prefix}.downsample.0.weight"]), sd, f"{prefix}.downsample.1")
    return F.relu(out + identity)


def _reference_resnet_trunk(model, pixels):
    sd = model.state_dict()
    x = F.relu(_bn(F.conv2d(pixels, sd["visual.conv1.weight"], stride=2, padding=1), sd, "visual.bn1"))
    x = F.relu(_bn(F.conv2d(x, sd["visual.conv2.weight"], padding=1), sd, "visual.bn2"))
    x = F.relu(_bn(F.conv2d(x, sd["visual.conv3.weight"], padding=1), sd, "visual.bn3"))
    x = F.avg_pool2d(x, 2)
    for layer, stride in zip(range(1, 5), (1, 2, 2, 2), strict=True):
        blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith(f"visual.layer{layer}.")})
        for b in blocks:
            x = _bottleneck(sd, f"visual.layer{layer}.{b}", x, stride if b == 0 else 1)
    return sd, x


def test_reference_resnet_forward_reproduces_encode_image(rn50):
    pixels = torch.randn(2, 3, 224, 224)
    sd, x = _reference_resnet_trunk(rn50, pixels)
    B, C, h, w = x.shape
    tokens = x.reshape(B, C, h * w).permute(0, 2, 1)  # [B, N, C]
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + sd["visual.attnpool.positional_embedding"]
    p = "visual.attnpool"

    def lin(t, name):
        return t @ sd[f"{p}.{name}.weight"].T + sd[f"{p}.{name}.bias"]

    heads = rn50.visual.attnpool.num_heads
    pooled = _attend(lin(tokens[:, :1], "q_proj"), lin(tokens, "k_proj"), lin(tokens, "v_proj"), heads)
    reference = lin(pooled[:, 0], "c_proj")
    expected = rn50.encode_image(pixels)
    torch.testing.assert_close(reference, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(image_embedding(rn50, pixels), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(224, 224), (192, 320)])
def test_resnet_dense_features_equal_per_location_value_path(rn50, size):
    pixels = torch.randn(1, 3, *size)
    sd, x = _reference_resnet_trunk(rn50, pixels)
    p = "visual.attnpool"
    B, C, h, w = x.shape
    feats = torch.empty(B, sd[f"{p}.c_proj.weight"].shape[0], h, w)
    keys = torch.empty(B, C, h, w)
    for i in range(h):
        for j in range(w):
            loc = x[:, :, i, j]
            v = loc @ sd[f"{p}.v_proj.weight"].T + sd[f"{p}.v_proj.bias"]
            feats[:, :, i, j] = v @ sd[f"{p}.c_proj.weight"].T + sd[f"{p}.c_proj.bias"]
            keys[:, :, i, j] = loc @ sd[f"{p}.k_proj.weight"].T + sd[f"{p}.k_proj.bias"]
    got_f, got_k = dense_features(rn50, pixels)
    assert got_f.shape == (1, 1024, size[0] // 32, size[1] // 32)
    torch.testing.assert_close(got_f, feats, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_k, keys, rtol=1e-4, atol=1e-5)


def test_a_model_left_in_training_mode_gets_inference_semantics_and_keeps_its_mode():
    import open_clip

    model = open_clip.create_model("maskclip-tiny-RN")  # open_clip returns models in training mode
    assert model.training
    pixels = torch.randn(2, 3, 96, 128)
    features, keys = dense_features(model, pixels)
    assert model.training and model.visual.bn1.training  # each module's own mode restored
    model.eval()
    ref_features, ref_keys = dense_features(model, pixels)  # BatchNorm with running statistics
    torch.testing.assert_close(features, ref_features)
    torch.testing.assert_close(keys, ref_keys)


def test_resized_positional_embeddings_are_reused_only_without_gradients(tiny_vit):
    visual = tiny_vit.visual
    grid, patch = (5, 7), visual.patch_size[0]
    with torch.enable_grad():  # gradients recorded (the autouse no_grad is lifted): computed on every call
        fresh = resized_positional_embedding(visual, grid)
        assert fresh.requires_grad and resized_positional_embedding(visual, grid) is not fresh
    pixels = torch.randn(1, 3, grid[0] * patch, grid[1] * patch)
    with torch.inference_mode():
        cached = resized_positional_embedding(visual, grid)
        assert resized_positional_embedding(visual, grid) is cached
        torch.testing.assert_close(cached, fresh.detach())
        features, _ = dense_features(tiny_vit, pixels)
    with torch.enable_grad():  # the uncached path
        torch.testing.assert_close(features, dense_features(tiny_vit, pixels)[0].detach())
    pos = visual.positional_embedding
    with torch.no_grad():
        pos.add_(1.0)  # changed weights miss the cache (bicubic weights sum to 1: everything moves by 1)
    try:
        with torch.inference_mode():
            moved = resized_positional_embedding(visual, grid)
            torch.testing.assert_close(moved, cached + 1.0)
    finally:
        with torch.no_grad():
            pos.sub_(1.0)
