"""gridcodes: fast multi-resolution feature grids for PyTorch.

``MultiResGrid`` holds groups of dense, tiled or hashed multi-resolution grids and
looks points up in all groups at once: Triton kernels on CUDA (or under
``TRITON_INTERPRET=1``), fused ATen ops on the CPU, and a pure-PyTorch reference that
both are tested against.
"""

from .levels import GridConfig, level_resolutions
from .module import MultiResGrid
from .reference import grid_encode_reference
from .usage import hit_counts, usage_rate

__all__ = [
    "GridConfig",
    "MultiResGrid",
    "grid_encode_reference",
    "hit_counts",
    "level_resolutions",
    "usage_rate",
]
__version__ = "0.1.0"
