"""tinycudann's classes in gridcodes.tcnn: parameter layout, padding, dtypes, configs as tcnn
reads them, and clients written for tinycudann running with only the import changed.

The layout reference below is written from tcnn's source (src/fully_fused_mlp.cu and
src/cutlass_mlp.cu constructors: row-major (out, in) matrices, input and output widths
padded to 16; network_with_input_encoding.h: network parameters first), in numpy.
"""

import copy
import io
import warnings

import numpy as np
import pytest
import torch

import gridcodes.tcnn as tcnn
from gridcodes import encodings
from tests.helpers import DEVICE, assert_close_verbose

HASH = {
    "otype": "HashGrid",
    "n_levels": 8,
    "n_features_per_level": 2,
    "log2_hashmap_size": 12,
    "base_resolution": 4,
    "per_level_scale": 1.5,
}
FUSED = {
    "otype": "FullyFusedMLP",
    "activation": "ReLU",
    "output_activation": "None",
    "n_neurons": 64,
    "n_hidden_layers": 2,
}
# Backends a client can pick on this machine: matmuls on the CPU, the fused kernels in
# Triton's interpreter (float16) or on CUDA.
CLIENT_BACKENDS = ["triton"] + (["cpu"] if DEVICE == "cpu" else [])


def numpy_mlp(x, flat, n_in, n_out, width, n_hidden, pad_value=1.0):
    """tcnn's MLP from its flat params: matrices (width, in16), (width, width)..., (out16,
    width), no biases, ReLU, the input padded with pad_value, the output sliced."""
    pad = lambda n: -(-n // 16) * 16
    shapes = [(width, pad(n_in))] + [(width, width)] * (n_hidden - 1) + [(pad(n_out), width)]
    h = np.concatenate([x, np.full((len(x), pad(n_in) - n_in), pad_value)], axis=1)
    offset = 0
    for i, (rows, cols) in enumerate(shapes):
        w = flat[offset : offset + rows * cols].reshape(rows, cols)
        offset += rows * cols
        h = h @ w.T
        if i < len(shapes) - 1:
            h = np.maximum(h, 0)
    assert offset == len(flat)
    return h[:, :n_out]


def test_network_params_are_tcnns_layout():
    net = tcnn.Network(3, 3, FUSED, backend="cpu")
    assert net.params.shape == (64 * 16 + 64 * 64 + 16 * 64,)
    assert list(net.state_dict()) == ["params"] and net.params.dtype == torch.float32
    flat = torch.randn(net.params.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    net.load_state_dict({"params": flat})  # a tcnn checkpoint's float32 vector
    x = torch.rand(50, 3)
    expected = numpy_mlp(x.double().numpy(), flat.double().numpy(), 3, 3, 64, 2)
    y = net(x)
    assert y.shape == (50, 3) and net.n_output_dims == 3
    assert_close_verbose(y.double(), torch.from_numpy(expected), 1e-5, "y")


@pytest.mark.parametrize("backend", CLIENT_BACKENDS)
def test_network_with_input_encoding_puts_the_network_first(backend):
    model = tcnn.NetworkWithInputEncoding(2, 3, HASH, FUSED, backend=backend)
    encoding = tcnn.Encoding(2, HASH, backend="torch")
    n_net = 64 * 16 + 64 * 64 + 16 * 64  # the grid's 16 features are already a multiple of 16
    assert model.n_network_params == n_net
    assert model.params.shape == (n_net + encoding.params.numel(),)
    generator = torch.Generator().manual_seed(1)
    flat = torch.cat(
        [
            torch.randn(n_net, generator=generator) * 0.2,
            torch.rand(encoding.params.numel(), generator=generator) - 0.5,
        ]
    )
    model.load_state_dict({"params": flat})
    encoding.load_state_dict({"params": flat[n_net:]})
    x = torch.rand(40, 2)
    features = encoding(x).detach().double().numpy()
    expected = numpy_mlp(features, flat[:n_net].double().numpy(), 16, 3, 64, 2)
    y = model(x.to(DEVICE)).detach().double().cpu()
    tol = 2e-2 * np.abs(expected).max() if model.dtype == torch.float16 else 1e-5
    assert_close_verbose(y, torch.from_numpy(expected), tol, "y")


def test_padded_output_rows_never_leak_and_get_no_gradient():
    net = tcnn.Network(4, 5, {**FUSED, "n_neurons": 16}, backend="cpu")
    x = torch.rand(9, 4)
    y = net(x)
    assert y.shape == (9, 5)
    y.sum().backward()
    last = net.params.grad[-16 * 16 :].view(16, 16)
    assert torch.all(last[5:] == 0) and torch.any(last[:5] != 0)


def test_output_dtype_follows_tcnn_by_default_and_dtype_chooses():
    assert tcnn.Network(3, 1, FUSED, backend="cpu")(torch.rand(2, 3)).dtype == torch.float32
    fused = tcnn.Network(3, 1, FUSED, backend="triton")  # tensor cores: tcnn's float16
    assert fused(torch.rand(2, 3).to(DEVICE)).dtype == torch.float16
    bf16 = tcnn.Network(3, 1, FUSED, backend="triton", dtype=torch.bfloat16)
    assert bf16(torch.rand(2, 3).to(DEVICE)).dtype == torch.bfloat16
    assert tcnn.Encoding(3, HASH)(torch.rand(2, 3)).dtype == torch.float32


def test_cutlass_mlp_takes_what_fully_fused_refuses():
    for config in (
        {"otype": "CutlassMLP", "n_neurons": 48, "activation": "Sine"},
        {"otype": "MLP", "n_hidden_layers": 0},
        {"otype": "cutlassmlp", "activation": "silu", "output_activation": "SIGMOID"},
    ):
        net = tcnn.Network(3, 2, config)
        assert net(torch.rand(5, 3)).shape == (5, 2)
    # No hidden layer: one (16, 16) matrix (cutlass_mlp.cu), reading the padded input.
    assert tcnn.Network(3, 2, {"otype": "CutlassMLP", "n_hidden_layers": 0}).params.numel() == 256


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"otype": "ResNet"},
            r"network otype='ResNet' is not one of \['FullyFusedMLP', 'Megakernel",
        ),
        (
            {**FUSED, "n_neurons": 48},
            r"FullyFusedMLP supports n_neurons in \[16, 32, 64, 128\], got 48",
        ),
        ({**FUSED, "activation": "Sine"}, "does not support activation 'Sine'"),
        ({**FUSED, "activation": "SiLU"}, "does not support activation 'SiLU'"),
        ({**FUSED, "n_hidden_layers": 0}, "n_hidden_layers >= 1"),
        ({**FUSED, "activation": "Swish"}, r"activation 'Swish' is not one of"),
        ({**FUSED, "n_neurons": 64.0}, "n_neurons must be an int"),
    ],
)
def test_bad_network_configs_raise_one_line(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tcnn.Network(3, 1, config)


def test_network_input_of_the_wrong_width_names_the_numbers():
    net = tcnn.NetworkWithInputEncoding(3, 1, HASH, FUSED)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\), got \(7, 2\)"):
        net(torch.rand(7, 2))


