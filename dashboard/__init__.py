"""ckptboard.dashboard: Plotly figure builders, the Streamlit app, the export and the CLI."""
