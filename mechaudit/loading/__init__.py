"""Loading models and data without running code the user did not ask for."""

from .data import AuditData, load_data
from .hashing import sha256_file
from .model import LoadedModel, load_model

__all__ = ["AuditData", "LoadedModel", "load_data", "load_model", "sha256_file"]
