"""The package version, read from the repository's VERSION file at build time."""

__version__ = "0.1.0"
