"""The public MultiResGrid API: arguments, errors, backends, custom op, persistence, statistics."""

import warnings

import pytest
import torch

from gridcodes import MultiResGrid, ops
from tests.helpers import BACKENDS, DEVICE


def small_grid(**kwargs) -> MultiResGrid:
    args = dict(
        in_dim=3,
        n_groups=2,
        n_levels=4,
        n_features=2,
        log2_table_size=8,
        base_resolution=2,
        max_resolution=16,
    )
    args.update(kwargs)
    return MultiResGrid(**args).to(DEVICE)


def test_defaults_follow_spec():
    grid = MultiResGrid(3)
    assert grid.params.shape == (1, grid.offsets[-1], 4)
    assert grid.params.dtype == torch.float32
    assert grid.params.abs().max().item() <= 1e-4
    assert len(grid.resolutions) == 16 and len(grid.offsets) == 17
    assert grid.resolutions[0] == 4 and grid.resolutions[-1] == 64
    assert grid.backend == "auto"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(in_dim=0), ValueError, "in_dim"),
        (dict(in_dim=8), ValueError, "in_dim"),
        (dict(in_dim=2.0), TypeError, "in_dim"),
        (dict(in_dim=True), TypeError, "in_dim"),
        (dict(in_dim=2, n_groups=0), ValueError, "n_groups"),
        (dict(in_dim=2, n_levels=0), ValueError, "n_levels"),
        (dict(in_dim=2, n_features=0), ValueError, "n_features"),
        (dict(in_dim=2, log2_table_size=31), ValueError, "log2_table_size"),
        (dict(in_dim=2, base_resolution=1), ValueError, "base_resolution"),
        (dict(in_dim=2, base_resolution=8, max_resolution=4), ValueError, "max_resolution"),
        (dict(in_dim=2, n_levels=2, resolutions=(4, 1)), ValueError, "resolutions[1]"),
        (dict(in_dim=2, resolutions=(4, 8)), ValueError, "n_levels=2"),
        (dict(in_dim=2, resolutions="48"), TypeError, "resolutions"),
        (dict(in_dim=2, grid_type="octree"), ValueError, "'octree'"),
        (dict(in_dim=2, interpolation="cubic"), ValueError, "'cubic'"),
        (dict(in_dim=2, backend="cuda"), ValueError, "'cuda'"),
        (dict(in_dim=5, backend="triton"), ValueError, "in_dim=5"),
        (dict(in_dim=2, n_features=3, backend="triton"), ValueError, "n_features=3"),
        (dict(in_dim=3, grid_type="dense", max_resolution=2048), ValueError, "parameters"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        MultiResGrid(**kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_name_shape_dtype_device(backend):
    grid = small_grid(backend=backend)
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        grid(torch.rand(5, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"\(5, 2, 2\)"):
        grid(torch.rand(5, 2, 2, device=DEVICE))
    with pytest.raises(TypeError, match=r"torch\.int64"):
        grid(torch.zeros(5, 2, 3, dtype=torch.int64, device=DEVICE))
    with pytest.raises(TypeError, match="list"):
        grid([[0.5, 0.5, 0.5]])
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match="cpu"):
            grid(torch.rand(5, 2, 3))
    else:
        with pytest.raises(ValueError, match="meta"):
            grid(torch.rand(5, 2, 3, device="meta"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_shape", [(), (0,), (1,), (3, 5), (2, 0, 4)])
def test_batch_shapes(backend, batch_shape):
    grid = small_grid(backend=backend)
    x = torch.rand(*batch_shape, 2, 3, device=DEVICE, requires_grad=True)
    y = grid(x)
    assert y.shape == (*batch_shape, 2, 4 * 2)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert grid.params.grad.shape == grid.params.shape


def test_backend_selection_is_visible():
    auto = small_grid()
    assert "backend='auto'" in repr(auto)
    expected = "triton" if DEVICE == "cuda" else "cpu"
    assert auto.resolved_backend() == expected
    assert auto.resolved_backend("cpu") == "cpu"
    assert "-> 'cpu'" in repr(small_grid().cpu())
    assert small_grid(backend="torch").resolved_backend("cuda") == "torch"
    # auto keeps the reference for what the kernels do not support, and says so.
    wide = MultiResGrid(5, n_levels=2, max_resolution=8)
    assert wide.resolved_backend("cuda") == "torch"
    assert "grid_type='hash'" in repr(auto) and "resolutions=2..16" in repr(auto)


def test_interpreter_switch_is_required_for_triton_on_cpu(monkeypatch):
    grid = MultiResGrid(2, n_levels=2, max_resolution=8, backend="triton")
    monkeypatch.setattr(ops, "INTERPRET", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        grid(torch.rand(4, 1, 2))


def test_opcheck_custom_op():
    grid = small_grid(backend="triton")
    x = torch.rand(37, 2, 3, device=DEVICE, requires_grad=True)
    coarse = ops.coarse_rows(grid.config.level_sizes)
    for smoothstep in (False, True):
        args = (x, grid.params, grid.level_table, smoothstep, False, 0, False, coarse)
        torch.library.opcheck(ops.grid_encode, args)
    dy = torch.randn(37, 2, 8, device=DEVICE)
    backward_args = (
        dy,
        x.detach(),
        grid.params.detach(),
        grid.level_table,
        False,  # smoothstep
        False,  # fused
        0,  # reduce
        True,  # need_dx
        True,  # need_dparams
        False,  # deterministic
        coarse,
    )
    torch.library.opcheck(ops.grid_encode_backward, backward_args)
    hx = torch.randn(37, 2, 3, device=DEVICE)
    double_args = (hx, *backward_args[:7], True, True, True, False, coarse)
    torch.library.opcheck(ops.grid_encode_double_backward, double_args)


def test_torch_compile_has_no_graph_break():
    grid = small_grid(backend="triton")
    x = torch.rand(50, 2, 3, device=DEVICE, requires_grad=True)
    compiled = torch.compile(grid, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.square().sum().backward()
    expected_x_grad = x.grad.clone()
    expected_params_grad = grid.params.grad.clone()
    x.grad = None
    grid.params.grad = None
    torch.testing.assert_close(y, grid(x))
    grid(x).square().sum().backward()
    torch.testing.assert_close(x.grad, expected_x_grad)
    torch.testing.assert_close(grid.params.grad, expected_params_grad)


def test_use_deterministic_algorithms_selects_the_sorted_scatter(monkeypatch):
    grid = small_grid(backend="triton")
    calls = []
    original = ops.sorted_scatter
    monkeypatch.setattr(ops, "sorted_scatter", lambda *a: calls.append(1) or original(*a))
    x = torch.rand(20, 2, 3, device=DEVICE)
    grid(x).sum().backward()
    assert not calls
    torch.use_deterministic_algorithms(True)
    try:
        grid(x).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_save_load_round_trips_exactly(tmp_path, dtype):
    # Same backend on both sides, so the lookups must agree bit for bit on any device.
    grid = small_grid(grid_type="tiled", interpolation="smoothstep", backend="torch")
    grid = grid.to(dtype=dtype)
    with torch.no_grad():
        grid.params.normal_()
    path = tmp_path / "grid.safetensors"
    grid.save(path)
    loaded = MultiResGrid.load(path, backend="torch", device=DEVICE)
    assert loaded.config == grid.config
    assert loaded.params.dtype == dtype
    saved, restored = grid.params.detach().cpu(), loaded.params.detach().cpu()
    assert torch.equal(restored.view(torch.uint8), saved.view(torch.uint8))
    x = torch.rand(9, 2, 3, device=DEVICE)
    assert torch.equal(loaded(x), grid.to(DEVICE)(x))


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"params": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match=r"gridcodes\.MultiResGrid"):
        MultiResGrid.load(path)


def test_load_checks_the_table_the_metadata_implies_before_allocating_it(tmp_path, monkeypatch):
    """A small file whose metadata asks for a huge table fails naming both shapes, and
    nothing of the implied size is allocated (here: no grid is even built)."""
    import json

    from safetensors.torch import save_file

    grid = MultiResGrid(2, n_levels=2, log2_table_size=6)
    config = {**grid.config.to_dict(), "n_groups": 4096, "log2_table_size": 24}
    metadata = {"format": "gridcodes.MultiResGrid/1", "config": json.dumps(config)}
    path = tmp_path / "huge.safetensors"
    save_file({"params": grid.params.detach()}, str(path), metadata=metadata)
    built = []
    monkeypatch.setattr(MultiResGrid, "__init__", lambda self, *a, **k: built.append(k))
    with pytest.raises(ValueError, match=r"implies a table of shape \(4096, .*holds \(1, "):
        MultiResGrid.load(path)
    assert not built
    metadata["config"] = "{not json"
    save_file({"params": grid.params.detach()}, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="unreadable grid configuration"):
        MultiResGrid.load(path)


def test_hit_counts_and_usage_rate():
    # One dense 1-D level with 5 vertices; points in cells 0 and 3 hit vertices 0, 1, 3, 4.
    grid = MultiResGrid(1, n_levels=1, resolutions=(5,), grid_type="dense", n_groups=2)
    x = torch.tensor([[[0.1], [0.9]], [[0.2], [0.8]], [[0.95], [0.05]]])
    counts = grid.hit_counts(x)
    assert counts.tolist() == [[2, 2, 0, 1, 1], [1, 1, 0, 2, 2]]
    counts = grid.hit_counts(x[:1], counts)  # accumulates
    assert counts.sum().item() == 2 * 2 * 4
    assert torch.equal(grid.usage_rate(counts), torch.tensor([[0.8], [0.8]]))
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        grid.usage_rate(counts[:1])


def test_full_usage_of_a_coarse_level():
    grid = small_grid(grid_type="dense")
    counts = grid.hit_counts(torch.rand(4000, 2, 3, device=DEVICE))
    rates = grid.usage_rate(counts)
    assert rates.shape == (2, 4)
    assert (rates[:, 0] == 1).all()  # 2**3 vertices of the coarsest level are all hit


def test_frozen_table_gives_coordinate_gradients_only():
    grid = small_grid(backend="triton").requires_grad_(False)
    reference = small_grid(backend="torch").requires_grad_(False)
    with torch.no_grad():
        grid.params.normal_()
        reference.params.copy_(grid.params)
    x = torch.rand(33, 2, 3, device=DEVICE)
    grads = []
    for g in (grid, reference):
        xi = x.clone().requires_grad_(True)
        g(xi).square().sum().backward()
        grads.append(xi.grad)
    assert grid.params.grad is None
    # float32 sums of 8 corners x 4 levels with |dx| up to ~1e2: 1e-4 relative is ~10^3 ulps
    # of headroom, while a wrong cell or missing level is off by O(1).
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


def test_auto_warns_once_when_cuda_would_fall_back_to_the_reference():
    grid = MultiResGrid(5, n_levels=2, max_resolution=8, backend="auto")  # in_dim 5: no Triton
    with pytest.warns(UserWarning, match=r"runs the PyTorch reference on CUDA: in_dim=5"):
        grid._warn_reference_on_cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid._warn_reference_on_cuda()  # once per grid
    supported = small_grid(backend="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        supported._warn_reference_on_cuda()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_lookup_is_excluded_from_autocast(backend, x_dtype):
    """Under autocast the output keeps the table's dtype and equals the lookup without it."""
    grid = small_grid(backend=backend)
    with torch.no_grad():
        grid.params.normal_()
    x = torch.rand(33, 2, 3, device=DEVICE).to(x_dtype).requires_grad_(True)
    expected = grid(x)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        y = grid(x)
    assert y.dtype == grid.params.dtype
    assert torch.equal(y, expected)
    y.sum().backward()
    assert x.grad.dtype == x_dtype and grid.params.grad.dtype == grid.params.dtype
