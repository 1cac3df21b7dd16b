"""The training layer: it never imports ipywidgets or plotly, and never prints; it sends events."""
