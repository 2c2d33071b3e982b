"""Raises while being imported."""

raise RuntimeError("FAIL-IMPORT-RAISED")
