"""cucim_like: fast whole-slide image and volume loading with cuCIM's API.

``import cucim_like`` loads only NumPy and the package's own modules; format parsers, codecs and any GPU
package are imported when first used.
"""

from ._version import __version__
from .cache import CacheType, preferred_memory_capacity
from .cuda.cache import device_cache
from .cuda.placement import OutputTransform
from .cuimage import CuImage
from .errors import (
    CodecUnavailableError,
    CorruptFileError,
    CucimLikeError,
    DecodeError,
    DeviceUnavailableError,
    FileAccessError,
    ImageFileNotFoundError,
    InvalidArgumentError,
    LevelError,
    OptionalDependencyError,
    UnknownAssociatedImageError,
    UnsupportedFormatError,
)
from .tissue import tissue_locations

_MODULES = frozenset({"", "clara", "core"})


def is_available(module_name: str = "") -> bool:
    """cuCIM's check: whether the package (``""``) or a part of it is there. ``"clara"``/``"core"``
    (CuImage) are; cuCIM's ``"skimage"`` image-processing part is not part of cucim_like."""
    return module_name in _MODULES

__all__ = [
    "CacheType",
    "CodecUnavailableError",
    "CorruptFileError",
    "CuImage",
    "CucimLikeError",
    "DecodeError",
    "DeviceUnavailableError",
    "FileAccessError",
    "ImageFileNotFoundError",
    "InvalidArgumentError",
    "LevelError",
    "OptionalDependencyError",
    "OutputTransform",
    "UnknownAssociatedImageError",
    "UnsupportedFormatError",
    "__version__",
    "device_cache",
    "is_available",
    "preferred_memory_capacity",
    "tissue_locations",
]
