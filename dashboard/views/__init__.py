"""One module per dashboard view; each exposes ``render(ctx)`` and draws with the figure builders."""

from __future__ import annotations

from enum import unique

from ckptboard.core.records import StrEnum

__all__ = ["View", "VIEW_KEY", "LinesPer", "render"]

VIEW_KEY = "view"  # session_state key of the view switcher (also the ``?view=`` query parameter)


@unique
class View(StrEnum):
    """The dashboard's views, in the order of the switcher (TensorBoard's tabs)."""

    OVERVIEW = "Overview"
    TENSORS = "Tensors"
    SCALARS = "Scalars"
    HISTOGRAMS = "Histograms"
    BATCHNORM = "BatchNorm"
    SIZE_FLOPS = "Size & FLOPs"
    COMPARE = "Compare"
    HEALTH = "Health"
    SPECTRAL = "Spectral"
    GRADIENTS = "Gradients"


@unique
class LinesPer(StrEnum):
    """What one line of the Scalars view is: a tensor or a whole module (Health's links choose tensors)."""

    TENSORS = "Tensors"
    MODULES = "Modules"


def render(view: View, ctx) -> None:
    """Draw ``view``; its module is imported on first use so the other views cost nothing."""
    import importlib

    module = importlib.import_module(f"ckptboard.dashboard.views.{_MODULES[view]}")
    module.render(ctx)


_MODULES = {
    View.OVERVIEW: "overview",
    View.TENSORS: "tensors",
    View.SCALARS: "scalars",
    View.HISTOGRAMS: "histograms",
    View.BATCHNORM: "batchnorm",
    View.SIZE_FLOPS: "size_flops",
    View.COMPARE: "compare",
    View.HEALTH: "health",
    View.SPECTRAL: "spectral",
    View.GRADIENTS: "gradients",
}
