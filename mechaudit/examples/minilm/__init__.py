"""A real pretrained transformer: an audit spec for all-MiniLM-L6-v2 (needs the extra "mechaudit[hf]")."""
