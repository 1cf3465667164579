"""``MultiResGrid``: the ``nn.Module`` users hold (docs/grids.md §1, §3)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import cpu, cpu_autograd, ops, usage
from .levels import GridConfig, level_table
from .reference import compute_dtype, grid_encode_reference

BACKENDS = ("auto", "triton", "cpu", "torch")
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PARAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_MAX_IN_DIM = 4
TRITON_FEATURES = (1, 2, 4, 8)
FILE_FORMAT = "gridcodes.MultiResGrid/1"


def triton_unsupported(config: GridConfig) -> str | None:
    """Why the Triton backend cannot run ``config``, or None when it can."""
    if reason := ops.triton_missing():
        return reason
    if config.in_dim > TRITON_MAX_IN_DIM:
        return f"in_dim={config.in_dim} (the Triton kernels support 1..{TRITON_MAX_IN_DIM})"
    if config.n_features not in TRITON_FEATURES:
        return f"n_features={config.n_features} (the Triton kernels support {TRITON_FEATURES})"
    return None


class MultiResGrid(nn.Module):
    """Groups of multi-resolution feature grids (dense, tiled or hashed), queried in one call.

    ``grid(x)`` maps ``x`` of shape ``(..., n_groups, in_dim)`` (any float dtype; values are
    meant to lie in [0, 1], anything else is clamped, NaN read as 0) to features of shape
    ``(..., n_groups, n_levels * n_features)`` in the table's dtype. Group g of x reads only
    group g of the table. Gradients flow to the table and to x (docs/grids.md §2).

    Args:
        in_dim: coordinates per point, 1..7 (1..4 for the Triton backend).
        n_groups: independent grids queried together (the paper's N_h).
        n_levels: resolutions per grid (the paper's N_r).
        n_features: features per entry (the paper's C_v); Triton: 1, 2, 4 or 8.
        log2_table_size: T = 2**log2_table_size, the most entries of a hashed or tiled level.
        base_resolution, max_resolution: vertices per axis of the coarsest and finest level.
        resolutions: explicit vertices per axis of each level (overrides base/max).
        grid_type: ``"hash"`` (dense while r**d <= T, spatial hash beyond), ``"tiled"``
            (dense index modulo T) or ``"dense"``.
        interpolation: ``"linear"`` or ``"smoothstep"`` weights.
        backend: ``"triton"`` (CUDA), ``"cpu"`` (fused ATen ops for CPU tensors), ``"torch"``
            (the pure-PyTorch reference) or ``"auto"``: Triton for CUDA tensors when the
            configuration is supported, ``"cpu"`` for CPU tensors, else the reference.
        deterministic: bitwise-reproducible table gradients on the Triton backend (slower);
            also on while ``torch.use_deterministic_algorithms(True)`` is. The ``"cpu"`` and
            ``"torch"`` backends are always reproducible.
        convention: ``"gridcodes"`` (align-corners, docs/grids.md §2; the default), ``"tcnn"`` or
            ``"torch-ngp"``: those libraries' positions, resolutions, sizes and hashing
            (docs/tcnn.md); the resolutions then follow from ``base_resolution`` and
            ``per_level_scale`` (``max_resolution`` and ``resolutions`` are not used).
            :meth:`from_tcnn` builds one from tcnn's JSON config.
        per_level_scale: growth of the position scale per level (tcnn / torch-ngp only).

    Every backend supports second-order gradients (the gradient of dL/dx w.r.t. the table,
    x and dL/dy, as an eikonal loss needs); third-order gradients raise.
    """

    def __init__(
        self,
        in_dim: int,
        n_groups: int = 1,
        n_levels: int = 16,
        n_features: int = 4,
        log2_table_size: int = 18,
        base_resolution: int = 4,
        max_resolution: int = 64,
        resolutions: Sequence[int] | None = None,
        grid_type: str = "hash",
        interpolation: str = "linear",
        backend: str = "auto",
        deterministic: bool = False,
        convention: str = "gridcodes",
        per_level_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.config = GridConfig(
            in_dim=in_dim,
            n_groups=n_groups,
            n_levels=n_levels,
            n_features=n_features,
            log2_table_size=log2_table_size,
            base_resolution=base_resolution,
            max_resolution=max_resolution,
            resolutions=resolutions,
            grid_type=grid_type,
            interpolation=interpolation,
            convention=convention,
            per_level_scale=per_level_scale,
        )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton" and (reason := triton_unsupported(self.config)):
            raise ValueError(
                f"backend='triton' cannot run this grid: {reason}; use backend='torch'"
            )
        self.backend = backend
        self.deterministic = bool(deterministic)
        shape = (n_groups, self.config.n_entries, n_features)
        self.params = nn.Parameter(torch.empty(shape).uniform_(-1e-4, 1e-4))
        self.register_buffer("level_table", level_table(self.config), persistent=False)
        self._coarse_rows = ops.coarse_rows(self.config.level_sizes)
        self._cpu_geometry: dict[tuple, cpu.Geometry] = {}

    @classmethod
    def from_tcnn(
        cls,
        n_input_dims: int,
        encoding_config: Mapping,
        n_groups: int = 1,
        backend: str = "auto",
        deterministic: bool = False,
    ) -> MultiResGrid:
        """A grid with tiny-cuda-nn's semantics, from its encoding config (docs/tcnn.md).

        ``encoding_config`` is tcnn's JSON as a dict: ``otype`` HashGrid / DenseGrid /
        TiledGrid (or Grid with ``type``), ``n_levels``, ``n_features_per_level``,
        ``log2_hashmap_size``, ``base_resolution``, ``per_level_scale``, ``interpolation``
        (Linear / Smoothstep), with tcnn's defaults. Its levels, positions
        (``x * scale + 0.5``), hash and parameter layout are tcnn's, so a trained tcnn
        encoding loads with :meth:`load_tcnn_params` and gives tcnn's outputs::

            # before: enc = tcnn.Encoding(3, config); y = enc(x)      x (N, 3) -> (N, L*F)
            grid = MultiResGrid.from_tcnn(3, config)
            grid.load_tcnn_params(state_dict["field.mlp_base_grid.tcnn_encoding.params"])
            y = grid(x[:, None, :])[:, 0]                          # x (N, 3) -> (N, L*F)

        The input has a group axis, ``(..., n_groups, n_input_dims)``;
        ``gridcodes.tcnn.Encoding`` keeps tcnn's (N, d) -> (N, L*F) call and flat params.
        Coordinates outside [0, 1] are clamped (tcnn wraps them around).
        """
        from .tcnn.grid import grid_arguments  # gridcodes.tcnn builds on this module

        kwargs = grid_arguments(n_input_dims, encoding_config)
        return cls(**kwargs, n_groups=n_groups, backend=backend, deterministic=deterministic)

    def load_tcnn_params(self, flat: torch.Tensor) -> None:
        """Load tcnn's flat parameter vector, (n_params,) or (n_groups, n_params)."""
        from .tcnn.grid import load_params

        load_params(self, flat)

    def tcnn_params(self) -> torch.Tensor:
        """The table in tcnn's flat layout: (n_params,) for one group, else (n_groups, n_params)."""
        flat = self.params.detach().reshape(self.config.n_groups, -1)
        return flat[0] if self.config.n_groups == 1 else flat

    # --- geometry -------------------------------------------------------------------------
    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.config.resolutions

    @property
    def offsets(self) -> tuple[int, ...]:
        return self.config.offsets

    @property
    def out_features(self) -> int:
        """Features per group of the output: ``n_levels * n_features``."""
        return self.config.n_levels * self.config.n_features

    def level_param_counts(self) -> tuple[int, ...]:
        """Parameters of each level, all groups together."""
        c = self.config
        return tuple(c.n_groups * size * c.n_features for size in c.level_sizes)

    # --- lookup ---------------------------------------------------------------------------
    def resolved_backend(self, device: torch.device | None = None) -> str:
        """The backend a lookup on ``device`` (default: the params' device) uses."""
        if self.backend != "auto":
            return self.backend
        device = self.params.device if device is None else torch.device(device)
        if device.type == "cuda" and triton_unsupported(self.config) is None:
            return "triton"
        if device.type == "cpu":
            return "cpu"
        return "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` (..., n_groups, in_dim) -> (..., n_groups, n_levels * n_features).

        Mixed precision: the lookup is excluded from ``torch.autocast``. Coordinates of any
        float dtype and the table are read as they are, the arithmetic is float32 (float64
        for a float64 table), the output has the table's dtype and the gradients those of
        their inputs; the layers after the grid autocast as usual.
        """
        return self.lookup(x, self.params)

    def lookup(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with another table ``params`` (n_groups, n_entries, n_features)."""
        self._check_input(x, params)
        device = x.device.type
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self._lookup(x, params)
        return self._lookup(x, params)

    def _lookup(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        c = self.config
        flat = x.reshape(-1, c.n_groups, c.in_dim)
        if self.backend == "auto" and x.device.type == "cuda":
            self._warn_reference_on_cuda()
        backend = self.resolved_backend(x.device)
        if backend == "cpu":
            self._check_cpu_device(x)
            y = cpu_autograd.grid_encode_cpu(flat, params, self._geometry(x.device, params.dtype))
        elif backend == "triton":
            self._check_triton_device(x)
            deterministic = self.deterministic or torch.are_deterministic_algorithms_enabled()
            smoothstep = c.interpolation == "smoothstep"
            y = ops.grid_encode(
                flat,
                params,
                self.level_table,
                smoothstep,
                c.convention != "gridcodes",
                c.index_reduction,
                deterministic,
                self._coarse_rows,
            )
        else:
            y = grid_encode_reference(flat, params, c)
        return y.reshape(*x.shape[:-2], c.n_groups, self.out_features)

    def _geometry(self, device: torch.device, dtype: torch.dtype | None = None) -> cpu.Geometry:
        """The CPU backend's per-level constants, built once per device and table dtype."""
        key = (device, compute_dtype(self.params if dtype is None else torch.empty(0, dtype=dtype)))
        if key not in self._cpu_geometry:
            self._cpu_geometry[key] = cpu.geometry(self.config, *key)
        return self._cpu_geometry[key]

    def _warn_reference_on_cuda(self) -> None:
        """No silent fallback (docs/grids.md §3): once per grid, say why 'auto' is not using
        Triton."""
        reason = triton_unsupported(self.config)
        if reason and not getattr(self, "_warned_fallback", False):
            self._warned_fallback = True
            warnings.warn(
                f"MultiResGrid(backend='auto') runs the PyTorch reference on CUDA: {reason}. "
                "Pass backend='torch' to choose it explicitly (and silence this).",
                stacklevel=4,
            )

    def _check_input(self, x: torch.Tensor, params: torch.Tensor | None = None) -> None:
        c = self.config
        params = self.params if params is None else params
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in INPUT_DTYPES:
            raise TypeError(f"x must be a floating-point tensor {INPUT_DTYPES}, got {x.dtype}")
        if x.dim() < 2 or tuple(x.shape[-2:]) != (c.n_groups, c.in_dim):
            raise ValueError(
                f"x must have shape (..., n_groups={c.n_groups}, in_dim={c.in_dim}), "
                f"got {tuple(x.shape)}"
            )
        if x.device != params.device:
            raise ValueError(
                f"x is on {x.device} but the grid's params are on {params.device}; "
                "move one of them (gridcodes never copies across devices silently)"
            )
        if params.dtype not in PARAM_DTYPES:
            raise TypeError(f"params must be floating point {PARAM_DTYPES}, got {params.dtype}")
        expected = (c.n_groups, c.n_entries, c.n_features)
        if tuple(params.shape) != expected:
            raise ValueError(f"params must have shape {expected}, got {tuple(params.shape)}")

    def _check_cpu_device(self, x: torch.Tensor) -> None:
        if x.device.type != "cpu":
            raise ValueError(
                f"backend='cpu' got tensors on {x.device}: it runs on CPU tensors; use "
                "backend='triton' or 'auto' for CUDA, or 'torch' (the reference) anywhere"
            )

    def _check_triton_device(self, x: torch.Tensor) -> None:
        if x.device.type != "cuda" and not ops.INTERPRET:
            raise ValueError(
                f"backend='triton' got tensors on {x.device}: the kernels need CUDA, or "
                "TRITON_INTERPRET=1 set before gridcodes is imported to run them on the CPU; "
                "or use backend='torch'"
            )

    # --- statistics (paper Fig. 3b, App. E) -------------------------------------------------
    def hit_counts(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """Per-entry hits of the points ``x`` (..., n_groups, in_dim): int64 (n_groups, n_entries).

        Pass the returned ``counts`` back in to accumulate over batches.
        """
        self._check_input(x)
        c = self.config
        flat = x.reshape(-1, c.n_groups, c.in_dim)
        if self.resolved_backend(x.device) != "cpu" or x.device.type != "cpu":
            return usage.hit_counts(flat, c, counts, compute_dtype(self.params))
        if counts is None:
            counts = torch.zeros(c.n_groups, c.n_entries, dtype=torch.int64)
        return cpu.hit_counts(flat, counts, self._geometry(x.device))

    def usage_rate(self, counts: torch.Tensor) -> torch.Tensor:
        """Fraction of each level's entries hit at least once: (n_groups, n_levels)."""
        expected = (self.config.n_groups, self.config.n_entries)
        if tuple(counts.shape) != expected:
            raise ValueError(f"counts must have shape {expected}, got {tuple(counts.shape)}")
        return usage.usage_rate(counts, self.config)

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write config and table to a safetensors file (bit-exact; no pickling)."""
        metadata = {"format": FILE_FORMAT, "config": json.dumps(self.config.to_dict())}
        save_file({"params": self.params.detach().contiguous().cpu()}, str(path), metadata)

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "auto",
        deterministic: bool = False,
        device: torch.device | str = "cpu",
    ) -> MultiResGrid:
        """Rebuild a grid written by :meth:`save`, with its table bit-exact, on ``device``."""
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FILE_FORMAT:
                raise ValueError(
                    f"{path} is not a {FILE_FORMAT} file (format={metadata.get('format')!r})"
                )
            # The table the metadata implies, checked against the file's before anything of
            # that size is allocated (a small file can ask for a huge table).
            try:
                config = json.loads(metadata["config"])
                implied = GridConfig(**config)
            except (KeyError, TypeError, json.JSONDecodeError) as error:
                raise ValueError(f"{path}: unreadable grid configuration ({error})") from None
            shape = (implied.n_groups, implied.n_entries, implied.n_features)
            stored = tuple(f.get_slice("params").get_shape())
            if stored != shape:
                raise ValueError(
                    f"{path}: its metadata implies a table of shape {shape}, the file holds "
                    f"{stored}"
                )
            params = f.get_tensor("params")
        grid = cls(**config, backend=backend, deterministic=deterministic)
        grid.to(device=params.device, dtype=params.dtype)
        with torch.no_grad():
            grid.params.copy_(params)
        return grid

    def extra_repr(self) -> str:
        c = self.config
        device = self.level_table.device  # params may be held elsewhere (tcnn.Encoding)
        resolved = self.resolved_backend(device)
        backend = repr(self.backend) + (f" -> {resolved!r}" if resolved != self.backend else "")
        if device.type == "cuda" and resolved == "torch" and self.backend == "auto":
            backend += f" (Triton unsupported: {triton_unsupported(self.config)})"
        n_params = c.n_groups * c.n_entries * c.n_features
        convention = f", convention={c.convention!r}" if c.convention != "gridcodes" else ""
        return (
            f"in_dim={c.in_dim}, n_groups={c.n_groups}, n_levels={c.n_levels}, "
            f"n_features={c.n_features}, grid_type={c.grid_type!r}, "
            f"interpolation={c.interpolation!r}, table_size=2**{c.log2_table_size}, "
            f"resolutions={c.resolutions[0]}..{c.resolutions[-1]}, "
            f"params={n_params:,}, backend={backend}{convention}"
            + (", deterministic=True" if self.deterministic else "")
        )
