"""Size & FLOPs: the size breakdown of a checkpoint (treemap or sunburst by module, bytes by dtype, parameters vs
buffers) and the FLOP breakdown (chart, table per module, ops counted as 0) of a model SPEC on an input shape, or of
the checkpoint's own config.json (transformers) on inputs the config implies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from ckptboard.core.errors import CkptboardError, FlopCountError, UsageError
from ckptboard.dashboard.config import resolve_under_root
from ckptboard.dashboard.figures.size import dtype_bars, flops_treemap
from ckptboard.dashboard.state import ViewContext, memo
from ckptboard.dashboard.text import format_bytes
from ckptboard.dashboard.views._module_tree import checkpoint_rollup, module_tree_chart, size_tree
from ckptboard.dashboard.views._pickers import checkpoint_picker

if TYPE_CHECKING:
    from ckptboard.core.flops import InputSpec

__all__ = ["render", "checked_spec"]

# The FLOP modules import torch (seconds, once per server): they are imported where the FLOP section needs them, after
# the size charts are on screen.


def render(ctx: ViewContext) -> None:
    checkpoint = checkpoint_picker(ctx, "size_checkpoint")
    group = module_tree_chart(ctx, checkpoint, key_prefix="size")
    shown = ctx.narrow(checkpoints=[checkpoint])
    left, right = st.columns(2)
    with left:
        st.plotly_chart(memo(_dtype_bars, shown, checkpoint, group), key="size_dtype_chart")
    with right:
        st.dataframe(memo(_kinds, shown, checkpoint, group), hide_index=True, key="size_kinds_table")
    st.subheader("FLOPs")
    _flops(ctx, checkpoint)


def _dtype_bars(tables, checkpoint: str, group: str):
    return dtype_bars(size_tree(tables, checkpoint, group, depth=1))


def _kinds(tables, checkpoint: str, group: str) -> pd.DataFrame:
    """Elements, bytes and tensors of one state_dict by kind (tied tensors included), from the module roll-up."""
    rollup = checkpoint_rollup(tables, checkpoint, depth=1)
    rollup = rollup[rollup["group"].fillna("").astype(str) == group]
    kinds = rollup.groupby("kind", as_index=False)[["numel", "nbytes", "tensors"]].sum()
    kinds["nbytes"] = kinds["nbytes"].map(format_bytes)  # the units of the charts above
    return kinds


def checked_spec(root, spec: str) -> str:
    """A model SPEC typed into the app: its ``file.py`` must lie under ROOT (dotted module specs are refused)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"model SPEC {spec!r}: expected 'path/to/file.py:factory' (a file under ROOT)")
    if not target.endswith(".py"):
        raise UsageError(
            f"model SPEC {spec!r}: in the app only a .py file under ROOT is accepted; "
            "pass a package.module:factory SPEC on the command line with --model"
        )
    return f"{resolve_under_root(root, target)}:{attr}"


@st.cache_resource(show_spinner="Counting FLOPs…", max_entries=8)
def _flop_report(spec: str, inputs: tuple[InputSpec, ...] | None):
    """FLOPs of SPEC's model on ``inputs``; ``None`` inputs: those its transformers config implies."""
    from ckptboard.core.flops import count_flops
    from ckptboard.core.hf_inputs import default_inputs
    from ckptboard.core.model_spec import load_model

    model = load_model(spec)
    how = ""
    if inputs is None:
        defaults = default_inputs(model)
        if defaults is None:
            raise UsageError(f"{type(model).__name__}: its config implies no input; give an input shape")
        inputs, how = tuple(defaults.specs), defaults.description
    return count_flops(model, list(inputs), build_cpu_model=lambda: load_model(spec, device="cpu")), how


def _config_spec(ctx: ViewContext, checkpoint: str) -> tuple[str | None, str]:
    """``hf:CONFIG`` for a checkpoint with a transformers config.json beside it, and a line saying why not."""
    path = ctx.config.root / checkpoint
    if not ((path if path.is_dir() else path.parent) / "config.json").is_file():
        return None, ""  # find_config's first test (and, with no metadata, its only one), before importing torch
    from ckptboard.core.hf_model import HF_EXTRA_HINT, find_config, transformers_installed
    from ckptboard.core.model_spec import HF_PREFIX

    config, peft_base = find_config(path)
    if config is None or peft_base:
        return None, ""
    if not transformers_installed():
        return None, f"`{config.name}` found beside the checkpoint: {HF_EXTRA_HINT}."
    return f"{HF_PREFIX}{config}", ""


def _flops(ctx: ViewContext, checkpoint: str) -> None:
    config = ctx.config
    st.session_state.setdefault("flops_model", config.model or "")
    st.session_state.setdefault("flops_input_shape", ",".join(map(str, config.input_shape or ())))
    st.session_state.setdefault("flops_input_dtype", config.input_dtype or "")
    left, middle, right = st.columns([3, 1, 1])
    with left:
        typed = st.text_input(
            "Model SPEC", key="flops_model", placeholder="path/under/ROOT/model.py:Net", persist_state="session",
        )  # fmt: skip
    with middle:
        shape_text = st.text_input("Input shape", key="flops_input_shape", placeholder="1,3,32,32",
                                   persist_state="session")
    with right:
        dtype_text = st.text_input("Input dtype", key="flops_input_dtype", placeholder="float32 (int64: token ids)",
                                   persist_state="session")
    config_spec, why_not = (None, "") if typed else _config_spec(ctx, checkpoint)
    if not (typed and shape_text) and config_spec is None:
        st.info("Give a model SPEC (a `file.py:factory` under ROOT) and an input shape to see the FLOP breakdown; "
                "a Hugging Face checkpoint's own config.json needs neither. " + why_not)
        return
    from ckptboard.core.flops import module_table, parse_input_specs
    from ckptboard.core.model_spec import HF_PREFIX

    try:
        # The command line's --model is trusted as given; what is typed here must stay under ROOT.
        spec = config_spec or (typed if typed == config.model else checked_spec(config.root, typed))
        inputs = tuple(parse_input_specs([shape_text], [dtype_text] if dtype_text else [])) if shape_text else None
        report, how = _flop_report(spec, inputs)
    except FlopCountError as e:
        st.error(f"FlopCountError: {e}")
        st.info("A language model takes int64 token ids: set the input dtype to int64 here, or start the app with "
                "`ckptboard serve ROOT --input-shape 1,128 --input-dtype int64`.")
        return
    except CkptboardError as e:
        st.error(f"{type(e).__name__}: {e}")
        return
    if config_spec:
        st.caption(f"Model {report.model} built from `{spec[len(HF_PREFIX):]}`" + (f"; inputs: {how}" if how else ""))
    st.plotly_chart(flops_treemap(report), key="flops_chart")
    table = module_table(report=report).drop(columns=["params", "buffers", "bytes"])
    st.dataframe(table, hide_index=True, key="flops_table")
    if report.unsupported_ops:
        st.caption("Ops with no FLOP formula, counted as 0 (pointwise ones by the counter's design; the others may "
                   "hide real work):")
        st.dataframe(
            [{"op": op.op, "category": op.category, "calls": op.calls, "modules": ", ".join(op.modules)}
             for op in report.unsupported_ops],
            hide_index=True, key="flops_zero_ops",
        )
