"""tiny-cuda-nn's encodings (gridcodes/encodings.py, gridcodes/tcnn/encoding.py) against
independent implementations written from tcnn's source, element by element in numpy.

Line references: include/tiny-cuda-nn/encodings/<name>.h and common_device.h of
NVlabs/tiny-cuda-nn. tcnn's GPU code evaluates sin and cos with fast approximations
(``__sinf``); these references use exact ones, and so do gridcodes: the tolerances are
float32's.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from gridcodes import encodings
from gridcodes import tcnn as gtcnn
from tests.helpers import assert_close_verbose, examples

F32 = np.float32
PI32 = float(F32(math.pi))
SH0 = 0.28209479177387814  # tcnn's first SH output, 1 / (2 sqrt(pi)), for every direction


def frequency_reference(x, n_frequencies):
    """frequency.h frequency_encoding: output j of a row reads dimension j // (2F) at
    log2-frequency (j // 2) % F with phase (j % 2) pi / 2: sin(fma(x 2^f, pi, phase))."""
    n, d = x.shape
    out = np.zeros((n, d * n_frequencies * 2))
    for i in range(n):
        for j in range(d * n_frequencies * 2):
            dim, f = j // (2 * n_frequencies), (j // 2) % n_frequencies
            phase = F32((j % 2) * (PI32 / 2))
            scaled = float(F32(x[i, dim])) * 2.0**f
            out[i, j] = math.sin(float(F32(scaled * PI32 + float(phase))))
    return out


def quartic_cdf(t, n_bins):
    """common_device.h quartic_cdf, in float64."""
    u = t * n_bins
    return min(1.0, max(0.0, 15 / 16 * u * (1 - 2 / 3 * u * u + 1 / 5 * u**4) + 0.5))


def quartic_density(t, n_bins):
    """common_device.h quartic_cdf_deriv: quartic(t, n) * n = 15/16 (1 - u^2)^2 n, |u| < 1."""
    u = t * n_bins
    return 15 / 16 * max(1 - u * u, 0.0) ** 2 * n_bins


def oneblob_reference(x, n_bins):
    """oneblob.h kernel_one_blob_soa: bin k = CDF(right edge) - CDF(left edge), the CDF wrapped
    (three kernel evaluations); kernel_one_blob_backward: d bin / dx = density(left) -
    density(right), wrapped alike."""
    n, d = x.shape
    out = np.zeros((n, d * n_bins))
    deriv = np.zeros_like(out)
    for i in range(n):
        for dim in range(d):
            xv = float(x[i, dim])
            for k in range(n_bins):
                left, right = k / n_bins, (k + 1) / n_bins
                cdf = [
                    sum(quartic_cdf(e - xv + s, n_bins) for s in (0, -1, 1)) for e in (left, right)
                ]
                dens = [
                    sum(quartic_density(e - xv + s, n_bins) for s in (0, -1, 1))
                    for e in (left, right)
                ]
                out[i, dim * n_bins + k] = cdf[1] - cdf[0]
                deriv[i, dim * n_bins + k] = dens[0] - dens[1]
    return out, deriv


def triangle_reference(x, n_frequencies):
    """triangle_wave.h: v = x 2^(k-1) + k/4, |v - floor(v) - 1/2| 4 - 1, and its derivative
    +-2^(k+1) with the sign of floor(2v) % 2 (C++'s %, which keeps the sign)."""
    n, d = x.shape
    out = np.zeros((n, d * n_frequencies))
    deriv = np.zeros_like(out)
    for i in range(n):
        for dim in range(d):
            for k in range(n_frequencies):
                v = float(F32(float(F32(x[i, dim])) * 2.0 ** (k - 1) + k * 0.25))
                out[i, dim * n_frequencies + k] = abs(v - math.floor(v) - 0.5) * 4 - 1
                c_mod = int(math.fmod(math.floor(v * 2), 2))
                deriv[i, dim * n_frequencies + k] = (-1.0 if c_mod == 0 else 1.0) * 2.0 ** (k + 1)
    return out, deriv


def sh_reference(d, degree):
    """Real SH with the Condon-Shortley phase, m = -l..l per band (tcnn's sh_enc order), the
    associated Legendre part differentiated from Legendre polynomials (numpy), not by
    recurrence; d is not normalised, as in tcnn."""
    from numpy.polynomial import legendre

    out = np.zeros((d.shape[0], degree**2))
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    for band in range(degree):
        for m in range(-band, band + 1):
            a = abs(m)
            poly = legendre.Legendre.basis(band).deriv(a) if a else legendre.Legendre.basis(band)
            p = (-1) ** a * poly(z)
            k = math.sqrt(
                (2 * band + 1) / (4 * math.pi) * math.factorial(band - a) / math.factorial(band + a)
            )
            xy = (x + 1j * y) ** a
            angular = 1.0 if m == 0 else math.sqrt(2) * (xy.real if m > 0 else xy.imag)
            out[:, band * band + band + m] = k * p * angular
    return out


xs = st.integers(1, 4).flatmap(
    lambda d: st.lists(
        st.lists(st.floats(0, 1, width=32), min_size=d, max_size=d), min_size=1, max_size=7
    )
)


@settings(max_examples=examples(25))
@given(x=xs, n_frequencies=st.integers(1, 12))
def test_frequency_matches_tcnns_order_and_rounding(x, n_frequencies):
    x = np.array(x, dtype=np.float32)
    note(f"{x=}")
    y = encodings.Frequency(x.shape[1], n_frequencies)(torch.from_numpy(x))
    assert_close_verbose(
        y.double(), torch.from_numpy(frequency_reference(x, n_frequencies)), 2e-6, "y"
    )


def test_frequency_at_zero_and_its_derivative():
    enc = encodings.Frequency(2, 3)
    y = enc(torch.zeros(1, 2))
    assert torch.equal(y, torch.tensor([[0.0, 1.0] * 6]))  # sin 0, cos 0 for every term
    x = torch.tensor([[0.1, 0.7]], requires_grad=True)
    (dx,) = torch.autograd.grad(enc(x)[0, 4], x)  # dim 0, f = 2, sin: 4 pi cos(4 pi x)
    assert math.isclose(dx[0, 0], 4 * math.pi * math.cos(4 * math.pi * 0.1), rel_tol=1e-5)


@settings(max_examples=examples(20))
@given(x=xs, log2_bins=st.integers(0, 5))
def test_oneblob_matches_tcnns_kernel(x, log2_bins):
    x = np.array(x, dtype=np.float32)
    n_bins = 2**log2_bins
    enc = encodings.OneBlob(x.shape[1], n_bins)
    xt = torch.from_numpy(x).requires_grad_()
    y = enc(xt)
    ref, deriv = oneblob_reference(x, n_bins)
    assert_close_verbose(y.double(), torch.from_numpy(ref), 3e-6, "y")
    # Mass is conserved: the bins of one dimension sum to 1 (the kernel wraps around).
    assert_close_verbose(
        y.view(len(x), -1, n_bins).sum(-1).double(), torch.ones(x.shape).double(), 3e-6, "sum"
    )
    # d/dx: oneblob.h kernel_one_blob_backward, left - right quartic densities.
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    (dx,) = torch.autograd.grad(y, xt, dy)
    terms = (dy.double().numpy() * deriv).reshape(len(x), x.shape[1], n_bins)
    tol = torch.from_numpy(1e-5 * np.abs(terms).sum(-1) + 1e-6)
    assert_close_verbose(dx.double(), torch.from_numpy(terms.sum(-1)), tol, "dx")


def test_oneblob_hand_values():
    # x in the middle of bin 1 of 4, kernel radius 1/4: the blob covers bin 1 and half of
    # bins 0 and 2; by symmetry bins 0 and 2 hold equal mass, bin 3 none.
    y = encodings.OneBlob(1, 4)(torch.tensor([[0.375]]))[0]
    assert y[3] == 0 and math.isclose(y[0], y[2], rel_tol=1e-6)
    assert math.isclose(y[1], 2 * quartic_cdf(0.125, 4) - 1, rel_tol=1e-6)


@settings(max_examples=examples(25))
@given(x=xs, n_frequencies=st.integers(1, 12))
@example(x=[[0.0]], n_frequencies=3)  # x = 0 is a kink of the k = 2 wave: tcnn's sign is +
def test_triangle_wave_values_and_derivatives_match_tcnn(x, n_frequencies):
    x = np.array(x, dtype=np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    y = encodings.TriangleWave(x.shape[1], n_frequencies)(xt)
    ref, deriv = triangle_reference(x, n_frequencies)
    assert_close_verbose(y.double(), torch.from_numpy(ref), 1e-6, "y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    (dx,) = torch.autograd.grad(y, xt, dy)
    terms = (dy.double().numpy() * deriv).reshape(len(x), x.shape[1], n_frequencies)
    tol = torch.from_numpy(1e-6 * np.abs(terms).sum(-1))  # float32 sums of the terms
    assert_close_verbose(dx.double(), torch.from_numpy(terms.sum(-1)), tol, "dx")


@settings(max_examples=examples(25))
@given(
    d=st.lists(st.lists(st.floats(0, 1, width=32), min_size=3, max_size=3), min_size=1, max_size=8),
    degree=st.integers(1, 8),
)
def test_spherical_harmonics_match_the_closed_form(d, degree):
    x = np.array(d, dtype=np.float32)
    y = encodings.SphericalHarmonics(3, degree)(torch.from_numpy(x))
    ref = sh_reference(2.0 * x.astype(np.float64) - 1.0, degree)  # tcnn maps [0,1] -> [-1,1]
    assert_close_verbose(y.double(), torch.from_numpy(ref), 2e-5 * max(1, np.abs(ref).max()), "y")


def test_spherical_harmonics_hand_values():
    # common_device.h sh_enc, first bands: 1/(2 sqrt(pi)); -+sqrt(3)/(2 sqrt(pi)) (y, z, x);
    # sqrt(15) xy / (2 sqrt(pi)); sqrt(5) (3 z^2 - 1) / (4 sqrt(pi)).
    x = torch.rand(16, 3)
    y = encodings.SphericalHarmonics(3, 3)(x).double()
    dx, dy, dz = (2 * x.double() - 1).unbind(-1)
    c1 = math.sqrt(3) / (2 * math.sqrt(math.pi))
    expected = {
        0: torch.full_like(dx, SH0),
        1: -c1 * dy,
        2: c1 * dz,
        3: -c1 * dx,
        4: math.sqrt(15) / (2 * math.sqrt(math.pi)) * dx * dy,
        6: math.sqrt(5) * (3 * dz * dz - 1) / (4 * math.sqrt(math.pi)),
    }
    for index, value in expected.items():
        assert_close_verbose(y[:, index], value, 1e-6, f"SH output {index}")
    # The input gradient carries tcnn's factor 2 (kernel_sh_backward) through autograd.
    xt = torch.rand(5, 3, requires_grad=True)
    (g,) = torch.autograd.grad(encodings.SphericalHarmonics(3, 2)(xt)[:, 3].sum(), xt)
    assert torch.allclose(g[:, 0], torch.full((5,), -2 * c1))


def test_identity_and_second_order_gradients():
    enc = gtcnn.Encoding(2, {"otype": "Identity", "scale": 2.0, "offset": -1.0})
    x = torch.tensor([[0.25, 0.5]], requires_grad=True)
    y = enc(x)
    assert torch.equal(y, torch.tensor([[-0.5, 0.0]]))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.tensor([[2.0, 2.0]]))
    # Second order where tcnn has first order: the frequency encoding's d2/dx2 = -(2^f pi)^2 sin.
    freq = encodings.Frequency(1, 2)
    xt = torch.tensor([[0.3]], requires_grad=True)
    (g,) = torch.autograd.grad(freq(xt)[0, 2], xt, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), xt)
    assert math.isclose(h.item(), -((2 * math.pi) ** 2) * math.sin(2 * math.pi * 0.3), rel_tol=1e-4)


def test_composite_consumes_dimensions_in_order_and_pads_as_tcnn():
    # 5 inputs: SphericalHarmonics reads columns 0-2 (9 outputs), a 2-D HashGrid (F = 2) the
    # rest. The grid needs its first column at a multiple of 2, so SH is padded to 10, with
    # one 1.0 in FRONT of its harmonics (spherical_harmonics.h kernel_sh writes the padding
    # first); the grid's output follows.
    grid = {"otype": "HashGrid", "n_levels": 2, "log2_hashmap_size": 6, "base_resolution": 4}
    config = {
        "otype": "Composite",
        "nested": [{"n_dims_to_encode": 3, "otype": "SphericalHarmonics", "degree": 3}, grid],
    }
    enc = gtcnn.Encoding(5, config)
    assert enc.n_output_dims == 10 + 4
    x = torch.rand(6, 5)
    y = enc(x)
    sh = encodings.SphericalHarmonics(3, 3)(x[:, :3])
    assert torch.equal(y[:, 0], torch.ones(6)) and torch.equal(y[:, 1:10], sh)
    alone = gtcnn.Encoding(2, grid)
    alone.load_state_dict({"params": enc.params.detach()})
    assert torch.equal(y[:, 10:], alone(x[:, 3:]))


def test_composite_padding_values_and_network_alignment():
    # A 1-feature grid of 3 levels before a 4-feature grid: padded to 4 with a ZERO (grids pad
    # with 0, grid.h); then Frequency takes the last dimension unpadded.
    g1 = {"otype": "DenseGrid", "n_levels": 3, "n_features_per_level": 1, "base_resolution": 2}
    g4 = {"otype": "DenseGrid", "n_levels": 1, "n_features_per_level": 4, "per_level_scale": 2.0}
    config = {
        "otype": "Composite",
        "nested": [
            dict(g1, n_dims_to_encode=2),
            dict(g4, n_dims_to_encode=2),
            {"otype": "Frequency", "n_frequencies": 1},
        ],
    }
    enc = gtcnn.Encoding(5, config)
    assert enc.n_output_dims == 4 + 4 + 2
    y = enc(torch.rand(3, 5))
    assert torch.equal(y[:, 3], torch.zeros(3))
    # In front of a network the whole encoding pads to 16: the LAST nested encoding gets the
    # padding (composite.h set_padded_output_width), Frequency's value 1.
    net = gtcnn.NetworkWithInputEncoding(5, 1, config, {"otype": "CutlassMLP", "n_neurons": 8})
    assert net.encoding.output_width() == 16
    features = net.encoding(torch.rand(3, 5), net.params[net.n_network_params :])
    assert torch.equal(features[:, 10:], torch.ones(3, 6))


@pytest.mark.parametrize(
    ("otype", "n_dims", "width", "pad_value"),
    [
        ("Frequency", 3, 3 * 2 * 12, 1.0),  # 72 -> 80, ones
        ("Identity", 3, 3, 1.0),  # 3 -> 16: the padded columns act as a bias
        ("HashGrid", 3, 32, None),  # 32: no padding
        ({"otype": "DenseGrid", "n_levels": 5, "n_features_per_level": 1}, 2, 5, 0.0),
    ],
)
def test_network_input_padding(otype, n_dims, width, pad_value):
    config = otype if isinstance(otype, dict) else {"otype": otype}
    net = gtcnn.NetworkWithInputEncoding(n_dims, 2, config, {"otype": "CutlassMLP"})
    padded = -(-width // 16) * 16
    assert net.encoding.output_width() == padded
    assert net.network.layout.shapes[0] == (128, padded)
    features = net.encoding(torch.rand(4, n_dims), net.params[net.n_network_params :])
    if pad_value is not None:
        assert torch.equal(features[:, width:], torch.full((4, padded - width), pad_value))


def test_nrc_alias_is_tcnns_composite():
    x = torch.rand(4, 9)
    nrc = gtcnn.Encoding(9, {"otype": "NRC", "n_frequencies": 3, "n_bins": 2})
    one_blob_frequency = gtcnn.Encoding(
        9, {"otype": "oneblobfrequency", "n_frequencies": 3, "n_bins": 2}
    )
    tri = encodings.TriangleWave(3, 3)(x[:, :3])
    blob = encodings.OneBlob(5, 2)(x[:, 3:8])
    expected = torch.cat([tri, blob, x[:, 8:]], dim=1)
    assert torch.equal(nrc(x), expected) and torch.equal(one_blob_frequency(x), expected)


def test_composite_reductions_and_dims_to_encode_begin():
    config = {
        "otype": "Composite",
        "reduction": "Sum",
        "nested": [
            {"otype": "Identity", "n_dims_to_encode": 2, "dims_to_encode_begin": 1},
            {"otype": "Identity", "n_dims_to_encode": 2, "dims_to_encode_begin": 0, "scale": 2.0},
        ],
    }
    x = torch.rand(3, 3)
    y = gtcnn.Encoding(3, config)(x)
    assert torch.allclose(y, x[:, 1:3] + 2 * x[:, 0:2])
    product = dict(config, reduction="product")
    assert torch.allclose(gtcnn.Encoding(3, product)(x), x[:, 1:3] * 2 * x[:, 0:2])


def test_empty_and_default_otype():
    empty = gtcnn.Encoding(3, {"otype": "Empty"})
    assert empty.n_output_dims == 0 and empty(torch.rand(2, 3)).shape == (2, 0)
    # tcnn's default otype is OneBlob with 16 bins (src/encoding.cu create_encoding).
    assert gtcnn.Encoding(2, {}).n_output_dims == 32


@pytest.mark.parametrize(
    ("n_dims", "config", "message"),
    [
        (3, {"otype": "Fourier"}, r"otype='Fourier' is not one of \['Composite', 'Empty'"),
        (
            3,
            {"otype": "Composite", "nested": [{"otype": "Identity", "n_dims_to_encode": 2}] * 2},
            r"n_dims_to_encode \[2, 2\] sum to 4, more than the Composite's 3",
        ),
        (3, {"otype": "SphericalHarmonics", "degree": 9}, "degree=9 must be in 1..8"),
        (2, {"otype": "SphericalHarmonics"}, "3-D directions, got n_dims=2"),
        (3, {"otype": "OneBlob", "n_bins": 12}, "n_bins=12 must be a power of 2"),
        (3, {"otype": "Composite"}, "needs 'nested'"),
        (3, {"otype": "Composite", "nested": [{"otype": "Identity"}] * 2}, "unspecified for one"),
        (3, {"otype": "Composite", "nested": [{"otype": "Identity"}], "reduction": "Max"}, "'Max'"),
        (3, {"otype": "Frequency", "n_frequencies": "12"}, "n_frequencies must be an int"),
    ],
)
def test_bad_encoding_configs_raise_one_line_naming_the_value(n_dims, config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        gtcnn.Encoding(n_dims, config)


def test_wrong_input_width_names_the_numbers():
    enc = gtcnn.Encoding(3, {"otype": "Frequency"})
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\), got \(4, 2\)"):
        enc(torch.rand(4, 2))


def test_keys_tcnn_does_not_read_warn_once_each():
    config = {"otype": "Frequency", "n_frequencies": 4, "include_xyz": True, "n_freqs": 6}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = gtcnn.Encoding(3, config)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert any("'include_xyz'" in m for m in messages) and any("'n_freqs'" in m for m in messages)
    assert enc.n_output_dims == 3 * 4 * 2  # read what tcnn reads
