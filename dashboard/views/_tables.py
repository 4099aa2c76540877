"""Tables the views send to the browser, capped: a dataframe is sent whole on every rerun that draws it (20,000
tensor rows were 4.9 MB per visit of Tensors), so a view shows its most relevant rows, says how many it left out,
and offers the whole table as one CSV download, built only when the button is clicked."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

__all__ = ["TABLE_ROWS", "capped", "capped_table"]

# Rows a table sends at most: ~20 columns × 1,000 rows is ~250 kB of Arrow, drawn in a fraction of a second.
TABLE_ROWS = 1_000


def capped(frame: pd.DataFrame, limit: int = TABLE_ROWS, *, largest: str | None = None) -> pd.DataFrame:
    """``frame``'s first ``limit`` rows; with ``largest``, the ``limit`` rows of largest ``largest`` (ties: the
    earlier row), kept in ``frame``'s order."""
    if len(frame) <= limit:
        return frame
    if largest is None:
        return frame.head(limit)
    keep = pd.to_numeric(frame[largest], errors="coerce").reset_index(drop=True).nlargest(limit, keep="first")
    return frame.iloc[sorted(keep.index)]


def capped_table(shown: pd.DataFrame, total: int, *, key: str, what: str, chosen: str,
                 whole: Callable[[], pd.DataFrame], file_name: str, **dataframe_args) -> None:
    """``shown`` (at most :data:`TABLE_ROWS` of ``total`` rows) as a dataframe; when rows were left out, a caption
    saying which (``chosen``: "the largest", ...) and a download of ``whole()`` as CSV, computed on click."""
    st.dataframe(shown, hide_index=True, key=key, **dataframe_args)
    if total <= len(shown):
        return
    st.caption(f"{len(shown):,} of {total:,} {what} shown: {chosen}. Narrow them with the filters, or download "
               "the whole table.")
    st.download_button(f"Download all {total:,} {what} (CSV)", data=lambda: whole().to_csv(index=False),
                       file_name=file_name, mime="text/csv", key=f"{key}_download", on_click="ignore")
