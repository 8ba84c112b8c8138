"""slimtune's version (written into every study it creates)."""

__version__ = "0.1.0"
