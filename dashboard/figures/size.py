"""Size & FLOPs figures: a module treemap (or sunburst) of bytes, parameters or elements, bytes by dtype, a FLOP
treemap, and the module table joining sizes and FLOPs (``module_table``, from ckptboard.core.flops)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ckptboard.core.errors import UsageError
from ckptboard.core.records import StrEnum
from ckptboard.core.size import SizeNode
from ckptboard.dashboard.figures._common import byte_ticks, empty_figure
from ckptboard.dashboard.text import format_bytes, format_count, format_si

if TYPE_CHECKING:
    import pandas as pd

    from ckptboard.core.flops import FlopReport

__all__ = ["MAX_CHILDREN", "SizeMetric", "ChartKind", "rollup_tree", "size_treemap", "dtype_bars", "flops_treemap", "module_table"]

_ROOT_ID = "(model)"
_MARGIN = {"t": 40, "l": 0, "r": 0, "b": 0}
# A label too small to read is hidden (its value stays on hover) rather than shrunk to a speck.
_UNIFORM_TEXT = {"minsize": 11, "mode": "hide"}
_HEIGHT = 520
# Boxes per module in a size chart: a browser takes seconds to draw thousands (a 2,500-layer model at depth 2), and
# no one reads them; the rest of a module's children are one box.
MAX_CHILDREN = 50


class SizeMetric(StrEnum):
    BYTES = "bytes"
    PARAMETERS = "parameters"  # parameter elements
    ELEMENTS = "elements"  # parameter + buffer elements


class ChartKind(StrEnum):
    TREEMAP = "treemap"
    SUNBURST = "sunburst"


# Names the tensors table uses for the same measures.
_METRIC_ALIASES = {"nbytes": SizeMetric.BYTES, "numel": SizeMetric.ELEMENTS}

_METRIC_VALUE: dict[SizeMetric, Callable[[SizeNode], int]] = {
    SizeMetric.BYTES: lambda n: n.bytes,
    SizeMetric.PARAMETERS: lambda n: n.parameters,
    SizeMetric.ELEMENTS: lambda n: n.parameters + n.buffers,
}


def rollup_tree(rollup: pd.DataFrame) -> SizeNode:
    """The module tree of one checkpoint's group from its module roll-up rows
    (:meth:`ckptboard.core.dataset.StatsDataset.module_rollup`): the figures of :func:`ckptboard.core.size.
    size_tree_from_frame` for every node down to the roll-up's depth, built from a few rows instead of every tensor
    (the nodes list no tensors)."""
    nodes: dict[str, SizeNode] = {"": SizeNode("")}
    columns = ["module", "kind", "trainable", "dtype", "counted", "tensors", "numel", "nbytes"]
    for module, kind, trainable, dtype, counted, tensors, numel, nbytes in rollup[columns].itertuples(index=False):
        module = "" if module is None or module != module else str(module)
        path: str | None = module
        while path is not None:
            _rollup_add(_rollup_node(nodes, path), str(kind), trainable, str(dtype), bool(counted), int(tensors),
                        int(numel), int(nbytes))
            path = path.rpartition(".")[0] if path else None
    return nodes[""]


def _rollup_node(nodes: dict[str, SizeNode], module: str) -> SizeNode:
    if module not in nodes:
        nodes[module] = SizeNode(module)
        _rollup_node(nodes, module.rpartition(".")[0]).children.append(nodes[module])
    return nodes[module]


def _rollup_add(node: SizeNode, kind: str, trainable, dtype: str, counted: bool, tensors: int, numel: int,
                nbytes: int) -> None:
    """One roll-up row into ``node``: the rule of ``SizeNode._add``, for ``tensors`` tensors at once."""
    if not counted:
        node.tied += tensors
    elif kind == "buffer":
        node.buffers += numel
        node.buffer_bytes_by_dtype[dtype] = node.buffer_bytes_by_dtype.get(dtype, 0) + nbytes
    else:
        value = str(trainable).lower()
        attr = "trainable" if value == "true" else "frozen" if value == "false" else "unknown"
        setattr(node, attr, getattr(node, attr) + numel)
        node.parameter_bytes_by_dtype[dtype] = node.parameter_bytes_by_dtype.get(dtype, 0) + nbytes


def size_treemap(
    tree: SizeNode, metric: str = "bytes", *, chart: str = "treemap", max_depth: int | None = None
) -> go.Figure:
    """Modules as nested boxes (or rings) sized by ``metric``: "bytes", "parameters" or "elements"; a module's
    children beyond its :data:`MAX_CHILDREN` largest are drawn as one box (``(2,460 more)``)."""
    kind, chart_kind = _metric(metric), _chart(chart)
    value = _METRIC_VALUE[kind]
    if not value(tree):
        return empty_figure(f"no {kind} in this checkpoint")
    paths, values, hover = [], [], []
    for node, rest in _bounded_walk(tree, max_depth, value):
        if rest:
            paths.append(f"{node.module}.({len(rest):,} more)" if node.module else f"({len(rest):,} more)")
            values.append(sum(value(n) for n in rest))
            hover.append(f"{len(rest):,} more modules under {node.module or _ROOT_ID}, each smaller than those shown")
            continue
        paths.append(node.module)
        values.append(value(node))
        hover.append(
            f"{node.module or _ROOT_ID}<br>{node.parameters:,} parameters ({node.trainable:,} trainable, "
            f"{node.frozen:,} frozen)<br>{node.buffers:,} buffer elements<br>{node.bytes:,} bytes "
            f"({format_bytes(node.bytes)})" + (f"<br>{node.tied} tied tensor(s), counted once elsewhere" if node.tied
                                               else ""))
    text = [_value_text(kind, v) for v in values]
    trace = _hierarchy(chart_kind, paths, values, hover, branchvalues="total", text=text)
    fig = go.Figure(trace)
    depth = "" if max_depth is None else f", modules to depth {max_depth}"
    fig.update_layout(title=f"{kind} by module (total {_metric_text(kind, values[0])}{depth})", margin=_MARGIN,
                      uniformtext=_UNIFORM_TEXT, height=_HEIGHT)
    return fig


def _bounded_walk(tree: SizeNode, max_depth: int | None, value: Callable[[SizeNode], int]):
    """``(node, [])`` for each node to ``max_depth``, parents first, keeping each module's :data:`MAX_CHILDREN`
    largest children; ``(parent, the others)`` once for the children left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node, []
        children = [c for c in node.children if max_depth is None or c.depth <= max_depth]
        if len(children) > MAX_CHILDREN:
            ranked = sorted(children, key=value, reverse=True)
            kept = {id(c) for c in ranked[:MAX_CHILDREN]}
            yield node, ranked[MAX_CHILDREN:]
            children = [c for c in children if id(c) in kept]
        stack.extend(reversed(children))


