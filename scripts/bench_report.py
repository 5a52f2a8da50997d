"""The shape of one benchmark figure, shared by scripts/bench.py and the measurements it runs."""

from __future__ import annotations

import math
import statistics
from typing import Any


def figure(
    value: float,
    reference: float,
    *,
    unit: str,
    reference_name: str,
    target: str | None,
    met: bool | None,
    ratio: float | None = None,
    **details: Any,
) -> dict[str, Any]:
    """One figure beside its reference, the ratio and whether its target is met.

    `ratio` defaults to value / reference (NaN when the reference is 0 or missing); a figure
    whose sides may both be 0 passes its own, and says how in its details.
    """
    if ratio is None:
        ratio = value / reference if reference else math.nan
    return {
        "value": round(value, 4),
        "unit": unit,
        "reference": round(reference, 4),
        "reference_name": reference_name,
        "ratio": round(ratio, 4),
        "target": target,
        "met": met,
        **details,
    }


def p50_p90(samples: list[float]) -> tuple[float, float]:
    """Median and 90th percentile (linear interpolation, as numpy's default)."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0], ordered[0]
    position = 0.9 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    p90 = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return statistics.median(ordered), p90
