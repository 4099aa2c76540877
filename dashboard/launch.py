"""The process ``ckptboard serve`` starts: Streamlit's own command line (``python -m ckptboard.dashboard.launch run
app.py ...`` is ``streamlit run app.py ...``), with the libraries every page needs imported before the server
starts, so that the first page of a fresh server does not wait the second they take: the server answers that much
later, usually while the user is still reading the URL that ``serve`` printed.

Not on a background thread: a library imported half-way on one thread is seen half-initialised by another
(Plotly's validators look ``pandas`` up in ``sys.modules``), which fails the page.

Arrow allocates from the C library's heap (:data:`ARROW_POOL`, unless the environment says otherwise), which the
app hands back to the system after each page (``malloc_trim``); Arrow's default, mimalloc, keeps what a read freed.
At 50 x 20,000 tensors an AppTest round over every view peaked at 830 MB with mimalloc, 720 MB with this.
"""

from __future__ import annotations

import importlib
import os

__all__ = ["ARROW_POOL", "WARM_IMPORTS", "main"]

ARROW_POOL = ("ARROW_DEFAULT_MEMORY_POOL", "system")  # read once, when pyarrow is first imported

# The app's own first page too (sidebar, Overview, state: 0.1 s), none of which imports torch.
WARM_IMPORTS = ("pandas", "pyarrow.compute", "pyarrow.dataset", "pyarrow.parquet", "plotly.graph_objects",
                "plotly.subplots", "ckptboard.dashboard.sidebar", "ckptboard.dashboard.views.overview")


def main() -> None:
    """Import :data:`WARM_IMPORTS`, then hand the command line to Streamlit."""
    os.environ.setdefault(*ARROW_POOL)
    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  a broken install: the page imports it again and shows the error
            break
    from streamlit.web.cli import main as streamlit_main

    streamlit_main(prog_name="streamlit")  # the name Streamlit's server expects on its command line


if __name__ == "__main__":
    main()
