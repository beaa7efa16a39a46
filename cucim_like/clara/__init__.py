"""cuCIM's ``cucim.clara`` namespace, for code that imports from it: ``from cucim_like.clara import CuImage``."""

from ..cuimage import CuImage
from . import cache

__all__ = ["CuImage", "cache"]