def test_jit_fusion_free_temporary_memory_and_pickling():
    assert tcnn.supports_jit_fusion() is False
    model = tcnn.NetworkWithInputEncoding(2, 3, HASH, FUSED)
    model.jit_fusion = tcnn.supports_jit_fusion()  # tcnn's sample does this
    assert model.jit_fusion is False
    with pytest.warns(UserWarning, match="jit_fusion is not offered"):
        model.jit_fusion = True
    tcnn.free_temporary_memory()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.rand(5, 2)
    assert torch.equal(loaded(x), model(x)) and torch.equal(copy.deepcopy(model)(x), model(x))
    assert "n_input_dims=2, n_output_dims=3" in repr(model)


def nerfstudio_style_field(backend):
    """As nerfstudio's TCNN fields build theirs: a hash-grid base network, an SH direction
    encoding and a FullyFusedMLP head (configs with keys tcnn ignores included)."""
    base = tcnn.NetworkWithInputEncoding(
        n_input_dims=3,
        n_output_dims=16,
        encoding_config={**HASH, "interpolation": "Linear"},
        network_config={**FUSED, "n_neurons": 32, "n_hidden_layers": 1},
        backend=backend,
    )
    direction = tcnn.Encoding(
        n_input_dims=3, encoding_config={"otype": "SphericalHarmonics", "degree": 4}
    )
    head = tcnn.Network(
        n_input_dims=direction.n_output_dims + 15,
        n_output_dims=3,
        network_config={**FUSED, "output_activation": "Sigmoid", "n_hidden_layers": 2},
        backend=backend,
    )
    return base, direction, head


