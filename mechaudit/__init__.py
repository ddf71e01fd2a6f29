"""mechaudit: audit a PyTorch model with a rulebook of mechanistic-interpretability checks."""

__version__ = "0.1.0"

__all__ = ["AuditResult", "InputError", "__version__", "audit", "testing"]


def __getattr__(name: str):
    """The public API, imported on first use so that ``import mechaudit`` stays light (no torch)."""
    if name == "audit":
        from .api import audit

        return audit
    if name == "AuditResult":
        from .findings import AuditResult

        return AuditResult
    if name == "InputError":
        from .errors import InputError

        return InputError
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'mechaudit' has no attribute {name!r}")
