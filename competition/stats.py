"""Honest accuracy figures: a validation accuracy is a proportion of rows, so it comes with an interval."""
from __future__ import annotations

import math
from typing import Any, Optional

VIEWS = (1, 2, 6)  # test-time views averaged: none, the image and its mirror, both and both moved by a pixel
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson_interval(accuracy: float, rows: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy measured on `rows` rows.

    Wilson rather than the normal approximation: it stays inside [0, 1] and is right near 0 and 1
    (an accuracy of 1.0 on 100 rows gives 0.963-1.0, not 1.0-1.0).
    """
    if rows <= 0:
        return math.nan, math.nan
    z2n = z * z / rows
    centre = (accuracy + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / rows + z2n / (4 * rows)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_text(accuracy: Optional[float], rows: int, form: str = "prose") -> str:
    """The one accuracy formatter, in four forms:

    - "prose" (log lines, the end of training, predict): `94.60% (93.06-95.77%, 1,000 rows)`;
    - "table" (report.md, cv tables): `0.9460 (0.9306-0.9577)`, `-` for a missing accuracy or interval;
    - "interval" (a column of its own): `0.9306-0.9577`, `-` without rows;
    - "value" (a column of bare accuracies): `0.9460`, `-` for a missing accuracy.
    """
    missing = accuracy is None or math.isnan(accuracy)
    low, high = (math.nan, math.nan) if missing else wilson_interval(accuracy, int(rows))
    value = "-" if missing else f"{accuracy:.4f}"
    interval = "-" if missing or not rows else f"{low:.4f}-{high:.4f}"
    if form in ("interval", "value"):
        return interval if form == "interval" else value
    if form == "table":
        return f"{value} ({interval})"
    return f"{accuracy:.2%} ({low * 100:.2f}-{high:.2%}, {rows:,} rows)"


def views_key(base: str, views: int) -> str:
    """The one name of a figure over `views` test-time views: `base` for one, `base_tta2`, `base_tta6`."""
    return base if views == 1 else f"{base}_tta{views}"


def with_views_named(record: Any) -> Any:
    """A record read from a run folder written before views had one name: a key ending `_tta` (two views,
    then) renamed `_tta2`, at any depth; new records come back unchanged."""
    if isinstance(record, dict):
        return {(f"{key}2" if isinstance(key, str) and key.endswith("_tta") else key): with_views_named(value)
                for key, value in record.items()}
    if isinstance(record, list):
        return [with_views_named(value) for value in record]
    return record
