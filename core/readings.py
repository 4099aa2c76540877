"""How the analyses are read: WeightWatcher's published α bands and the gradient approximation statement.

Torch-free, so that the views, figures and report that only draw the cached tables never import torch.
"""

from __future__ import annotations

import math

from ckptboard.core.records import StrEnum

__all__ = ["AlphaBand", "alpha_band", "OVER_TRAINED_BELOW", "UNDER_TRAINED_ABOVE", "APPROXIMATION"]

OVER_TRAINED_BELOW = 2.0  # WeightWatcher's OVER_TRAINED_THRESH
UNDER_TRAINED_ABOVE = 6.0  # WeightWatcher's UNDER_TRAINED_THRESH

APPROXIMATION = (
    "From the optimizer state: Adam's moments are exponential moving averages of the gradient (β₂ ≈ 0.999: the last "
    "~1000 steps), bias-corrected with the saved step; not the gradient of any single step."
)


class AlphaBand(StrEnum):
    """WeightWatcher's published interpretation of alpha (its labels, not ckptboard's judgement)."""

    OVER_TRAINED = "over-trained"  # alpha < 2
    WELL_TRAINED = "well-trained"  # 2 <= alpha <= 6
    UNDER_TRAINED = "under-trained"  # alpha > 6
    NONE = ""  # no alpha


def alpha_band(alpha: float) -> AlphaBand:
    """WeightWatcher's label for ``alpha`` (NaN: none)."""
    if not math.isfinite(alpha):
        return AlphaBand.NONE
    if alpha < OVER_TRAINED_BELOW:
        return AlphaBand.OVER_TRAINED
    if alpha > UNDER_TRAINED_ABOVE:
        return AlphaBand.UNDER_TRAINED
    return AlphaBand.WELL_TRAINED
