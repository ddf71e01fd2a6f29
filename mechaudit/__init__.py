"""mechaudit: audit a PyTorch model with a rulebook of mechanistic-interpretability checks."""

__version__ = "0.1.0"
