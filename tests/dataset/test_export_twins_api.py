"""The Python API ``export_coco`` exports identical-bytes twins (one content at two uris) as ``maskclip export
coco`` does: each uri its own image, the second with alias ids (before: refused with a wrong hint to pass
config_hash)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from support.cli_runner import run_cli
from support.review_store import build_store, write_image

from maskclip_core.interchange.coco import export_coco


def test_export_coco_api_exports_twins_like_the_cli(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    write_image(src / "a.png", seed=0)
    shutil.copy(src / "a.png", src / "a-copy.png")
    names = ["a.png", "a-copy.png", "b.png"]
    built = build_store(str(tmp_path / "out"), src, batches=[names], predict_as="a/img.png")  # all labeled

    code, _, err = run_cli(capsys, "export", "coco", "--dataset", built.store.url, "--out", str(tmp_path / "cli.json"))
    assert code == 0, err
    export_coco(built.store, str(tmp_path / "api.json"))  # before: ValueError "... pass config_hash"

    cli, api = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cli", "api"))
    by_uri = {i["coco_url"]: i["id"] for i in api["images"]}
    assert sorted(by_uri) == sorted(str(src / n) for n in names)
    assert {i["id"] for i in api["images"]} == {i["id"] for i in cli["images"]} and len(set(by_uri.values())) == 3
    assert sorted(a["id"] for a in api["annotations"]) == sorted(a["id"] for a in cli["annotations"])
