"""What the GPU will run, checked without one: every kernel launch compiled for sm_90.

``bench/kernel_report.py`` compiles each launch of a forward + backward exactly as a real
launch specializes it (``gridcodes/compiled.py``) for the benchmark shapes, every table and
coordinate dtype, the atomic and deterministic paths, and in_dim 1..4; these tests assert
what its SASS must hold. The interpreter proves the arithmetic; this proves the machine
code: vector gathers, relaxed reductions without fences, no spills, no contraction of the
cell fraction, registers within budget.
"""

import pytest

pytest.importorskip("triton.backends.nvidia")

import triton

from tests.helpers import compiled_report

# Registers per kernel and variant as compiled on 2026-11-25 (triton 3.8.0, sm_90), rounded
# up to a multiple of 8: more is a regression to look at (occupancy), not noise. They and
# the no-spill rule hold from Triton 3.7; older Tritons allocate otherwise (docs/grids.md §8:
# 3.5 and 3.6 spill 8-16 bytes in the float64 backward), and CI checks that they compile.
BUDGET_TRITON = (3, 7)
REGISTER_BUDGET = {
    "grid_forward_kernel": 56,
    "grid_backward_kernel": 80,
    "grid_contribution_rows_kernel": 48,
    "grid_chunk_sum_kernel": 80,
    "grid_chunk_combine_kernel": 32,
    # 2026-12-01: 160 at d = 4, F = 2, smoothstep (100 for BRICS, 74 for Instant-NGP).
    "grid_double_backward_kernel": 160,
}
# float64 tables double every value register (the double backward reaches the 255 cap
# without spilling, which test_no_spills_and_registers_within_budget checks).
REGISTER_BUDGET_FLOAT64 = {
    # 2026-12-07: 96 with one level per forward program (84 with its level loop, when the
    # float32 forward took 40 registers on sm_90 where it now takes 32).
    "grid_forward_kernel": 96,
    "grid_backward_kernel": 168,
    "grid_double_backward_kernel": 255,
}
SCATTERS = ("grid_backward_kernel", "grid_double_backward_kernel")


@pytest.fixture(scope="module")
def report() -> dict:
    return compiled_report("kernel_report.py")


def rows(report, kernel=None, **match):
    out = [
        r
        for r in report["rows"]
        if (kernel is None or r["kernel"] == kernel) and all(r[k] == v for k, v in match.items())
    ]
    assert out, f"no compiled {kernel} with {match}"
    return out


def where(r) -> str:
    return f"{r['kernel']} ({r['variant']})"


def test_every_variant_compiles(report):
    kernels = {r["kernel"] for r in report["rows"]}
    assert kernels == set(REGISTER_BUDGET)
    assert {r["in_dim"] for r in report["rows"]} == {1, 2, 3, 4}
    assert {r["table"] for r in report["rows"]} >= {"float32", "float16", "bfloat16", "float64"}


@pytest.mark.parametrize("kernel", SCATTERS)
def test_gradient_scatter_is_relaxed_reductions_without_fences(report, kernel):
    scatters = rows(report, kernel, atomic_scatter=True)
    for r in scatters:
        assert r["reductions"], f"{where(r)}: no RED instruction in the scatter"
        assert not r["atomics"], f"{where(r)}: returning atomics {r['atomics']}"
        assert not r["fences"], f"{where(r)}: fences {r['fences']}"
    for r in report["rows"]:
        assert not r["fences"], f"{where(r)}: fences {r['fences']}"


@pytest.mark.parametrize(
    ("kernel", "variant", "width"),
    [
        ("grid_backward_kernel", "brics", "F32x4"),
        ("grid_backward_kernel", "ngp", "F32x2"),
        ("grid_double_backward_kernel", "brics double", "F32x4"),
        ("grid_double_backward_kernel", "ngp double", "F32x2"),
        ("grid_double_backward_kernel", "ngp tcnn", "F32x2"),
    ],
)
def test_gradient_reductions_are_as_wide_as_a_row(report, kernel, variant, width):
    """One F-wide RED per corner (and per accumulator copy), not F scalar ones."""
    (r,) = rows(report, kernel, variant=variant)
    assert r["reductions"] and all(width in op for op in r["reductions"]), r["reductions"]


