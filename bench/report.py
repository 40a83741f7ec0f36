"""Results of a benchmark: rows of samples, medians, ratios against a named row, JSON. Shared by every bench."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class Row:
    section: str
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    vs: str | None = None  # name of the row in the same section this one is divided by
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


@dataclass
class Report:
    facts: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    def row(self, section: str, name: str, unit: str, *, vs: str | None = None, note: str = "") -> Row:
        for row in self.rows:
            if row.section == section and row.name == name:
                return row
        row = Row(section, name, unit, vs=vs, note=note)
        self.rows.append(row)
        return row

    def ratio(self, row: Row) -> float | None:
        base = next((r for r in self.rows if r.section == row.section and r.name == row.vs), None)
        if base is None or not base.median or row.median is None:
            return None
        return row.median / base.median

    def grouped(self) -> list[Row]:
        """Rows with each section's rows together, sections in order of first appearance."""
        order = {s: i for i, s in reversed(list(enumerate(r.section for r in self.rows)))}
        return sorted(self.rows, key=lambda r: order[r.section])

    def to_json(self) -> dict[str, Any]:
        rows = [
            {
                "section": r.section,
                "name": r.name,
                "unit": r.unit,
                "median": r.median,
                "samples": r.samples,
                "vs": r.vs,
                "ratio": self.ratio(r),
                "note": r.note,
            }
            for r in self.grouped()
        ]
        return {"facts": self.facts, "rows": rows}

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def median_of(self, section: str, name: str) -> float | None:
        return next((r.median for r in self.rows if r.section == section and r.name == name), None)


def fmt(value: float | None) -> str:
    """A median for the table: fewer decimals the larger it is."""
    if value is None:
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 0.1 else 3
    return f"{value:.{digits}f}"


def rows_table(report: Report) -> Table:
    """The rows as a rich table: section, measurement, median, unit, min-max, n, ratio, note."""
    from rich.table import Table

    table = Table()
    for name in ("section", "measurement", "median", "unit", "min-max", "n", "ratio", "note"):
        table.add_column(name, justify="right" if name in ("median", "n", "ratio") else "left")
    last = None
    for row in report.grouped():
        ratio = report.ratio(row)
        span = f"{fmt(min(row.samples))}-{fmt(max(row.samples))}" if row.samples else ""
        table.add_row(
            row.section if row.section != last else "",
            row.name,
            fmt(row.median),
            row.unit,
            span,
            str(len(row.samples)) if row.samples else "",
            f"{ratio:.2f}x" if ratio is not None else "",
            row.note,
        )
        last = row.section
    return table


def print_facts_and_rows(report: Report, title: str, width: int) -> None:
    from rich.console import Console

    console = Console(width=width, highlight=False)
    console.print(f"[bold]{title}[/bold]")
    for key, value in report.facts.items():
        console.print(f"  {key}: {value}")
    console.print(rows_table(report))
