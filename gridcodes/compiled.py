"""What a GPU would run, read without one: each kernel launch compiled as it specializes.

A lookup's launchers (``ops.forward``, ``ops.backward``; the fused MLP's ``mlp_ops.forward``
and ``mlp_ops.backward``) are run on ``meta`` tensors with
``ops._run`` replaced by a recorder, so the recorded arguments are exactly those a real
launch passes (pointer alignment, ints divisible by 16, ints equal to 1 folded into
constants, constexprs, ``num_warps``, ``enable_fp_fusion``). Each launch is then compiled
for a target (sm_90 by default) through Triton's own launch-time specialization, and its
SASS and resource usage are read with the ``cuobjdump`` shipped inside the Triton wheel.

Needs a real ``triton.jit`` (``TRITON_INTERPRET`` unset) and Triton's NVIDIA backend; no
GPU. Uses internals of ``triton.runtime.jit`` (the launch binder, and ``_pack_args`` from
Triton 3.5; ``_pack`` below does its work on 3.3 and 3.4), checked with a clear error if
they moved.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch

from . import ops
from .levels import level_table
from .module import MultiResGrid


@dataclass
class Launch:
    """One recorded kernel launch: the kernel, its grid, positional args and keywords."""

    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


def record_launches(
    grid: MultiResGrid,
    n_points: int,
    *,
    x_dtype=torch.float32,
    table_dtype=torch.float32,
    deterministic: bool = False,
    need_dx: bool = True,
    need_dparams: bool = True,
    double_backward: bool = False,
) -> list[Launch]:
    """The launches of one forward + backward of ``grid`` on ``n_points`` points (meta tensors);
    with ``double_backward``, also those of the double backward's terms in dL/dx's gradient."""
    c = grid.config
    launches: list[Launch] = []

    def record(kernel, grid_, args, kwargs):
        launches.append(Launch(kernel, grid_, args, kwargs))

    x = torch.empty(n_points, c.n_groups, c.in_dim, device="meta", dtype=x_dtype)
    params = torch.empty(c.n_groups, c.n_entries, c.n_features, device="meta", dtype=table_dtype)
    table = level_table(c, "meta")
    smooth = c.interpolation == "smoothstep"
    geometry = (c.convention != "gridcodes", c.index_reduction)
    with mock.patch.object(ops, "_run", record):
        y = ops.forward(x, params, table, smooth, *geometry)
        dy = torch.empty_like(y)
        coarse = ops.coarse_rows(c.level_sizes)
        ops.backward(
            dy, x, params, table, smooth, need_dx, need_dparams, deterministic, coarse, *geometry
        )
        if double_backward:
            hx = torch.empty_like(x)
            flags = (True, need_dx, need_dparams, deterministic, coarse)
            ops.double_backward(hx, dy, x, params, table, smooth, *geometry, *flags)
    return launches


def record_mlp_launches(spec, n_rows: int, need_dx: bool = True) -> list[Launch]:
    """The launches of one forward + backward of the fused MLP ``spec`` (``mlp_ops.MLPSpec``)
    on ``n_rows`` rows of meta tensors (the input in ``spec.dtype``, as from an encoding)."""
    from . import mlp_ops

    launches: list[Launch] = []
    layout = spec.layout
    x = torch.empty(n_rows, layout.n_input_dims, device="meta", dtype=spec.dtype)
    params = torch.empty(layout.n_params, device="meta")
    record = lambda kernel, grid_, args, kwargs: launches.append(
        Launch(kernel, grid_, args, kwargs)
    )
    with mock.patch.object(ops, "_run", record):
        y, hidden = mlp_ops.forward(x, params, spec, save=True)
        mlp_ops.backward(torch.empty_like(y), x, params, hidden, spec, need_dx)
    return launches


def _bind(launch: Launch, capability: int):
    """Triton's target, backend and bound launch (arguments, specialization, options)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import jit

    kernel = launch.kernel
    if not isinstance(kernel, jit.JITFunction):
        raise RuntimeError("compile_launch needs real triton.jit kernels: unset TRITON_INTERPRET")
    if not hasattr(jit, "create_function_from_signature"):
        raise RuntimeError(f"triton {triton.__version__}: the launch binder moved (compiled.py)")
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    return target, backend, binder(*launch.args, **launch.kwargs)