@pytest.mark.parametrize(
    ("variant", "width", "count"),
    [
        ("brics", "LDG.E.128", 8),  # F = 4 float32 rows: 16 bytes, one per corner
        ("ngp", "LDG.E.64", 8),  # F = 2 float32: 8 bytes
        ("image2d", "LDG.E.64", 4),  # d = 2: 4 corners
        ("brics table float16", "LDG.E.64", 8),  # F = 4 half: 8 bytes
        ("brics table bfloat16", "LDG.E.64", 8),
        ("brics table float64", "LDG.E.128", 16),  # 32-byte rows: two 16-byte loads
    ],
)
def test_feature_rows_are_vector_loads(report, variant, width, count):
    for kernel in ("grid_forward_kernel", "grid_backward_kernel"):
        (r,) = rows(report, kernel, variant=variant)
        assert r["loads"].get(width, 0) >= count, f"{where(r)}: loads {r['loads']}"


@pytest.mark.parametrize(
    ("variant", "width", "count"),
    [
        ("brics double", "LDG.E.128", 8),
        ("ngp double", "LDG.E.64", 8),
        ("ngp tcnn", "LDG.E.64", 8),
        ("tiled tcnn", "LDG.E.64", 8),
        ("brics double table float64", "LDG.E.128", 16),
    ],
)
def test_double_backward_reads_feature_rows_as_vectors(report, variant, width, count):
    """The double backward (and tcnn's index reductions) keep the table rows' vector loads."""
    for r in rows(report, variant=variant):
        if r["kernel"] in ("grid_forward_kernel", "grid_backward_kernel", *SCATTERS):
            assert r["loads"].get(width, 0) >= count, f"{where(r)}: loads {r['loads']}"


def test_tcnn_variants_compile_their_index_reductions(report):
    """tcnn's hash grids reduce with one subtraction, its tiled grids with a modulo."""
    assert {r["reduce"] for r in rows(report, variant="ngp tcnn")} == {1}
    assert {r["reduce"] for r in rows(report, variant="tiled tcnn")} == {2}
    assert all(r["fused"] for r in rows(report, variant="ngp tcnn"))
    assert not any(r["fused"] or r["reduce"] for r in rows(report, variant="brics"))


@pytest.mark.skipif(
    tuple(int(part) for part in triton.__version__.split(".")[:2]) < BUDGET_TRITON,
    reason=f"the budgets were taken on triton 3.8 and hold from 3.7; this is {triton.__version__}",
)
def test_no_spills_and_registers_within_budget(report):
    for r in report["rows"]:
        assert r["stack_bytes"] == 0 and r["local_bytes"] == 0, f"{where(r)}: spills"
        assert not r["local"], f"{where(r)}: local memory {r['local']}"
        budget = REGISTER_BUDGET_FLOAT64 if r["table"] == "float64" else REGISTER_BUDGET
        assert r["registers"] <= budget.get(r["kernel"], REGISTER_BUDGET[r["kernel"]]), (
            f"{where(r)}: {r['registers']} registers"
        )


def test_cell_fraction_is_not_contracted(report):
    """With fp fusion off, no FMA is emitted, so f = x (r - 1) - i rounds as in docs/grids.md
    §2 step 2."""
    for r in report["rows"]:
        assert r["no_contraction"], f"{where(r)}: {r['fma']}"


def test_deterministic_critical_path_is_twenty_times_shorter(report):
    cp = report["critical_path"]
    assert cp["contributions"] == 12 * 64 * 64 * 4 * 16 * 8
    assert cp["before_steps"] >= 20 * cp["after_steps"], cp
