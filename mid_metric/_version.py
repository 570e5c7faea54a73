"""Version of the mid-metric package."""

__version__ = "0.1.0"
