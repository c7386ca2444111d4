"""GLAG: Gradual Balanced Loss and Adaptive Feature Generation for long-tailed classification."""

__version__ = "0.1.0"
