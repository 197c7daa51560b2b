"""Figures and viewers for scans, masks and Grad-CAM maps."""

from ichlib.viz.viewer import SliceViewer

__all__ = ["SliceViewer"]
