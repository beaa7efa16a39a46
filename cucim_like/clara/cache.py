"""cuCIM's ``cucim.clara.cache`` names: the cache kinds, the cache class and the capacity helper."""

from ..cache import CacheType, preferred_memory_capacity
from ..cache import TileCache as ImageCache

__all__ = ["CacheType", "ImageCache", "preferred_memory_capacity"]
