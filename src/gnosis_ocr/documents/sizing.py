"""How large to render a page: by target pixel count, not by a fixed DPI. Pure arithmetic, no I/O.

A fixed DPI gives a business card a few hundred pixels and a poster a hundred million; recognisers want text of a
steady size. So every page is scaled to about ``target_pixels``, with its long side at least ``min_long_side``
(tiny pages are scaled up) and never more than ``max_page_pixels`` in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gnosis_ocr.documents.model import DocumentLimits


@dataclass(frozen=True)
class PagePlan:
    """The scale for one page and the pixel size it gives (``ceil`` of source size x scale, as pdfium renders)."""

    scale: float
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def plan_page(width: float, height: float, limits: DocumentLimits) -> PagePlan:
    """The scale that renders a ``width`` x ``height`` page (PDF points or image pixels) to about the target pixels.

    Raises ``ValueError`` for a page without area (zero, negative or not finite sides).
    """
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        raise ValueError(f"the page has no usable size ({width} x {height})")
    scale = math.sqrt(limits.target_pixels / (width * height))
    long_side = max(width, height)
    if long_side * scale < limits.min_long_side:
        scale = limits.min_long_side / long_side
    plan = _plan(width, height, scale)
    if plan.pixels > limits.max_page_pixels:
        scale = math.sqrt(limits.max_page_pixels / (width * height))
        plan = _plan(width, height, scale)
        for _ in range(64):  # ceil can add a row or a column (or pin a thin side at one pixel): shrink until it fits
            if plan.pixels <= limits.max_page_pixels:
                break
            scale *= math.sqrt(limits.max_page_pixels / plan.pixels) * (1 - 1e-6)
            plan = _plan(width, height, scale)
    return plan


def _plan(width: float, height: float, scale: float) -> PagePlan:
    return PagePlan(scale, max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
