"""Pure figure builders: cached statistics tables in, ``plotly.graph_objects.Figure`` out.

The Streamlit app and the HTML export call the same functions.
"""