def launch_key(launch: Launch) -> str:
    """The kernel and its specialization, as Triton's launch cache keys it: equal keys
    compile to the same code."""
    _, _, (_, specialization, options) = _bind(launch, 90)
    return f"{launch.name} {specialization} {options}"


def compile_launch(launch: Launch, capability: int = 90):
    """Compile ``launch`` for ``sm_<capability>`` exactly as ``kernel[grid](...)`` would."""
    import triton
    from triton.compiler import ASTSource

    kernel = launch.kernel
    target, backend, (bound, specialization, options) = _bind(launch, capability)
    if hasattr(kernel, "_pack_args"):  # triton >= 3.5
        options, signature, constexprs, attrs = kernel._pack_args(
            backend, launch.kwargs, bound, specialization, options
        )
    else:  # triton 3.3 and 3.4 do the same inside JITFunction.run
        options, signature, constexprs, attrs = _pack(
            kernel, backend, launch.kwargs, bound, specialization
        )
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def _pack(kernel, backend, kwargs: dict, bound: dict, specialization: list):
    """Options, signature, constexprs and attributes of a bound launch, as ``run`` derives them
    in triton 3.3 and 3.4 (3.5 moved this into ``JITFunction._pack_args``)."""
    from triton._utils import find_paths_if, get_iterable_path

    types = [kind for kind, _ in specialization]
    signature = dict(zip([p.name for p in kernel.params], types))
    constexprs = find_paths_if(types, lambda _, kind: kind == "constexpr")
    values = list(bound.values())
    constexprs = {path: get_iterable_path(values, path) for path in constexprs}
    attributes = [attr for _, attr in specialization]
    attrs = find_paths_if(attributes, lambda _, attr: isinstance(attr, str))
    attrs = {path: backend.parse_attr(get_iterable_path(attributes, path)) for path in attrs}
    return backend.parse_options(kwargs), signature, constexprs, attrs


def _cuobjdump(*args: str, cubin: bytes) -> str:
    from triton.backends.nvidia import compiler

    tool = Path(compiler.__file__).parent / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [str(tool), *args, f.name], check=True, capture_output=True, text=True
        ).stdout


@dataclass
class KernelReport:
    """What the compiled code of one launch holds."""

    name: str
    registers: int
    stack_bytes: int
    local_bytes: int
    sass: list[str] = field(repr=False)  # instruction lines

    def matching(self, pattern: str) -> list[str]:
        """Instruction lines whose opcode matches the regular expression ``pattern``."""
        return [line for line in self.sass if re.match(pattern, line.split()[0])]

    def summary(self) -> dict:
        kinds = {
            "loads": r"LDG",
            "stores": r"STG",
            "reductions": r"REDG?\.",
            "atomics": r"ATOM",
            "fences": r"MEMBAR|CCTL|FENCE",
            "local": r"LDL|STL",
            "fma": r"[FD]FMA",  # fused multiply-adds: none when fp fusion is off
        }
        counts = {
            kind: dict(Counter(line.split()[0] for line in self.matching(p)))
            for kind, p in kinds.items()
        }
        return {
            "kernel": self.name,
            "registers": self.registers,
            "stack_bytes": self.stack_bytes,
            "local_bytes": self.local_bytes,
            "instructions": len(self.sass),
            **counts,
        }


_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([^;]+);")


def inspect_launch(launch: Launch, capability: int = 90) -> KernelReport:
    """Compile ``launch`` and read its registers, stack, local memory and SASS."""
    compiled = compile_launch(launch, capability)
    cubin = compiled.asm["cubin"]
    usage = _cuobjdump("-res-usage", cubin=cubin)
    number = lambda key: int(re.search(rf"{key}:(\d+)", usage).group(1))
    sass = [m.group(1).strip() for m in _INSTRUCTION.finditer(_cuobjdump("-sass", cubin=cubin))]
    return KernelReport(
        name=launch.name,
        registers=number("REG"),
        stack_bytes=number("STACK"),
        local_bytes=number("LOCAL"),
        sass=sass,
    )
