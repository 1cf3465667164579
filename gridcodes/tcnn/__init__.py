"""tiny-cuda-nn's Python API (``tinycudann``) on gridcodes: switch with one line.

::

    import tinycudann as tcnn          ->   import gridcodes.tcnn as tcnn

``Encoding``, ``Network`` and ``NetworkWithInputEncoding`` take tcnn's configs and
arguments, compute tcnn's numbers and hold tcnn's flat ``params``, so tcnn and nerfstudio
state dicts load as they are; each also takes gridcodes' ``backend=`` ("auto", "triton",
"cpu", "torch"). docs/tcnn.md lists every class, otype, activation and option.
"""

from .grid import grid_arguments, load_params, n_params
from .modules import (
    Encoding,
    Module,
    Network,
    NetworkWithInputEncoding,
    free_temporary_memory,
    supports_jit_fusion,
)

__all__ = [
    "Encoding",
    "Module",
    "Network",
    "NetworkWithInputEncoding",
    "free_temporary_memory",
    "grid_arguments",
    "load_params",
    "n_params",
    "supports_jit_fusion",
]
