"""gridcodes: fast multi-resolution feature grids for PyTorch.

``MultiResGrid`` holds groups of dense, tiled or hashed multi-resolution grids and
looks points up in all groups at once: Triton kernels on CUDA (or under
``TRITON_INTERPRET=1``), fused ATen ops on the CPU, and a pure-PyTorch reference that
both are tested against. ``FusedMLP`` is tiny-cuda-nn's fully fused MLP in Triton, and
``gridcodes.tcnn`` is tiny-cuda-nn's Python API on both.
"""

from .levels import GridConfig, level_resolutions
from .mlp import FusedMLP
from .module import MultiResGrid
from .reference import grid_encode_reference
from .usage import hit_counts, usage_rate

__all__ = [
    "FusedMLP",
    "GridConfig",
    "MultiResGrid",
    "grid_encode_reference",
    "hit_counts",
    "level_resolutions",
    "usage_rate",
]
__version__ = "0.1.0"
