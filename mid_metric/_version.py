"""Version of the mid-metric package."""

__version__ = "0.4.2"
