"""The fused MLP (gridcodes/mlp_kernels.py) against its reference (gridcodes/mlp_reference.py).

The Triton kernels run in Triton's interpreter on a machine without CUDA. Their numbers are
compared with the reference computed in float64 with the kernels' roundings (input, weights
and hidden activations rounded to float16 / bfloat16; ``mlp_reference(rounding=...)``):
what is left is the order of float32 sums, so the tolerances are a few units of the
dtype's rounding per layer, relative to the tensor's largest value.
"""

import pytest
import torch
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from gridcodes import FusedMLP
from gridcodes.mlp_ops import FUSED_ACTIVATIONS, MLPSpec, fused_mlp, mlp_torch
from gridcodes.mlp_reference import ACTIVATIONS, MLPLayout, activation, mlp_reference
from tests.helpers import DEVICE, assert_close_verbose, examples

EPS = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def reference_grads(x, params, layout, act, out_act, dtype, dy):
    """Forward and gradients of the float64 reference with the kernels' roundings."""
    xr = x.detach().double().requires_grad_()
    pr = params.detach().double().requires_grad_()
    y = mlp_reference(xr, pr, layout, act, out_act, rounding=dtype)
    dx, dp = torch.autograd.grad(y, (xr, pr), dy.double())
    return y.detach(), dx, dp


def tolerance(ref: torch.Tensor, dtype, layout: MLPLayout) -> float:
    """Each of the n_hidden + 1 matrices rounds its output once more, to the dtype: a few
    units of that rounding per layer, relative to the tensor's largest value."""
    layers = layout.n_hidden_layers + 1
    return 4 * layers * EPS[dtype] * max(float(ref.abs().max()), 1e-3)


def check(width, n_hidden, act, out_act, dtype, n_rows, n_in, n_out, seed=0):
    layout = MLPLayout(n_in, n_out, width, n_hidden)
    generator = torch.Generator().manual_seed(seed)
    params = layout.initial_params(act, generator).to(DEVICE).requires_grad_()
    x = torch.rand(n_rows, n_in, generator=generator).to(DEVICE).requires_grad_()
    spec = MLPSpec(layout, act, out_act, 1.0, dtype)
    y = fused_mlp(x, params, spec)
    dy = torch.randn(y.shape, generator=generator).to(DEVICE)
    y.backward(dy.to(y.dtype))
    y_ref, dx_ref, dp_ref = reference_grads(x, params, layout, act, out_act, dtype, dy)
    name = f"width {width} x {n_hidden}, {act}/{out_act}, {dtype}, {n_rows} rows"
    assert y.dtype == dtype and y.shape == (n_rows, n_out)
    assert_close_verbose(y.double(), y_ref, tolerance(y_ref, dtype, layout), f"{name}: y")
    assert_close_verbose(x.grad.double(), dx_ref, tolerance(dx_ref, dtype, layout), f"{name}: dx")
    assert_close_verbose(
        params.grad.double(), dp_ref, tolerance(dp_ref, dtype, layout), f"{name}: dparams"
    )


