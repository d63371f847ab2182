"""The house prices example: see ``pipeline.py`` and ``README.md``."""
