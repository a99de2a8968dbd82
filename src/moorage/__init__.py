"""Moorage: a self-hosted private container registry."""

__version__ = "0.1.0"
