"""Validation of read_region's arguments: integer sequences of any kind (NumPy arrays too), clear errors."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgumentError, LevelError


def as_int(value: object, name: str) -> int:
    """An integer from a Python or NumPy integer; InvalidArgumentError for floats, bools, strings."""
    if type(value) is int:  # the common case, without the ABC checks
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral | np.integer):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    return operator.index(value)


def all_ints(values: tuple) -> bool:
    """Whether every item is a Python int (not a bool, not a NumPy integer): a check without generators."""
    for v in values:
        if type(v) is not int:
            return False
    return True


def int_tuple(value: object, length: int | Sequence[int], name: str) -> tuple[int, ...]:
    """A tuple of integers from any sequence or NumPy integer array of one of the allowed lengths."""
    if type(value) is tuple and len(value) == length and all_ints(value):  # the common case, fast
        return value
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
    for s in size:
        if s <= 0:
            raise InvalidArgumentError(f"size must be positive, got {size}")
    return size


def check_workers(num_workers: object) -> int:
    n = as_int(num_workers, "num_workers")
    if n < 0:
        raise InvalidArgumentError(f"num_workers must be >= 0, got {n}")
    return n


def _physical_memory() -> int:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 46


_MEMORY: list[int] = []


def check_output_bytes(nbytes: int, what: str) -> None:
    """Refuse outputs larger than this machine's physical memory before allocating them."""
    if not _MEMORY:
        _MEMORY.append(_physical_memory())
    limit = _MEMORY[0]
    if nbytes > limit:
        raise InvalidArgumentError(f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's memory")


def parse_locations(location: object, nd: int) -> tuple[np.ndarray, bool]:
    """Locations as an int64 array (N, nd) and whether a single location was given flat, e.g. (x, y).

    Accepts sequences, NumPy integer arrays of any integer dtype (flat or N x nd) and iterables such as
    generators; a flat sequence of N * nd integers is read as N locations.
    """
    try:
        return _parse_locations(location, nd)
    except OverflowError:
        raise InvalidArgumentError("locations do not fit 64-bit integers") from None


def _parse_locations(location: object, nd: int) -> tuple[np.ndarray, bool]:
    if type(location) is tuple and len(location) == nd and all(type(v) is int for v in location):
        return np.array([location], dtype=np.int64), True  # the common case, fast
    if isinstance(location, np.ndarray):
        if location.dtype.kind not in "iu":
            raise InvalidArgumentError(f"locations must hold integers, got an array of {location.dtype}")
        arr = location
    else:
        if isinstance(location, str | bytes):
            raise InvalidArgumentError(f"location must be integers, got {location!r}")
        try:
            items = list(location)  # type: ignore[call-overload]
        except TypeError:
            raise InvalidArgumentError(f"location must be a sequence of integers, got {location!r}") from None
        if not items:
            raise InvalidArgumentError("locations are empty")
        if all(isinstance(v, numbers.Integral | np.integer) and not isinstance(v, bool | np.bool_) for v in items):
            arr = np.array([operator.index(v) for v in items], dtype=np.int64)
        else:
            rows = []
            for v in items:
                row = int_tuple(v, nd, "each location")
                rows.append(row)
            arr = np.array(rows, dtype=np.int64).reshape(-1, nd)
    if arr.size == 0:
        raise InvalidArgumentError("locations are empty")
    if arr.ndim == 1:
        if arr.size == nd:
            return arr.astype(np.int64).reshape(1, nd), True
        if arr.size % nd:
            raise InvalidArgumentError(f"{arr.size} values cannot be read as locations of {nd} integers")
        return arr.astype(np.int64).reshape(-1, nd), False
    if arr.ndim != 2 or arr.shape[1] != nd:
        raise InvalidArgumentError(f"locations must have shape (N, {nd}), got {arr.shape}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and (arr > np.iinfo(np.int64).max).any():
        raise InvalidArgumentError("locations do not fit 64-bit integers")
    return arr.astype(np.int64), False


_checked_fills: dict[tuple[int, str], int] = {}


def check_fill(fill: object, dtype: np.dtype) -> float | int:
    """A fill value that ``dtype`` can hold exactly (integers in range; any real number for floats)."""
    if type(fill) is int:  # the common case: remembered per (value, dtype)
        key = (fill, dtype.str)
        value = _checked_fills.get(key)
        if value is None:
            value = _check_fill(fill, dtype)
            if len(_checked_fills) < 1024:
                _checked_fills[key] = value
        return value
    return _check_fill(fill, dtype)


def _check_fill(fill: object, dtype: np.dtype) -> float | int:
    if isinstance(fill, bool | np.bool_) or not isinstance(fill, numbers.Real | np.number):
        raise InvalidArgumentError(f"fill must be a number, got {fill!r}")
    if dtype.kind not in "iu":  # float and complex samples hold any real number
        return float(fill)
    value = float(fill)
    info = np.iinfo(dtype)
    if not value.is_integer() or not info.min <= value <= info.max:
        raise InvalidArgumentError(f"fill {fill!r} does not fit the image's {dtype} samples")
    return int(value)
