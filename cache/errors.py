"""Exceptions raised by the teacher cache."""


class CacheError(Exception):
    """Base class of every error that the teacher cache raises."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """No teacher cache exists at the given path."""


class CacheFormatError(CacheError):
    """The store exists but is not a valid teacher cache of a supported schema."""


class CacheCreationInterruptedError(CacheFormatError):
    """The process creating the store stopped before the store was fully created."""


class IncompleteCacheError(CacheError):
    """The cache lacks steps, videos or arrays that the caller needs."""


class ReadOnlyCacheError(CacheError):
    """A write was attempted on a store opened for reading or already complete."""


class CacheExistsError(CacheError, FileExistsError):
    """A store already exists where a new one was to be created."""