def dtype_bars(tree: SizeNode) -> go.Figure:
    """Bytes by dtype, one bar group per dtype: parameters beside buffers."""
    dtypes = sorted(set(tree.parameter_bytes_by_dtype) | set(tree.buffer_bytes_by_dtype))
    if not dtypes:
        return empty_figure("no tensors in this checkpoint")
    fig = go.Figure()
    for name, by_dtype in (("parameters", tree.parameter_bytes_by_dtype), ("buffers", tree.buffer_bytes_by_dtype)):
        ys = [by_dtype.get(d, 0) for d in dtypes]
        text = [format_bytes(y) for y in ys]
        fig.add_trace(go.Bar(name=name, x=dtypes, y=ys, text=text, hovertemplate="%{x}: %{y:,} bytes"))
    values, labels = byte_ticks(max(max(by.values(), default=0) for by in (tree.parameter_bytes_by_dtype,
                                                                          tree.buffer_bytes_by_dtype)))
    fig.update_layout(barmode="group", title="bytes by dtype", xaxis_title="dtype", yaxis_title="bytes")
    fig.update_yaxes(tickvals=values, ticktext=labels)
    return fig


def flops_treemap(report: FlopReport, *, chart: str = "treemap", max_depth: int | None = None) -> go.Figure:
    """Modules sized by the FLOPs counted in them (multiply-add = 2 FLOP); the title lists ops counted as 0."""
    chart_kind = _chart(chart)
    n_unsupported = len(report.unsupported_ops)
    unsupported = f"; {n_unsupported} op(s) with no formula counted as 0" if n_unsupported else ""
    if report.total_flops <= 0:
        return empty_figure(f"no FLOPs counted for {report.model}{unsupported}")
    modules = [m for m in report.modules if max_depth is None or m.depth <= max_depth]
    flops = {m.module: m.flops for m in modules}
    children_sum: dict[str, int] = {}
    for m in modules:
        if m.module:
            parent = m.module.rpartition(".")[0]
            children_sum[parent] = children_sum.get(parent, 0) + m.flops
    # Each box holds the FLOPs run in the module itself; its children's boxes add up to the rest.
    own = [max(0, flops[m.module] - children_sum.get(m.module, 0)) for m in modules]
    hover = [f"{m.module or _ROOT_ID}<br>{m.flops:,} FLOP<br>{m.macs:,} MAC" for m in modules]
    text = [f"{format_si(m.flops, 'FLOP')}" for m in modules]
    trace = _hierarchy(chart_kind, [m.module for m in modules], own, hover, branchvalues="remainder", text=text)
    fig = go.Figure(trace)
    fig.update_layout(
        title=f"FLOPs of {report.model} by module: {report.total_flops:,} FLOP on {report.device}{unsupported}",
        margin=_MARGIN, uniformtext=_UNIFORM_TEXT, height=_HEIGHT,
    )
    return fig


