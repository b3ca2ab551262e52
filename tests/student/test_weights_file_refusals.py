"""Weights files that are not what they claim are refused in one line, never unpickled: a pickle named
``.safetensors`` as ``--pretrained`` or as backbone weights, and a pickle carrying Python objects (before: a
raw SafetensorError / UnpicklingError traceback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support.cli_runner import run_cli

from maskclip_core.student.backbones import build_backbone


class _RunsCode:
    def __reduce__(self):  # what an attacker's checkpoint carries: a call made while unpickling
        return (os.system, ("touch /tmp/maskclip-pwned",))


def pickles(tmp_path: Path) -> dict[str, Path]:
    renamed = tmp_path / "weights.safetensors"
    torch.save({"conv1.weight": torch.zeros(1)}, renamed)  # a torch pickle under a safetensors name
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _RunsCode()}, evil)
    return {"renamed": renamed, "evil": evil}


def test_a_pickle_named_safetensors_as_pretrained_is_one_line(tmp_path, capsys) -> None:
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    weights = pickles(tmp_path)["renamed"]
    code, _, err = run_cli(capsys, "segment", str(image), "--out", str(tmp_path / "seg"), "--classes", "a, b",
                           "--model", "maskclip-tiny-ViT", "--pretrained", str(weights), "--device", "cpu")  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("maskclip: error")]
    assert code == 2 and len(lines) == 1 and "not a safetensors file" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize(("which", "said"), [("renamed", "not a safetensors file"), ("evil", "pickles Python objects")])
def test_backbone_weights_that_are_not_tensors_are_refused(tmp_path, which, said) -> None:
    weights = pickles(tmp_path)[which]
    with pytest.raises(ValueError, match=said) as refused:
        build_backbone("resnet18", 16, weights=str(weights))
    assert "\n" not in str(refused.value) and not Path("/tmp/maskclip-pwned").exists()
