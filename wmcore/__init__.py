"""wmcore: how fast does a world model's imagination drift from reality?"""

__all__ = ["__version__"]

__version__ = "0.1.0"
