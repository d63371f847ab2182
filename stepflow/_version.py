"""The version of stepflow: the one place it is written (``pyproject.toml`` reads it here)."""

# Not read from the installed metadata at run time: every run records the version, and
# importing importlib.metadata to look it up costs a fresh process about 10 ms.
__version__ = "0.1.0"
