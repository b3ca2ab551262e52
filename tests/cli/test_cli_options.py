"""The ``maskclip`` command line itself: one flag per object, deprecated spellings, help with defaults,
``--version``, and contradictory options refused. Parsing only (no model, no Prefect run) except where noted."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from cli import label
from cli import main as cli
from cli.actions import given_options
from cli.fields import FieldOption
from cli.options import ATTENTION_MODES, TEACHER_GROUP, TEACHER_MODELS, TEMPLATE_SETS

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("segment", "label", "export", "import", "evaluate", "train", "demo")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def parse(capsys: pytest.CaptureFixture, *argv: str) -> tuple[argparse.Namespace, str]:
    """Parsed arguments (required options checked as ``main`` does) and what parsing wrote to stderr."""
    capsys.readouterr()
    args = cli.build_parser().parse_args(list(argv))
    from cli.actions import check_required

    check_required(args)
    return args, capsys.readouterr().err


def usage_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(capsys, *argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# --- one flag per object -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "old"),
    [
        (["label", "--source", "s3://b/img", "--classes", "cat"], "--output"),
        (["export", "coco", "--out", "x.json"], "--from"),
        (["import", "coco", "f.json"], "--into"),
        (["evaluate"], "--reviewed"),
        (["train"], "--from"),
    ],
)
def test_dataset_is_one_flag_and_old_spellings_warn_once(capsys, argv, old):
    args, err = parse(capsys, *argv, "--dataset", "s3://b/ds")
    assert args.dataset == "s3://b/ds" and err == ""

    args, err = parse(capsys, *argv, old, "s3://b/ds")
    assert args.dataset == "s3://b/ds"
    assert err.splitlines() == [f"maskclip: warning: {old} is deprecated; use --dataset"]

    assert "required: --dataset" in usage_error(capsys, *argv)
    assert "give one" in usage_error(capsys, *argv, "--dataset", "a", old, "b")


def test_old_spellings_are_hidden_from_help():
    for name, parser in subparsers().items():
        text = parser.format_help()
        for old in ("--from", "--into", "--reviewed", "--output ", "--to ", "--output-storage-options"):
            assert old not in text, (name, old)
        assert "--image-storage-options" not in text
    assert "--source " not in subparsers()["export"].format_help()


def test_every_dataset_command_spells_the_same_objects_the_same_way():
    parsers = subparsers()
    for name in ("label", "export", "import", "evaluate", "train"):
        flags = {s for a in parsers[name]._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
        assert {"--dataset", "--storage-options"} <= flags, name
    (dataset_commands,) = [a for a in parsers["dataset"]._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in dataset_commands.choices.items():  # dataset check / history
        flags = {s for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
        assert {"--dataset", "--storage-options"} <= flags, name
    for name in ("segment", "demo", "export"):
        flags = {s for a in parsers[name]._actions for s in a.option_strings}
        assert "--out" in flags, name
    for name in ("label", "train"):
        flags = {s for a in parsers[name]._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
        assert "--source-storage-options" in flags, name


def test_other_renamed_options_keep_working(capsys):
    base = ["export", "coco", "--dataset", "ds"]
    args, err = parse(capsys, *base, "--to", "x.json", "--source", "maskclip", "--labeled-by", "student")
    assert args.destination == "x.json" and args.labelers == ["maskclip", "student"]
    assert err.splitlines() == [
        "maskclip: warning: --to is deprecated; use --out",
        "maskclip: warning: --source is deprecated; use --labeled-by",
    ]
    args, err = parse(capsys, "label", "--source", "s", "--dataset", "d", "--output-storage-options", '{"anon": true}')
    assert args.storage_options == {"anon": True}
    assert err.strip() == "maskclip: warning: --output-storage-options is deprecated; use --storage-options"
    args, err = parse(capsys, "train", "--dataset", "d", "--image-storage-options", "{}")
    assert args.source_storage_options == {} and "use --source-storage-options" in err


def test_label_maps_the_new_flags_onto_the_flow_parameters(capsys):
    args, _ = parse(
        capsys,
        "label",
        "--source",
        "s3://b/img",
        "--dataset",
        "s3://b/ds",
        "--classes",
        "cat",
        "--storage-options",
        '{"anon": true}',
        "--source-storage-options",
        '{"anon": false}',
    )
    params = label.label_parameters(args)
    assert params["source"] == "s3://b/img" and params["dataset"] == "s3://b/ds"
    assert params["options"].dataset_storage_options == {"anon": True}
    assert params["options"].source_storage_options == {"anon": False}


# --- help and version --------------------------------------------------------------------------------------


def test_every_option_has_help_and_shows_its_default():
    for name, parser in subparsers().items():
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            assert action.help, (name, action.option_strings)
            if action.default not in (None, False, argparse.SUPPRESS) and action.dest != "help":
                assert "(default: %(default)s)" in parser.formatter_class("x")._get_help_string(action), action
        text = parser.format_help()
        # no default typed by hand: "(default 16)" / "(16)" style leftovers
        assert not re.search(r"\(default \d", text), name
    label = subparsers()["label"].format_help()
    for shown in ("(default: 16)", "(default: 448)", "(default: ViT-B-16)", "(default: 0.5)", "(default: 3)"):
        assert shown in label


def test_help_defaults_are_the_models_defaults(capsys):
    """The defaults shown in help are the ones a run gets: equal to the pydantic models' own."""
    from flows.label_dataset import LabelingRunParameters
    from maskclip_core.labeling.filter import FilterConfig
    from maskclip_core.teacher.labeler import LabelerConfig
    from maskclip_core.teacher.window_predictor import InferenceConfig
    from maskclip_core.training.parameters import (
        DataParameters,
        ScheduleParameters,
        StudentParameters,
        TrainingRunParameters,
    )

    args, _ = parse(capsys, "label", "--source", "s", "--dataset", "d", "--classes", "cat")
    config = label.labeler_config_from_args(args)
    assert config == LabelerConfig(classes="cat")
    assert config.inference == InferenceConfig()
    assert label.label_parameters(args)["options"] == LabelingRunParameters()
    assert label.label_parameters(args)["filters"] == FilterConfig()
    assert tuple(ATTENTION_MODES) == get_args(InferenceConfig.model_fields["attention"].annotation)
    assert tuple(TEMPLATE_SETS) == get_args(LabelerConfig.model_fields["templates"].annotation)

    from cli.options import BACKBONES
    from cli.train import train_parameters

    args, _ = parse(capsys, "train", "--dataset", "d")
    params = train_parameters(args)
    assert params["schedule"] == ScheduleParameters() and params["student"] == StudentParameters()
    assert params["data"] == DataParameters() and params["options"] == TrainingRunParameters()
    assert params["filters"] is None and params["clip"] is None  # inherited from the labeling record
    assert set(BACKBONES) == set(get_args(StudentParameters.model_fields["backbone"].annotation))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"maskclip {importlib.metadata.version('maskclip-labeler')}"


