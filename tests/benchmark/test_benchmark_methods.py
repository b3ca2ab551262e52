"""The method table: rows are checked when they are built, and each method inherits its repository's configs."""

from __future__ import annotations

import pytest

from maskclip_core.benchmark.protocols import CONFIGS, METHODS, method


def test_a_misspelt_suite_or_setting_in_a_row_fails_at_once() -> None:
    row = {"title": "title", "configs": "sclip", "source": "source", "inference": {"attention": "maskclip"}}
    assert method("m", **row, per_suite={"voc21": {"logit_scale": 9.0}}).settings("voc21").logit_scale == 9.0
    with pytest.raises(ValueError, match=r"unknown suites or settings \['voc-21'\]"):
        method("m", **row, per_suite={"voc-21": {"logit_scale": 9.0}})
    with pytest.raises(ValueError, match=r"\['voc21.logit'\]"):
        method("m", **row, per_suite={"voc21": {"logit": 9.0}})


def test_own_overrides_merge_over_the_configs_per_setting() -> None:
    sclip, maskclip = METHODS["sclip"].settings("voc21"), METHODS["maskclip"].settings("voc21")
    assert (sclip.logit_scale, sclip.prob_threshold) == (65.0, 0.1)  # its own scale, the configs' threshold
    assert (maskclip.logit_scale, maskclip.prob_threshold) == (40.0, 0.1)
    # Methods on the same configs share every setting the method does not override.
    defaults, per_suite = CONFIGS["naclip"]
    for name in ("naclip", "naclip-pamr"):
        assert METHODS[name].defaults == defaults and dict(METHODS[name].per_suite) == per_suite
    assert METHODS["naclip-pamr"].inference == {**METHODS["naclip"].inference, "pamr": True, "pamr_iterations": 10}


def test_reference_rows_set_the_references_arithmetic() -> None:
    """Issue 22: each method row runs its reference's conventions; labeling defaults stay ours."""
    from maskclip_core.benchmark.protocols import REFERENCE_ARITHMETIC
    from maskclip_core.benchmark.scoring import BenchmarkParameters

    for name in ("maskclip", "sclip", "clearclip", "naclip", "naclip-pamr", "proxyclip"):
        config = BenchmarkParameters(suites=["voc21"], data_root="/data", method=name).labeler_config("voc21")
        conventions = {k: getattr(config.inference, k) for k in REFERENCE_ARITHMETIC}
        centred = name in ("clearclip", "proxyclip")  # they pad windows centred; SCLIP's descendants floor
        assert conventions == {**REFERENCE_ARITHMETIC, **({"partial_patches": "pad_centred"} if centred else {})}
        assert config.inference.pad_to == (56 if name == "proxyclip" else None)
        assert config.templates == "imagenet"
        assert config.inference.area_threshold == (0.1 if name == "sclip" else None)
    request = BenchmarkParameters(suites=["coco-object"], data_root="/data", method="clearclip", templates="single")
    clear = request.labeler_config("coco-object")
    assert clear.background == "background" and clear.templates == "single"  # the request's templates win
    kspd = BenchmarkParameters(suites=["voc21"], data_root="/data", method="maskclip-kspd").labeler_config("voc21")
    assert kspd.inference.merge == "probabilities" and kspd.templates == "maskclip"
