"""The package version, in one place (saving records it)."""

__version__ = "0.1.0"
