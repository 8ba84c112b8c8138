"""strategies (see DESIGN.md)."""
