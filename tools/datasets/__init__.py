"""Data sets used by the tools (training, evaluation); never imported at run time."""