@pytest.mark.parametrize("width", [16, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_width_and_dtype_matches_the_reference(width, dtype):
    check(width, 2, "ReLU", "None", dtype, n_rows=300, n_in=3, n_out=3)


@pytest.mark.parametrize("activation_", FUSED_ACTIVATIONS)
def test_every_hidden_activation_matches_the_reference(activation_):
    check(32, 2, activation_, "None", torch.float16, n_rows=129, n_in=5, n_out=4)


@pytest.mark.parametrize("output_activation", ACTIVATIONS)
def test_every_output_activation_matches_the_reference(output_activation):
    check(16, 1, "Tanh", output_activation, torch.float16, n_rows=127, n_in=16, n_out=17)


@settings(max_examples=examples(12))
@given(
    width=st.sampled_from([16, 32, 64, 128]),
    n_hidden=st.integers(1, 4),
    act=st.sampled_from(FUSED_ACTIVATIONS),
    out_act=st.sampled_from(ACTIVATIONS),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    n_rows=st.sampled_from([1, 2, 127, 129, 257]),
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
@example(64, 8, "ReLU", "None", torch.float16, 1, 32, 1, 0)  # depth 8, one row
def test_drawn_networks_match_the_reference(
    width, n_hidden, act, out_act, dtype, n_rows, n_in, n_out, seed
):
    note(f"{width=} {n_hidden=} {act=} {out_act=} {dtype=} {n_rows=} {n_in=} {n_out=}")
    check(width, n_hidden, act, out_act, dtype, n_rows, n_in, n_out, seed)


def test_deterministic_weight_gradients_are_bitwise_reproducible():
    layout = MLPLayout(8, 3, 32, 2)
    params = layout.initial_params("ReLU", torch.Generator().manual_seed(0)).to(DEVICE)
    x = torch.rand(700, 8, device=DEVICE)
    dy = torch.randn(700, 3, device=DEVICE)
    grads = []
    for deterministic in (True, True, False):
        p = params.clone().requires_grad_()
        spec = MLPSpec(layout, "ReLU", "None", 1.0, torch.float16, deterministic)
        fused_mlp(x, p, spec).backward(dy.half())
        grads.append(p.grad)
    assert torch.equal(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-5)


def test_small_float16_gradients_do_not_underflow():
    # tcnn's loss scale (128) keeps gradients of 1e-6 upstream (a subnormal float16) in
    # float16's normal range inside the backward.
    layout = MLPLayout(4, 1, 16, 1)
    params = layout.initial_params("ReLU", torch.Generator().manual_seed(1)).requires_grad_()
    x = torch.rand(64, 4)
    dy = torch.full((64, 1), 1e-6).half()
    fused_mlp(x.to(DEVICE), params, MLPSpec(layout, dtype=torch.float16)).backward(dy)
    _, _, dp_ref = reference_grads(x, params, layout, "ReLU", "None", torch.float16, dy)
    assert params.grad.abs().max() > 0
    assert_close_verbose(params.grad.double(), dp_ref, 1e-2 * float(dp_ref.abs().max()), "dW")


def test_second_order_gradients_go_through_the_reference():
    # An eikonal-style loss: the gradient of |dy/dx|^2 w.r.t. the weights.
    layout = MLPLayout(3, 1, 16, 2)
    params = layout.initial_params("Softplus", torch.Generator().manual_seed(2))
    x = torch.rand(50, 3, dtype=torch.float64)
    grads = {}
    for name, run in (
        ("fused", lambda x, p: fused_mlp(x, p, MLPSpec(layout, "Softplus", dtype=torch.float16))),
        ("torch", lambda x, p: mlp_torch(x, p, MLPSpec(layout, "Softplus", dtype=torch.float32))),
    ):
        p = params.clone().to(DEVICE).requires_grad_()
        xi = x.float().to(DEVICE).requires_grad_()
        (dx,) = torch.autograd.grad(run(xi, p).float().sum(), xi, create_graph=True)
        (grads[name],) = torch.autograd.grad(dx.square().sum(), p)
    torch.testing.assert_close(grads["fused"], grads["torch"], rtol=1e-4, atol=1e-6)


def test_cpu_backend_matches_the_float64_reference():
    mlp = FusedMLP(5, 3, width=48, n_hidden_layers=3, activation="silu", backend="cpu")
    x = torch.rand(33, 5, requires_grad=True)
    y = mlp(x)
    assert y.dtype == torch.float32 and mlp.resolved_backend(torch.device("cpu")) == "cpu"
    y.backward(torch.ones_like(y))
    p64 = mlp.params.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y64 = mlp_reference(x64, p64, mlp.layout, "SiLU", "None")
    y64.backward(torch.ones_like(y64))
    assert_close_verbose(y.double(), y64, 1e-5, "y")
    assert_close_verbose(mlp.params.grad.double(), p64.grad, 1e-4, "dparams")
    assert_close_verbose(x.grad.double(), x64.grad, 1e-5, "dx")


def test_layout_and_initial_values_follow_tcnn():
    layout = MLPLayout(3, 3, 64, 2)  # tcnn's sample network
    assert layout.shapes == ((64, 16), (64, 64), (16, 64))
    assert layout.n_params == 64 * 16 + 64 * 64 + 16 * 64
    assert MLPLayout(20, 1, 8, 0).shapes == ((16, 32),)  # CutlassMLP without hidden layers
    params = layout.initial_params("ReLU", torch.Generator().manual_seed(0))
    for w, (rows, cols) in zip(layout.matrices(params), layout.shapes):
        bound = (6 / (rows + cols)) ** 0.5  # Xavier uniform (gpu_matrix.h)
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    first = layout.matrices(layout.initial_params("Sine", torch.Generator()))[0]
    assert first.abs().max() <= 30 / 16  # SIREN's first layer


def test_activations_are_tcnns():
    z = torch.linspace(-3, 3, 61, dtype=torch.float64)
    k = 10.0
    expected = {
        "None": z,
        "ReLU": z.clamp(min=0),
        "LeakyReLU": torch.where(z > 0, z, 0.01 * z),
        "Exponential": z.exp(),
        "Sine": z.sin(),
        "Sigmoid": 1 / (1 + (-z).exp()),
        "Squareplus": 0.5 * (k * z + ((k * z) ** 2 + 4).sqrt()) / k,
        "Softplus": ((k * z).exp() + 1).log() / k,
        "Tanh": z.tanh(),
        "SiLU": z / (1 + (-z).exp()),
    }
    for name, value in expected.items():
        torch.testing.assert_close(activation(name, z), value, msg=name)
    assert activation("Softplus", torch.tensor([100.0])).isfinite().all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 48, "backend": "triton"}, "width 48"),
        ({"activation": "Sine", "backend": "triton"}, "'Sine'"),
        ({"n_hidden_layers": 0, "backend": "triton"}, "n_hidden_layers=0"),
        ({"activation": "gelu"}, "'gelu' is not one of"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"dtype": torch.float64}, "dtype must be one of"),
        ({"width": 0}, "width must be a positive int"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FusedMLP(3, 1, **kwargs)


def test_bad_inputs_name_the_shape():
    mlp = FusedMLP(3, 1)
    with pytest.raises(ValueError, match=r"shape \(N, 3\), got \(4, 2\)"):
        mlp(torch.rand(4, 2))
    with pytest.raises(TypeError, match="floating-point"):
        mlp(torch.ones(4, 3, dtype=torch.int64))
