"""Frontends: the numpy drop-in `einsum`, the tracing API, and the `.ein` text language."""
