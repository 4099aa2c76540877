"""One module per dashboard view; each exposes ``render(ctx)`` and draws with the figure builders."""
