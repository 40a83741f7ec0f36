from __future__ import annotations

import math

import pytest

from gnosis_ocr.documents import DocumentLimits
from gnosis_ocr.documents.sizing import plan_page

DEFAULT = DocumentLimits()


@pytest.mark.parametrize("size", [(612, 792), (595, 842), (2480, 3508), (6000, 4000), (100, 60), (1, 1)])
def test_pages_land_near_the_target(size: tuple[float, float]) -> None:
    plan = plan_page(*size, DEFAULT)
    assert abs(plan.pixels - DEFAULT.target_pixels) / DEFAULT.target_pixels < 0.01
    assert abs(plan.width / plan.height - size[0] / size[1]) < 0.01


def test_small_target_still_gives_the_minimum_long_side() -> None:
    limits = DocumentLimits(target_pixels=100_000, min_long_side=1024)
    plan = plan_page(100, 60, limits)
    assert plan.width == 1024
    assert plan.height == math.ceil(60 * 1024 / 100)


def test_never_above_max_page_pixels() -> None:
    limits = DocumentLimits(target_pixels=100_000, min_long_side=50_000, max_page_pixels=1_000_000)
    plan = plan_page(1000, 999, limits)
    assert plan.pixels <= 1_000_000
    thin = plan_page(1_000_000, 1, DocumentLimits(max_page_pixels=100))
    assert thin.pixels <= 100


@pytest.mark.parametrize("size", [(0, 100), (100, -1), (math.nan, 10), (math.inf, 10)])
def test_pages_without_area_are_refused(size: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="no usable size"):
        plan_page(*size, DEFAULT)