# --- the three bugs ----------------------------------------------------------------------------------------


def test_demo_keeps_the_users_classes(capsys, monkeypatch):
    seen = {}
    monkeypatch.setattr(label, "_cmd_segment", lambda args: seen.setdefault("classes", args.classes) and 0)
    cli.main(["demo", "--classes", "dog, sofa"])
    assert seen["classes"] == "dog, sofa"
    seen.clear()
    cli.main(["demo"])
    assert seen["classes"] == label.DEMO_CLASSES


@pytest.mark.parametrize(
    "teacher",
    [
        ["--classes", "cat"], ["--model", "ViT-B-16"], ["--short-side", "448"], ["--no-key-smoothing"], ["--seed", "0"],
        ["--pamr"], ["--proxy", "dino_vitb8"], ["--precision", "int8"],
    ],
)  # fmt: skip
def test_student_refuses_teacher_options(capsys, teacher):
    """Even a teacher option given with its default value: the user meant something by typing it."""
    argv = ["label", "--source", "s", "--dataset", "d", "--labeler", "student", "--checkpoint", "ck", *teacher]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"maskclip: error: {teacher[0]}: MaskCLIP teacher options")
    assert "--labeler student" in err[0]


def test_contradictory_labeler_options_are_refused(capsys):
    base = ["label", "--source", "s", "--dataset", "d"]
    for argv, message in [
        ([*base, "--classes", "cat", "--checkpoint", "ck"], "--checkpoint is the student's"),
        ([*base, "--labeler", "student"], "--labeler student needs --checkpoint"),
        (base, "--classes is required with --labeler maskclip"),
    ]:
        capsys.readouterr()
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err
    args, _ = parse(capsys, *base, "--labeler", "student", "--checkpoint", "ck", "--device", "cpu")
    assert given_options(args) == {"dataset": "--dataset", "labeler": "--labeler", "checkpoint": "--checkpoint"}
    spec = label.labeler_spec(args)
    assert (spec.labeler, spec.checkpoint, spec.device, spec.config) == ("student", "ck", "cpu", None)


def test_advertised_python_m_entry_points_exist():
    """Every ``python -m X`` the code or docs mention runs (its --help exits 0)."""
    sources = [*(REPO / "flows").glob("*.py"), *(REPO / "cli").glob("*.py")]
    texts = [p.read_text() for p in [*sources, REPO / "README.md", *REPO.glob("docs/*.md")]]
    modules = {m for text in texts for m in re.findall(r"python -m ((?:flows|cli)\b[\w.]*)", text)}
    for module in modules | {"cli.main"}:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        assert 'if __name__ == "__main__"' in Path(spec.origin).read_text(), module
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage: maskclip" in done.stdout


def test_every_teacher_option_is_refused_with_the_student() -> None:
    """Every option of the "MaskCLIP teacher" group of ``maskclip label`` fills a field of a teacher model, which
    ``--labeler student`` refuses: a new teacher option cannot be silently ignored."""
    parser = cli.build_parser()
    command = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" label"))
    [group] = [g for g in command._action_groups if g.title == TEACHER_GROUP]
    assert group._group_actions
    assert all(isinstance(a, FieldOption) and a.model in TEACHER_MODELS for a in group._group_actions)