@pytest.mark.parametrize("backend", CLIENT_BACKENDS)
def test_a_nerfstudio_style_client_trains_and_loads_a_tcnn_state_dict(backend):
    base, direction, head = nerfstudio_style_field(backend)
    modules = torch.nn.ModuleList([base, direction, head]).to(DEVICE)
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(128, 3, generator=generator).to(DEVICE)
    dirs = torch.rand(128, 3, generator=generator).to(DEVICE)
    target = torch.sin(6 * points).abs().to(DEVICE)

    def loss_fn():
        h = base(points)
        density, features = h[:, :1], h[:, 1:]
        rgb = head(torch.cat([direction(dirs).to(features.dtype), features], dim=-1))
        return (rgb.float() - target).square().mean() + 0 * density.float().sum()

    losses = []
    for _ in range(15):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # A tcnn checkpoint is a state dict of flat float32 vectors: it loads into a new field.
    state = {k: v.detach().cpu().clone() for k, v in modules.state_dict().items()}
    assert set(state) == {"0.params", "2.params"} | ({"1.params"} & set(state))
    fresh = torch.nn.ModuleList(nerfstudio_style_field(backend)).to(DEVICE)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh[0](points), base(points))


def test_an_instant_nsr_pl_style_config_with_its_own_keys_builds_and_runs():
    # instant-nsr-pl passes whole configs, keys of its own included; tcnn ignores those.
    xyz_encoding = {
        "otype": "HashGrid",
        **{k: v for k, v in HASH.items() if k != "otype"},
        "include_xyz": True,
        "start_level": 4,
        "start_step": 0,
        "update_steps": 1000,
    }
    network = {**FUSED, "sphere_init": True, "weight_norm": True}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tcnn.NetworkWithInputEncoding(3, 13, xyz_encoding, network)
    ignored = sorted({str(w.message).split("key ")[1].split(";")[0] for w in caught})
    assert ignored == [
        "'include_xyz'",
        "'sphere_init'",
        "'start_level'",
        "'start_step'",
        "'update_steps'",
        "'weight_norm'",
    ]
    x = torch.rand(8, 3, requires_grad=True)
    sdf = model(x)[:, :1]
    (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)  # NeuS's eikonal term
    (grad.norm(dim=-1) - 1).square().mean().backward()
    assert model.params.grad is not None and model.params.grad.abs().sum() > 0


def test_direction_encoding_inside_a_composite_as_torch_ngp_and_threestudio_use_it():
    config = {
        "otype": "Composite",
        "nested": [
            {"n_dims_to_encode": 3, "otype": "SphericalHarmonics", "degree": 4},
            {"otype": "Frequency", "n_frequencies": 2},
        ],
    }
    enc = tcnn.Encoding(5, config)
    x = torch.rand(4, 5)
    assert enc.n_output_dims == 16 + 2 * 2 * 2
    sh = encodings.SphericalHarmonics(3, 4)(x[:, :3])
    assert torch.equal(enc(x)[:, :16], sh)
