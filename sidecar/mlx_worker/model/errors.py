"""Exceptions raised while finding, converting or loading a model.

Every one is a ``ModelLoadError`` and says which path it is about, so the worker can log one
clear line and exit (the supervisor then backs off instead of spinning).
"""

from __future__ import annotations


class ModelLoadError(Exception):
    """The model could not be loaded; ``path`` is the file or directory concerned."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path does not exist, or the default model's package is not installed."""


class UnsupportedModelError(ModelLoadError, ValueError):
    """The file or directory exists but is not a model this worker can load."""


class ModelCacheError(ModelLoadError, OSError):
    """The conversion cache could not be written (disk full, permissions, ...)."""
