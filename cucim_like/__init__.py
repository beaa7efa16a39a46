"""cucim_like: fast whole-slide image and volume loading with cuCIM's API.

``import cucim_like`` loads only NumPy and the package's own modules; format parsers, codecs and any GPU
package are imported when first used.
"""

from ._version import __version__
from .cache import preferred_memory_capacity
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

__all__ = [
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
    "preferred_memory_capacity",
    "tissue_locations",
]
