"""clt-bench: do cross-layer transcoders find the mechanisms we already know are there?"""

__version__ = "0.1.0"
