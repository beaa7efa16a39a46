"""The one error hierarchy of cucim_like.

Every error raised on purpose by the library derives from :class:`CucimLikeError` and, where it helps
callers, from the matching built-in (``except ValueError`` / ``except OSError`` keep working). Errors carry
the path, level and tile they concern when those are known, and name them in their message.
"""

from __future__ import annotations

__all__ = [
    "CodecUnavailableError",
    "CorruptFileError",
    "CucimLikeError",
    "DecodeError",
    "DeviceUnavailableError",
    "FileAccessError",
    "ImageFileNotFoundError",
    "InvalidArgumentError",
    "LevelError",
    "MissingChunkError",
    "OptionalDependencyError",
    "UnknownAssociatedImageError",
    "UnsupportedFormatError",
]


class CucimLikeError(Exception):
    """Root of every error cucim_like raises on purpose.

    ``path``, ``level`` and ``tile`` say where the problem is, when known; they are appended to the message.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        level: int | None = None,
        tile: object = None,
    ) -> None:
        self.message = message
        self.path = path
        self.level = level
        self.tile = tile
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(f"path={self.path!r}")
        if self.level is not None:
            where.append(f"level={self.level}")
        if self.tile is not None:
            where.append(f"tile={self.tile}")
        return f"{self.message} ({', '.join(where)})" if where else self.message

    def __reduce__(self):  # keep the keyword fields across pickling (worker processes)
        return (_rebuild, (type(self), self.message, self.path, self.level, self.tile))


def _rebuild(cls, message, path, level, tile):
    return cls(message, path=path, level=level, tile=tile)


class ImageFileNotFoundError(CucimLikeError, FileNotFoundError, ValueError):
    """The path does not exist (also a ValueError, which is what cuCIM raises for it)."""


class FileAccessError(CucimLikeError, PermissionError):
    """The file exists but may not be read."""


class UnsupportedFormatError(CucimLikeError, ValueError):
    """The file's content is not an image format cucim_like reads (or is a directory)."""


class CorruptFileError(CucimLikeError, OSError):
    """The file's structure is damaged: truncated, offsets past the end, absurd header values."""


class DecodeError(CucimLikeError, ValueError):
    """A tile's compressed bytes could not be decoded into the expected shape and dtype."""


class MissingChunkError(CorruptFileError, LookupError):
    """A chunk of a chunked volume is absent and the image was opened with ``missing="raise"``."""


class CodecUnavailableError(CucimLikeError, RuntimeError):
    """The codec a tile needs is not installed; raised at read time, never at import or open."""


class DeviceUnavailableError(CucimLikeError, RuntimeError):
    """A device (e.g. ``"cuda"``) was asked for but it, or a package it needs, is missing."""


class OptionalDependencyError(CucimLikeError, ImportError):
    """A feature needs an optional package (an extra such as ``cucim_like[dask]``) that is not installed."""


class InvalidArgumentError(CucimLikeError, ValueError):
    """A caller's argument is out of range or of the wrong kind."""


class LevelError(InvalidArgumentError, IndexError):
    """A resolution level that the image does not have."""


class UnknownAssociatedImageError(CucimLikeError, KeyError):
    """An associated image name that the file does not have."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return CucimLikeError.__str__(self)
