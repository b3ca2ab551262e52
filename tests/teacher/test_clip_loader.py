"""Model loading: names, tags, local checkpoints, random weights, clear errors offline."""

from __future__ import annotations

import os

import pytest
import torch

from maskclip_core.teacher.clip_loader import WeightsUnavailableError, load_clip, weights_identity


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # scoped to each test: a module-level switch would leak into other test modules
        yield


def test_random_weights_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=7)
    c = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=8)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(a.model.encode_image(x), b.model.encode_image(x))
    assert not torch.equal(a.model.encode_image(x), c.model.encode_image(x))
    assert a.weights_id == "maskclip-tiny-ViT/random-seed7" != c.weights_id


def test_openai_spelling_and_metadata():
    bundle = load_clip("RN50", None, device="cpu")
    assert bundle.stride == 32 and not bundle.is_vit and bundle.embed_dim == 1024
    vit = load_clip("maskclip-tiny-ViT", "none", device="cpu")
    assert vit.stride == 16 and vit.is_vit
    assert len(vit.mean) == 3 and len(vit.std) == 3
    with pytest.raises(ValueError, match="unknown CLIP model"):
        load_clip("ViT-Q-99", "none")


def test_local_checkpoint_loads_and_is_identified_by_content(tmp_path):
    src = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=21)
    path = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), path)
    loaded = load_clip("maskclip-tiny-ViT", str(path), device="cpu")
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(loaded.model.encode_image(x), src.model.encode_image(x))
    assert loaded.weights_id.startswith("maskclip-tiny-ViT/sha256:")
    assert weights_identity("maskclip-tiny-ViT", str(path)) == loaded.weights_id


def test_unknown_tag_names_the_alternatives():
    with pytest.raises(WeightsUnavailableError, match="openai"):
        load_clip("ViT-B-16", "no-such-tag", device="cpu")


def test_offline_download_failure_names_the_local_checkpoint_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import; make sure it is honoured if already imported
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HOME", os.fspath(os.path.join(os.getcwd(), ".no-such-hf-home")))
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip("ViT-B-16", "openai", device="cpu")
    message = str(info.value)
    assert "--pretrained /path/to/ViT-B-16.pt" in message and "--pretrained none" in message
    # deployment runs have no command line: the message names the parameter of the Run form too
    assert "labeler.config.pretrained=/path/to/ViT-B-16.pt" in message
    assert '--param labeler=\'{"config": {"pretrained": "/path/to/ViT-B-16.pt"}}\'' in message


# --- an unreachable model hub: one message within seconds, cached weights still load -----------------------


def _tiny_hub_tag(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """A hub-hosted tag 'test' for the tiny ViT, and the hub's endpoint pointed at ``endpoint``."""
    import huggingface_hub.constants as hf_constants
    import open_clip.pretrained as pretrained

    from maskclip_core.teacher import hub

    monkeypatch.setitem(pretrained._PRETRAINED, "maskclip-tiny-ViT", {"test": {"hf_hub": "maskclip/tiny-test/"}})
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_verdicts", {})


@pytest.mark.parametrize("endpoint", ["http://unresolvable.invalid", "http://127.0.0.1:9"])
def test_an_unreachable_hub_fails_at_once_with_one_message(
    endpoint: str, tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    _tiny_hub_tag(monkeypatch, endpoint)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip("maskclip-tiny-ViT", "test", device="cpu", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5  # huggingface_hub's retries took ~25 s per file
    message = str(info.value)
    assert ("name lookup of unresolvable.invalid failed" in message) or ("no connection to 127.0.0.1:9" in message)
    assert "not in the local hub cache" in message and "--pretrained none" in message
    assert not [r for r in caplog.records if r.levelno >= 30]  # no retry warnings, no second error


def test_cached_weights_load_while_the_hub_is_unreachable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    src = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=5)
    snapshot = tmp_path / "models--maskclip--tiny-test" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(src.model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    (tmp_path / "models--maskclip--tiny-test" / "refs").mkdir()
    (tmp_path / "models--maskclip--tiny-test" / "refs" / "main").write_text("0" * 40)
    _tiny_hub_tag(monkeypatch, "http://unresolvable.invalid")
    loaded = load_clip("maskclip-tiny-ViT", "test", device="cpu", cache_dir=str(tmp_path))
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(loaded.model.encode_image(x), src.model.encode_image(x))
    assert hf_constants.HF_HUB_OFFLINE is False  # the offline switch is undone after the load


def test_a_reachable_hub_is_left_to_its_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from maskclip_core.teacher import hub

    monkeypatch.setattr(hub, "_verdicts", {})
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert hub.unreachable_reason(url) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a proxy is what a request connects to first
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert "127.0.0.1:9" in (hub.unreachable_reason("https://hub.example") or "")
