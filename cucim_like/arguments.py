"""Validation of read_region's arguments: integer sequences of any kind (NumPy arrays too), clear errors."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgumentError, LevelError


def as_int(value: object, name: str) -> int:
    """An integer from a Python or NumPy integer; InvalidArgumentError for floats, bools, strings."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral | np.integer):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    return operator.index(value)


def int_tuple(value: object, length: int | Sequence[int], name: str) -> tuple[int, ...]:
    """A tuple of integers from any sequence or NumPy integer array of one of the allowed lengths."""
    lengths = (length,) if isinstance(length, int) else tuple(length)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise InvalidArgumentError(f"{name} must hold integers, got an array of {value.dtype}")
        value = value.reshape(-1).tolist()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        try:
            value = list(value)  # type: ignore[call-overload]
        except TypeError:
            raise InvalidArgumentError(f"{name} must be a sequence of integers, got {value!r}") from None
    if len(value) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise InvalidArgumentError(f"{name} must have {want} values, got {len(value)}")
    return tuple(as_int(v, name) for v in value)


def check_level(level: object, count: int) -> int:
    lvl = as_int(level, "level")
    if not 0 <= lvl < count:
        raise LevelError(f"level {lvl} does not exist; the image has levels 0..{count - 1}")
    return lvl


def check_size(size: tuple[int, ...]) -> tuple[int, ...]:
    if any(s <= 0 for s in size):
        raise InvalidArgumentError(f"size must be positive, got {size}")
    return size


def check_workers(num_workers: object) -> int:
    n = as_int(num_workers, "num_workers")
    if n < 0:
        raise InvalidArgumentError(f"num_workers must be >= 0, got {n}")
    return n


def check_output_bytes(nbytes: int, what: str) -> None:
    """Refuse outputs larger than this machine's physical memory before allocating them."""
    try:
        import os

        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        limit = 1 << 46
    if nbytes > limit:
        raise InvalidArgumentError(f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's memory")