def _hierarchy(chart: ChartKind, paths: list[str], values: list[int], hover: list[str], *, branchvalues: str,
               text: list[str]):
    ids = [p or _ROOT_ID for p in paths]
    parents = ["" if not p else (p.rpartition(".")[0] or _ROOT_ID) for p in paths]
    labels = [p.rpartition(".")[2] if p else _ROOT_ID for p in paths]
    cls = go.Treemap if chart == ChartKind.TREEMAP else go.Sunburst
    return cls(
        ids=ids, labels=labels, parents=parents, values=values, branchvalues=branchvalues,
        hovertext=hover, hoverinfo="text", text=text, texttemplate="%{label}<br>%{text}",
    )


def _metric(metric: str) -> SizeMetric:
    try:
        return _METRIC_ALIASES.get(str(metric)) or SizeMetric(str(metric))
    except ValueError:
        choices = ", ".join(m.value for m in SizeMetric)
        raise UsageError(f"size metric {metric!r} is not one of {choices}") from None


def _chart(chart: str) -> ChartKind:
    try:
        return ChartKind(str(chart))
    except ValueError:
        raise UsageError(f"chart {chart!r} is not one of treemap, sunburst") from None


def _value_text(kind: SizeMetric, value: int) -> str:
    """The number written on a box: bytes as 1.5 MiB, counts as 1.2M."""
    return format_bytes(value) if kind == SizeMetric.BYTES else format_count(value)


def _metric_text(kind: SizeMetric, value: int) -> str:
    return f"{value:,} bytes ({format_bytes(value)})" if kind == SizeMetric.BYTES else f"{value:,}"


def module_table(*args, **kwargs) -> pd.DataFrame:
    """:func:`ckptboard.core.flops.module_table`, imported when called: it imports torch, which the size charts
    do not need."""
    from ckptboard.core.flops import module_table as table

    return table(*args, **kwargs)
