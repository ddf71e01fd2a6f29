"""Embedded example 'induction': a 2-layer attention-only transformer with a planted induction circuit, and its
control trained without repeats."""
