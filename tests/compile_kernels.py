"""Compile every kernel variant ahead of time for a Hopper GPU (sm_90), without needing one.

Run as a script (TRITON_INTERPRET must be unset, so ``triton.jit`` builds real JIT
functions); prints one line per variant and exits non-zero on the first compile error.
Triton's interpreter accepts code the compiler rejects (non-constexpr globals, unsupported
constructs), so this is what proves, on a machine without a GPU, that the kernels the
interpreter tested also build to a cubin.
"""

from __future__ import annotations

import itertools
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from gridcodes import kernels

TARGET = GPUTarget("cuda", 90, 32)
TABLE_TYPES = {"fp32": tl.float32, "fp64": tl.float64, "fp16": tl.float32, "bf16": tl.float32}


def compile_kernel(fn, signature: dict, constants: dict) -> None:
    signature = {**signature, **{name: "constexpr" for name in constants}}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants)
    compiled = triton.compile(source, target=TARGET)
    assert "cubin" in compiled.asm


def variants():
    for d, table in itertools.chain(
        ((d, "fp32") for d in (1, 2, 3, 4)), ((3, t) for t in ("fp64", "fp16", "bf16"))
    ):
        compute = TABLE_TYPES[table]
        acc = "fp64" if table == "fp64" else "fp32"
        common = {"D": d, "COMPUTE": compute}
        yield (
            f"forward d={d} {table}",
            kernels.grid_forward_kernel,
            {
                "x_ptr": "*fp32",
                "params_ptr": f"*{table}",
                "meta_ptr": "*i64",
                "y_ptr": f"*{table}",
                "N": "i32",
                "G": "i32",
                "E": "i32",
                "L": "i32",
            },
            {**common, "F": 4, "SMOOTH": d == 3, "BLOCK": 128},
        )
        for param_grad, input_grad in ((True, True), (True, False), (False, True)):
            if (param_grad, input_grad) != (True, True) and d != 3:
                continue
            yield (
                f"backward d={d} {table} dparams={param_grad} dx={input_grad}",
                kernels.grid_backward_kernel,
                {
                    "x_ptr": "*fp16",
                    "params_ptr": f"*{table}",
                    "meta_ptr": "*i64",
                    "dy_ptr": f"*{table}",
                    "dparams_ptr": f"*{acc}",
                    "dx_ptr": "*fp16",
                    "N": "i32",
                    "G": "i32",
                    "E": "i32",
                    "L": "i32",
                },
                {
                    **common,
                    "F": 8,
                    "SMOOTH": True,
                    "PARAM_GRAD": param_grad,
                    "INPUT_GRAD": input_grad,
                    "BLOCK": 128,
                },
            )
    yield (
        "corner rows d=3",
        kernels.grid_corner_rows_kernel,
        {
            "x_ptr": "*fp32",
            "meta_ptr": "*i64",
            "rows_ptr": "*i32",
            "N": "i32",
            "G": "i32",
            "E": "i32",
            "level": "i32",
        },
        {"D": 3, "COMPUTE": tl.float32, "BLOCK": 128},
    )
    yield (
        "segment sum d=3",
        kernels.grid_segment_sum_kernel,
        {
            "x_ptr": "*fp32",
            "meta_ptr": "*i64",
            "dy_ptr": "*fp32",
            "order_ptr": "*i64",
            "seg_row_ptr": "*i32",
            "seg_start_ptr": "*i64",
            "seg_len_ptr": "*i64",
            "dparams_ptr": "*fp32",
            "S": "i32",
            "L": "i32",
            "level": "i32",
        },
        {"D": 3, "F": 4, "SMOOTH": True, "COMPUTE": tl.float32, "BLOCK": 64},
    )


def main() -> int:
    for name, fn, signature, constants in variants():
        compile_kernel(fn, signature, constants)
        print(f"compiled {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
