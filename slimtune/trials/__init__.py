"""trials (see DESIGN.md)."""
