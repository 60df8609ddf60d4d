"""Outputs of a run: the manifest, score tables, exports and model cards, reports and plots, the terminal view, inference."""
