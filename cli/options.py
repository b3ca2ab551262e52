"""Every option more than one ``maskclip`` command takes, defined once; the models options fill; the choice lists.

Shared options: ``--dataset`` (``add_dataset_option``), ``--storage-options``, ``--source-storage-options``,
``--device``, ``--verbose``, the confidence filter (``add_filter_options``) and the MaskCLIP teacher
(``add_teacher_options``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.actions import Store, add_aliases, json_object, requires
from cli.fields import Model, RegistryChoices, field_flag, field_option, literal

# --- the pydantic models the Prefect forms use (imported when first needed) ---------------------------------

LABELER_CONFIG = Model("maskclip_core.teacher.labeler", "LabelerConfig")
INFERENCE = Model("maskclip_core.teacher.window_predictor", "InferenceConfig")
LABELER = Model("maskclip_core.labeling.registry", "LabelerParameters")
FILTER = Model("maskclip_core.labeling.filter", "FilterConfig")
LABELING_RUN = Model("tasks.labeling_parameters", "LabelingRunParameters")
EXPORT = Model("maskclip_core.interchange.export", "ExportParameters")
CLIP = Model("maskclip_core.training.parameters", "ClipParameters")
STUDENT = Model("maskclip_core.training.parameters", "StudentParameters")
SCHEDULE = Model("maskclip_core.training.parameters", "ScheduleParameters")
DATA = Model("maskclip_core.training.parameters", "DataParameters")
TRAINING_RUN = Model("maskclip_core.training.parameters", "TrainingRunParameters")
GROUND_TRUTH = Model("maskclip_core.evaluation.ground_truth", "GroundTruthParameters")
BENCHMARK = Model("maskclip_core.benchmark.scoring", "BenchmarkParameters")

# --- choice lists: each one read from its registry ----------------------------------------------------------

ATTENTION_MODES = RegistryChoices("maskclip_core.teacher.dense", "ATTENTION_MODES")
TEMPLATE_SETS = RegistryChoices("maskclip_core.teacher.prompts", "TEMPLATE_SETS")
PRECISIONS = RegistryChoices("maskclip_core.teacher.fast_paths", "PRECISIONS")
BACKBONES = RegistryChoices("maskclip_core.student.backbones", "BACKBONES")
HEADS = RegistryChoices("maskclip_core.student.model", "HEADS")
LABELER_KINDS = RegistryChoices("maskclip_core.labeling.registry", "LABELER_KINDS")
EXPORT_FORMATS = RegistryChoices("maskclip_core.interchange.export", "FORMATS")
IMPORT_FORMATS = RegistryChoices("maskclip_core.interchange.review_import", "FORMATS")
METHODS = RegistryChoices("maskclip_core.benchmark.protocols", "METHOD_NAMES")
SUITES = RegistryChoices("maskclip_core.benchmark.suites", "SUITE_NAMES")

# --- shared options ------------------------------------------------------------------------------------------


def add_dataset_option(
    parser: argparse.ArgumentParser, help_text: str, *old: str, group: Any = None
) -> argparse.Action:
    """``--dataset URL`` (required; ``old`` spellings kept, hidden, with a warning), in ``group`` if given."""
    where = parser if group is None else group
    dataset = where.add_argument("--dataset", action=Store, default=None, metavar="URL", help=help_text)
    add_aliases(where, dataset, *old)
    requires(parser, dataset)
    return dataset


def add_storage_options(parser: argparse.ArgumentParser | Any, what: str = "the dataset", *old: str) -> argparse.Action:
    """``--storage-options``: fsspec options for the dataset (and the other URLs of commands that say so)."""
    option = parser.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help=f'fsspec options for {what}, e.g. \'{{"client_kwargs": {{"endpoint_url": "http://minio:9000"}}}}\' '
        "(default: the AWS environment / profile)",
    )
    add_aliases(parser, option, *old)
    return option


def add_source_storage_options(parser: argparse.ArgumentParser | Any, what: str, *old: str) -> argparse.Action:
    """``--source-storage-options``: fsspec options for the images."""
    option = parser.add_argument(
        "--source-storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help=f"fsspec options for {what} (default: the AWS environment / profile)",
    )
    add_aliases(parser, option, *old)
    return option


def add_device_option(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")


def add_verbose_option(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument("--verbose", action="store_true", help="show Prefect's logs (default: warnings only)")


def add_filter_options(
    parser: argparse.ArgumentParser, title: str = "confidence filter", inherit: bool = False
) -> None:
    """FilterConfig's thresholds; with ``inherit`` help shows no default (the title says where unset ones come
    from)."""
    g = parser.add_argument_group(title)
    shown = not inherit
    field_option(g, "--min-confidence", FILTER, "min_confidence", type=float, show_default=shown)
    field_option(g, "--min-region-area", FILTER, "min_region_area", type=int, show_default=shown)
    field_option(g, "--min-region-confidence", FILTER, "min_region_confidence", type=float, show_default=shown)
    field_option(g, "--min-labeled-fraction", FILTER, "min_labeled_fraction", type=float, show_default=shown)
    field_option(
        g,
        "--per-class",
        FILTER,
        "per_class",
        type=json_object,
        metavar="JSON",
        help='per-class overrides: \'{"cat": {"min_confidence": 0.7}}\'',
    )


TEACHER_GROUP = "MaskCLIP teacher"
TEACHER_MODELS = (LABELER_CONFIG, INFERENCE)  # every option of the teacher group fills a field of one of these


def add_teacher_options(parser: argparse.ArgumentParser, classes_default: str | None = None) -> argparse.Action:
    """The MaskCLIP teacher's options: LabelerConfig's and InferenceConfig's fields; returns ``--classes``."""
    g = parser.add_argument_group(TEACHER_GROUP)
    classes = field_option(g, "--classes", LABELER_CONFIG, "classes", default=classes_default)
    field_option(g, "--background", LABELER_CONFIG, "background")
    field_option(g, "--model", LABELER_CONFIG, "model")
    field_option(g, "--pretrained", LABELER_CONFIG, "pretrained")
    field_option(g, "--seed", LABELER_CONFIG, "seed", type=int)
    field_option(g, "--attention", INFERENCE, "attention", choices=ATTENTION_MODES)
    field_option(g, "--proxy", LABELER_CONFIG, "proxy")
    field_option(g, "--proxy-weights", LABELER_CONFIG, "proxy_weights")
    field_option(g, "--sam", LABELER_CONFIG, "sam")
    field_option(g, "--sam-weights", LABELER_CONFIG, "sam_weights")
    field_option(g, "--sam-cos-fac", LABELER_CONFIG, "sam_cos_fac", type=float)
    field_flag(
        g, "--no-sam-refine-neg-cos", LABELER_CONFIG, "sam_refine_neg_cos", help="Trident: 0.6 for a negative threshold"
    )
    field_flag(g, "--sam-refinement", LABELER_CONFIG, "sam_refinement")
    field_flag(g, "--global-block", INFERENCE, "global_block")
    field_option(g, "--global-block-max-tokens", INFERENCE, "global_block_max_tokens", type=int)
    field_flag(g, "--pamr", INFERENCE, "pamr")
    field_option(g, "--pamr-iterations", INFERENCE, "pamr_iterations", type=int)
    field_option(g, "--pamr-dilations", INFERENCE, "pamr_dilations", type=int, nargs="+", metavar="PX")
    field_option(g, "--mode", INFERENCE, "mode", choices=literal(INFERENCE, "mode"))
    field_option(g, "--short-side", INFERENCE, "short_side", type=int)
    field_option(g, "--crop", INFERENCE, "crop", type=int)
    field_option(g, "--stride", INFERENCE, "stride", type=int)
    field_flag(g, "--no-key-smoothing", INFERENCE, "key_smoothing", help="skip key smoothing")
    field_flag(g, "--no-prompt-denoising", INFERENCE, "prompt_denoising", help="skip prompt denoising")
    field_option(g, "--ks-threshold", INFERENCE, "key_smoothing_threshold", type=float)
    field_option(g, "--pd-threshold", INFERENCE, "prompt_denoising_threshold", type=float)
    field_option(g, "--templates", LABELER_CONFIG, "templates", choices=TEMPLATE_SETS)
    field_option(g, "--precision", INFERENCE, "precision", choices=PRECISIONS)
    field_flag(g, "--compile", INFERENCE, "compile")
    return classes


RANDOM_WEIGHTS_BANNER = """
##########################################################################
#  RANDOM WEIGHTS (--pretrained none): the labels below are MEANINGLESS.  #
#  This run only checks that the pipeline works end to end.              #
##########################################################################
"""


def warn_if_random(pretrained: str) -> None:
    """The banner on stderr when ``pretrained`` means random weights."""
    from maskclip_core.teacher.clip_loader import is_random

    if is_random(pretrained):
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)
