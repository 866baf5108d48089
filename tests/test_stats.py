"""The 95% interval printed beside every validation accuracy."""
from __future__ import annotations

import math

import pytest

from competition.stats import accuracy_text, wilson_interval


@pytest.mark.parametrize("accuracy, rows, low, high", [
    (0.946, 1000, 0.930208, 0.958379),  # the default run's 1,000-row split
    (0.6, 5, 0.230724, 0.882379),  # few rows: wide
    (1.0, 100, 0.963007, 1.0),  # a perfect score still has an interval below it
    (0.0, 20, 0.0, 0.161125),
])
def test_wilson_interval_matches_the_closed_form(accuracy: float, rows: int, low: float, high: float) -> None:
    # Values from the other form of the same interval: the roots p of (accuracy - p)² = z² p (1 - p) / rows.
    assert wilson_interval(accuracy, rows) == pytest.approx((low, high), abs=1e-5)


def test_the_interval_narrows_with_rows_and_holds_the_accuracy() -> None:
    widths = []
    for rows in (100, 1000, 10000):
        low, high = wilson_interval(0.93, rows)
        assert low < 0.93 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(0.0316, abs=5e-4)  # the ±1.6 points of a 1,000-row split


def test_accuracy_text_says_the_rows() -> None:
    assert accuracy_text(0.946, 1000) == "94.60% (93.02-95.84%, 1,000 rows)"
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0))
