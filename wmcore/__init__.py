"""wmcore: how fast does a world model's imagination drift from reality?"""

__version__ = "0.1.0"
