"""StyleGAN2 layers in training form: one-pass FIR resampling differentiable to any order, the
unfused modulated convolution, no grouped convolution anywhere (models/resample.py,
models/synthesis.py, models/layers.py)."""

import contextlib
import threading

import pytest
import torch
import torch.nn.functional as F

from bench.op_counter import OpCounter
from models import convolution
from models.convolution import no_weight_gradients
from models.discriminator import Discriminator, DiscriminatorBlock
from models.layers import EqualConv2d, EqualLinear, lrelu
from models.resample import FORMS, blur, downsample_2x, fir_form, fir_kernel, upsample_2x
from models.synthesis import ModulatedConv2d, StyledConv, SynthesisDecoder


def depthwise_blur(x: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """StyleGAN2's filter as a depthwise convolution, with padding (before, after)."""
    kernel = fir_kernel(gain, dtype=x.dtype).expand(x.shape[1], 1, 4, 4)
    return F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), kernel, groups=x.shape[1])


def zero_insert(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    return up.reshape(b, c, 2 * h, 2 * w)


@pytest.fixture(params=FORMS)
def form(request):
    with fir_form(request.param):
        yield request.param


@pytest.mark.parametrize("size", [(8, 8), (9, 6), (1, 1), (2, 5)])
def test_fir_passes_equal_the_depthwise_filter(size, form):
    torch.manual_seed(0)
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    for padding in (1, 2):
        if min(size) + 2 * padding >= 4:
            torch.testing.assert_close(blur(x, padding), depthwise_blur(x, (padding, padding)))
    torch.testing.assert_close(blur(x, 2, gain=4.0), depthwise_blur(x, (2, 2), 4.0))
    up = upsample_2x(x)
    assert up.shape == (2, 5, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(up, depthwise_blur(zero_insert(x), (2, 1), 4.0))
    if min(size) >= 2:
        even = x[..., : size[0] // 2 * 2, : size[1] // 2 * 2]
        torch.testing.assert_close(downsample_2x(even), depthwise_blur(even, (1, 1))[..., ::2, ::2])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fir_passes_keep_low_precision_and_its_rounding(dtype, form):
    """bf16 / fp16 in, the same dtype out, within one rounding of the float32 result (the
    CPU's depthwise transposed pass computes in float32), forward and backward."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 10)
    for fn in (lambda t: blur(t, 2), upsample_2x, downsample_2x):
        low = x.to(dtype).requires_grad_(True)
        exact = x.to(dtype).float().requires_grad_(True)
        y, expected = fn(low), fn(exact)
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
        g = torch.randn_like(expected)
        (dx,) = torch.autograd.grad(y, low, g.to(dtype))
        (dx_exact,) = torch.autograd.grad(expected, exact, g.to(dtype).float())
        assert dx.dtype == dtype
        torch.testing.assert_close(dx.float(), dx_exact, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("op", ["blur", "up", "down", "down-odd"])
def test_fir_is_differentiable_to_any_order_with_one_pass_per_derivative(op, form):
    fn = {
        "blur": lambda t: blur(t, 2),
        "up": upsample_2x,
        "down": downsample_2x,
        "down-odd": downsample_2x,
    }[op]
    size = 7 if op == "down-odd" else 6
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    # A gradient penalty through the filter: forward, backward, double backward
    with OpCounter() as counter:
        (grad,) = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
        grad.square().sum().backward()
    counts = counter.summary()
    # forward 1, backward 1, double backward 2 (of the backward, of the forward once more)
    assert counts["convolutions"] == 4, counts["convolution_ops"]
    grouped = {"folded": 0, "depthwise": 4}[form]  # folded: the CUDA form
    assert counts["grouped_convolutions"] == grouped
    assert counts["filter_tflop"] == counts["tflop"] > 0  # all of it FIR arithmetic


def grouped_modulated_conv(conv: ModulatedConv2d, x: torch.Tensor, s: torch.Tensor):
    """StyleGAN2's fused form: each sample's modulated weight in one grouped convolution."""
    b, c_in, h, w = x.shape
    weight = conv.scale * conv.weight * s.view(b, 1, c_in, 1, 1)  # (B, out, in, k, k)
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    c_out, k = weight.shape[1], weight.shape[-1]
    x = x.reshape(1, b * c_in, h, w)
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(b * c_in, c_out, k, k)
        out = F.conv_transpose2d(x, weight, stride=2, groups=b)
        out = out.view(b, c_out, *out.shape[-2:])
        return depthwise_blur(out, (1, 1), gain=4.0)
    out = F.conv2d(x, weight.reshape(b * c_out, c_in, k, k), padding=conv.padding, groups=b)
    return out.view(b, c_out, h, w)


@pytest.mark.parametrize(
    "kernel, demodulate, upsample", [(3, True, False), (3, True, True), (1, False, False)]
)
def test_unfused_and_fused_modulated_convs_equal_the_grouped_form(kernel, demodulate, upsample):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, kernel, 8, demodulate=demodulate, upsample=upsample).double()
    x = torch.randn(3, 6, 7, 7, dtype=torch.float64)
    s = conv.affine(torch.randn(3, 8, dtype=torch.float64))
    expected = grouped_modulated_conv(conv, x, s)
    # training: unfused, one dense convolution for the batch (FIR in the CUDA form)
    with fir_form("folded"), OpCounter() as counter:
        unfused = conv.train()(x, s)
    torch.testing.assert_close(unfused, expected)
    assert counter.summary()["grouped_convolutions"] == 0
    fused = conv.eval()(x[:1], s[:1])  # one sample in evaluation: the fused weight
    torch.testing.assert_close(fused, expected[:1])


@pytest.mark.parametrize("training", [True, False])
def test_styled_conv_folds_demodulation_noise_bias_and_gain_into_three_passes(training):
    torch.manual_seed(0)
    layer = StyledConv(6, 5, 8, resolution=7).double().train(training)
    with torch.no_grad():
        layer.noise.strength.fill_(0.3)
        layer.bias.normal_()
    x = torch.randn(3 if training else 1, 6, 7, 7, dtype=torch.float64)
    s = layer.conv.affine(torch.randn(x.shape[0], 8, dtype=torch.float64))
    torch.manual_seed(1)
    folded = layer(x, s)
    torch.manual_seed(1)  # the same noise draw
    expected = lrelu(layer.noise(layer.conv(x, s)) + layer.bias)  # StyleGAN2's order
    torch.testing.assert_close(folded, expected)


def test_the_decoders_styles_come_from_one_product_of_the_layers_affines():
    torch.manual_seed(0)
    decoder = SynthesisDecoder(32, 8, 32, mapping_layers=1, extra_conv=True)
    w = torch.randn(2, 32)
    convs = decoder.modulated_convs()
    assert len(convs) == 3 + 4 * 2  # input block 2 + rgb, then 3 convs + rgb per upsampling
    for conv, s in zip(convs, decoder.styles(w), strict=True):
        torch.testing.assert_close(s, conv.affine(w))


def test_downsampling_convs_equal_filtering_then_the_strided_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for k in (3, 1):
        conv = EqualConv2d(4, 6, k, downsample=True, bias=False).double()
        # StyleGAN2's layout: filter at full resolution with padding (k + 1) / 2 per side,
        # then the stride-2 convolution
        p = (k + 1) // 2
        expected = F.conv2d(depthwise_blur(x, (p, p)), conv.weight * conv.scale, stride=2)
        torch.testing.assert_close(conv(x), expected)


def test_folded_gains_equal_the_layers_definitions():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    conv = EqualConv2d(4, 6, 3, activation=True, gain=0.5).double()
    with torch.no_grad():
        conv.bias.normal_()
    plain = F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), 0.5 * lrelu(plain))
    linear = EqualLinear(4, 3, bias_init=0.3, lr_mul=0.01, activation=True).double()
    v = torch.randn(5, 4, dtype=torch.float64)
    expected = lrelu(F.linear(v, linear.weight * linear.scale, linear.bias * linear.lr_mul))
    torch.testing.assert_close(linear(v), expected)
    block = DiscriminatorBlock(4, 6).double()  # (conv2(conv1(x)) + skip(x)) / sqrt(2)
    c1, c2, skip = block.conv1, block.conv2, block.skip
    h = lrelu(F.conv2d(x, c1.weight * c1.scale, c1.bias, padding=1))
    main = lrelu(F.conv2d(depthwise_blur(h, (2, 2)), c2.weight * c2.scale, c2.bias, stride=2))
    side = F.conv2d(depthwise_blur(x, (1, 1)), skip.weight * skip.scale, stride=2)
    torch.testing.assert_close(block(x), (main + side) / 2**0.5)


def test_discriminator_penalty_has_no_grouped_convolution():
    torch.manual_seed(0)
    disc = Discriminator(16, channels=8, max_channels=16)
    real = torch.randn(2, 3, 16, 16, requires_grad=True)
    with fir_form("folded"), OpCounter() as counter:  # the CUDA form
        (grad,) = torch.autograd.grad(disc(real).sum(), real, create_graph=True)
        grad.square().sum().backward()
    counts = counter.summary()
    assert counts["convolutions"] > 0 and counts["grouped_convolutions"] == 0


def test_no_weight_gradients_skips_them_on_every_thread(monkeypatch):
    """Inside ``no_weight_gradients`` D's input gradient runs no weight-gradient kernel, also
    when the backward runs on another thread than the one that opened the block (on CUDA
    the autograd engine runs backward nodes on a thread of its own)."""
    calls = []
    kernel = convolution._weight_grad
    monkeypatch.setattr(convolution, "_weight_grad", lambda *a: calls.append(1) or kernel(*a))
    torch.manual_seed(0)
    disc = Discriminator(16, channels=8, max_channels=16)
    real = torch.randn(2, 3, 16, 16, requires_grad=True)

    def input_gradient(skip: bool, thread: bool) -> tuple[int, torch.Tensor]:
        calls.clear()
        logits, out = disc(real).sum(), []
        run = lambda: out.append(torch.autograd.grad(logits, real)[0])
        with no_weight_gradients() if skip else contextlib.nullcontext():
            if thread:
                worker = threading.Thread(target=run)
                worker.start()
                worker.join()
            else:
                run()
        return len(calls), out[0]

    plain, expected = input_gradient(False, False)
    assert plain > 0
    for thread in (False, True):
        kernels, grad = input_gradient(True, thread)
        assert kernels == 0, thread
        torch.testing.assert_close(grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("eps_on", ["raw", "scaled"])
def test_demodulation_eps_goes_on_the_raw_weight_as_the_authors_or_on_the_scaled_one(eps_on):
    from models.layers import equalized
    from models.synthesis import ModulatedConv2d, demodulations

    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 4, 3, 16, eps_on=eps_on).double()
    s = torch.full((2, 8), 1e-4, dtype=torch.float64)  # small styles: the epsilon matters
    ((weight,),) = equalized([conv])
    (d,) = demodulations([s], [weight], eps=[conv.eps])
    if eps_on == "raw":  # the authors' modulated_conv2d: conv with the raw weight, then d
        raw = conv.weight * s[:, None, :, None, None]
        expected = (raw.square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt() / conv.scale
    else:  # TensorFlow StyleGAN2: the scaled weight
        scaled = weight * s[:, None, :, None, None]
        expected = (scaled.square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt()
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=0)
    other = ModulatedConv2d(8, 4, 3, 16, eps_on={"raw": "scaled", "scaled": "raw"}[eps_on])
    (d_other,) = demodulations([s], [weight], eps=[other.eps])
    assert (d - d_other).abs().max() > 1e-3 * d.abs().max()  # the two orders differ here
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    conv.eval()  # one sample in evaluation: the fused form, the same epsilon
    fused = conv(x, s[:1])
    conv.train()
    torch.testing.assert_close(fused, conv(x, s[:1]), rtol=1e-10, atol=1e-12)
