"""Deepfake-video analyst workbench: the analysis core (no Streamlit here; the UI is workbench.ui)."""

__version__ = "0.1.0"
