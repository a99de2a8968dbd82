"""The HTTP layer: an aiohttp application that maps the
distribution API onto the registry services and renders their errors."""

from moorage.http.app import RegistryApp

__all__ = ["RegistryApp"]
