"""Each figure is defined once (lightning_quant.figures); everything else agrees with it."""

from __future__ import annotations

import dataclasses

import pytest

from api.crud import derived_compression_ratio
from api.models import RunBase, RunSortField, RunSummary
from lightning_quant.figures import (
    RUN_FIGURES,
    RUN_MEANS,
    RUN_TOTALS,
    STEP_METRICS,
    compression_ratio,
)
from lightning_quant.hooks.stats import StepStats
from lightning_quant.runstore.records import RunRecord


def test_the_hook_reports_every_step_figure_and_nothing_else() -> None:
    assert set(StepStats().as_dict()) == {"step", *STEP_METRICS}
    summed = {*RUN_TOTALS, *RUN_MEANS}
    assert summed <= set(STEP_METRICS)


def test_the_record_the_api_and_its_sort_fields_carry_every_run_figure() -> None:
    record = {field.name for field in dataclasses.fields(RunRecord)}
    assert set(RUN_FIGURES) <= record
    assert set(RUN_FIGURES) <= set(RunBase.model_fields)
    assert set(RUN_FIGURES) <= set(RunSummary.model_fields)
    assert set(RUN_FIGURES) <= {field.value for field in RunSortField}
    # and nothing that looks like a figure is missing from the definition
    figure_like = {f for f in record if f.startswith(("total_", "mean_"))}
    assert figure_like <= set(RUN_FIGURES)


@pytest.mark.parametrize(("raw", "sent", "world"), [(4000, 500, 2), (4000, 1000, 4), (10, 3, 3)])
def test_the_api_computes_the_compression_ratio_as_the_library_defines_it(raw, sent, world):
    assert derived_compression_ratio(raw, sent, world) == pytest.approx(
        compression_ratio(raw, sent, world)
    )
    assert derived_compression_ratio(raw, 0, world) is None
