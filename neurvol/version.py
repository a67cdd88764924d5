"""The package version (one place: the package root and the encoder import it)."""
__version__ = "0.1.0"
