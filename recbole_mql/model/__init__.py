"""Models this plugin adds to RecBole."""

__all__ = []
