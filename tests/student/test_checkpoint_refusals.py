"""Evil and broken student checkpoints and --pretrained files: refused with one line naming file and fault."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from maskclip_core.student import ClassVocabulary, StudentConfig, build_student, load_checkpoint, save_weights
from maskclip_core.student.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    config = StudentConfig(
        embed_dim=8, backbone="resnet18", output_stride=16, head_channels=16, backbone_weights="none"
    )
    torch.manual_seed(0)
    model = build_student(config, torch.randn(3, 8), ClassVocabulary(("a", "b", "c"), (0, 1, 2)))
    return Path(save_weights(str(tmp_path_factory.mktemp("ckpt")), model, round_index=0, iteration=1)).read_bytes()


def with_metadata(good: bytes, **changes: str | None) -> bytes:
    (length,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + length])
    for key, value in changes.items():
        if value is None:
            header["__metadata__"].pop(key)
        else:
            header["__metadata__"][key] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + good[8 + length :]


CASES = {
    "truncated": (lambda g: g[: len(g) // 2], "cannot be read"),
    "five_bytes": (lambda g: g[:5], "too short"),
    "huge_header": (lambda g: struct.pack("<Q", 2**62) + g[8:], "header claims"),
    "not_json": (lambda g: struct.pack("<Q", 16) + b"\xff" * 16 + g[24:], "not JSON"),
    "no_vocabulary": (lambda g: with_metadata(g, vocabulary=None), "lacks 'vocabulary'"),
    "wrong_vocabulary": (lambda g: with_metadata(g, vocabulary='{"names": 1}'), "metadata"),
    "pickle_renamed": (lambda g: pickle.dumps({"w": Evil()}), "pickle"),
    "torch_zip_renamed": (lambda g: b"PK\x03\x04" + g[4:], "pickle"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_student_checkpoints_are_refused_in_one_line(case: str, good: bytes, tmp_path: Path, capsys) -> None:
    damage, message = CASES[case]
    path = tmp_path / "round-000.safetensors"
    path.write_bytes(damage(good))
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(str(path))
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert "pwned" not in capsys.readouterr().out


def test_a_malicious_pretrained_pickle_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    from maskclip_core.teacher.clip_loader import WeightsUnavailableError, load_clip

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"state_dict": {"x": Evil()}}, f)
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip("maskclip-tiny-ViT", str(path), device="cpu")
    text = str(info.value)
    assert str(path) in text and "refused" in text and "\n" not in text
    assert "pwned" not in capsys.readouterr().out
