"""The HTTP layer: an RSGI application (served by Granian) that maps the
distribution API onto the registry services and renders their errors."""

from moorage.http.app import RegistryApp

__all__ = ["RegistryApp"]
