"""Embedded example 'digits': a small CNN on scikit-learn digits with a planted watermark shortcut, and its control."""
