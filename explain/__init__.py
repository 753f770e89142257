"""Grad-CAM explanations for detectors (pytorch-grad-cam)."""
