"""The training step's few-op building blocks equal what they replace, to every order that
is used (models/layers.py, models/synthesis.py, models/encoder.py, models/retrieval.py,
models/losses.py)."""

import pytest
import torch
import torch.nn.functional as F

from bench.op_counter import OpCounter
from models.discriminator import Discriminator
from models.encoder import AttnBlock, GroupNorm
from models.layers import EqualConv2d, EqualLinear, ScaleEach, equalized, leaky_relu
from models.losses import LPIPSLoss, r1_penalty
from models.retrieval import GroupedMLP
from models.synthesis import SynthesisDecoder, demodulations


def count(fn) -> dict:
    """Every aten op ``fn`` dispatches, by name, and the summary's totals."""
    with OpCounter() as counter:
        fn()
    return {**counter.summary(), "ops": dict(counter.ops)}


def test_scale_each_is_one_kernel_per_pass_at_every_order():
    torch.manual_seed(0)
    tensors = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    factors = (0.5, 2.0, -3.0)
    fn = lambda *t: ScaleEach.apply(factors, *t)
    assert all(torch.equal(a, b * f) for a, b, f in zip(fn(*tensors), tensors, factors))
    assert torch.autograd.gradcheck(fn, tensors)
    assert torch.autograd.gradgradcheck(fn, tensors)
    # forward and backward one foreach op each; an unused output gets no gradient
    counts = count(lambda: sum(fn(*tensors)[:2]).sum().backward())
    assert counts["ops"]["_foreach_mul"] == 2, counts["ops"]
    assert tensors[2].grad is None


def test_equalized_parameters_equal_each_layers_own_scaling():
    torch.manual_seed(0)
    layers = [EqualConv2d(4, 6, 3, activation=True, gain=0.7), EqualLinear(5, 3, lr_mul=0.01)]
    layers.append(EqualConv2d(4, 6, 1, bias=False))
    conv, linear, skip = equalized(layers)
    t = layers[0].out_scale
    assert torch.equal(conv[0], layers[0].weight * (layers[0].scale * t))
    assert torch.equal(conv[1], layers[0].bias * t)
    assert torch.equal(linear[1], layers[1].bias * 0.01) and len(skip) == 1
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(layers[0](x, *conv), layers[0](x))


def test_discriminator_scales_all_its_layers_in_one_pass():
    torch.manual_seed(0)
    for size in (16, 32):
        disc = Discriminator(size, 8, 16)
        x = torch.randn(2, 3, size, size)
        counts = count(lambda d=disc, x=x: d(x).sum().backward())
        assert counts["ops"]["_foreach_mul"] == 2  # forward, backward, however many layers
        assert counts["ops"].get("mul", 0) < len(disc.layers()), counts["ops"]


def test_leaky_relu_equals_pytorchs_to_the_second_order_without_zero_fills():
    torch.manual_seed(0)
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(leaky_relu, (x,))
    assert torch.autograd.gradgradcheck(leaky_relu, (x,))
    w = torch.randn(40, dtype=torch.float64, requires_grad=True)

    def penalty(act):
        (g,) = torch.autograd.grad((act(x * w) * w).sum(), x, create_graph=True)
        return g.square().sum()

    ours, pytorchs = penalty(leaky_relu), penalty(lambda z: F.leaky_relu(z, 0.2))
    assert torch.equal(ours, pytorchs)
    assert torch.equal(*(torch.autograd.grad(p, w)[0] for p in (ours, pytorchs)))
    kink = torch.tensor([0.0, -1.0, 2.0], requires_grad=True)  # both: the slope 0.2 at 0
    assert torch.equal(
        torch.autograd.grad(leaky_relu(kink).sum(), kink)[0], kink.new_tensor([0.2, 0.2, 1])
    )
    counts = count(lambda: penalty(leaky_relu).backward())
    assert "zeros_like" not in counts["ops"], counts["ops"]


def test_demodulations_equal_stylegan2s_formula_with_their_gradients():
    torch.manual_seed(0)
    styles = [torch.randn(3, c, dtype=torch.float64, requires_grad=True) for c in (5, 4)]
    shapes = [(1, 6, 5, 3, 3), (1, 2, 4, 1, 1)]
    weights = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    fn = lambda *t: tuple(demodulations(list(t[:2]), list(t[2:]), gain=1.7))
    for d, s, w in zip(fn(*styles, *weights), styles, weights):
        expected = 1.7 * torch.rsqrt(s.square() @ w[0].square().sum(dim=(2, 3)).T + 1e-8)
        torch.testing.assert_close(d, expected, rtol=1e-14, atol=0)
    assert torch.autograd.gradcheck(fn, (*styles, *weights))


def test_decoder_makes_every_layers_scales_and_demodulations_in_a_few_passes():
    torch.manual_seed(0)
    foreach = []
    for size in (16, 32):  # 8 and 11 modulated layers
        decoder = SynthesisDecoder(32, 8, size, mapping_layers=2)
        f = torch.randn(2, 32, 8, 8, requires_grad=True)
        ops = count(lambda m=decoder, f=f: m(f).square().mean().backward())["ops"]
        kept = lambda op: op.startswith("_foreach") or op in ("pow", "rsqrt")
        foreach.append({op: n for op, n in ops.items() if kept(op)})
    # as many passes however many layers (the pow and rsqrt left: the style normalisation's)
    assert foreach[0] == foreach[1] and foreach[0]["rsqrt"] == 1, foreach


def test_group_norm_equals_pytorchs_in_one_kernel_each_way():
    torch.manual_seed(0)
    reference = torch.nn.GroupNorm(32, 64, eps=1e-6)
    torch.nn.init.normal_(reference.weight), torch.nn.init.normal_(reference.bias)
    ours = GroupNorm(32, 64, eps=1e-6)
    ours.load_state_dict(reference.state_dict())  # same parameters
    x = torch.randn(2, 64, 5, 7, requires_grad=True)
    g = torch.randn_like(x)
    expected = torch.autograd.grad(reference(x), [x, *reference.parameters()], g)
    got = torch.autograd.grad(ours(x), [x, *ours.parameters()], g)
    assert torch.equal(ours(x), reference(x))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    counts = count(lambda: torch.autograd.grad(ours(x), x, g))
    assert counts["aten_ops"] == 2, counts["ops"]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 under autocast
        assert ours(x.bfloat16()).dtype == torch.float32


def test_attention_takes_the_fused_kernel():
    torch.manual_seed(0)
    block = AttnBlock(64)
    x = torch.randn(1, 64, 8, 8, requires_grad=True)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        expected = block(x)
    counts = count(lambda: block(x).sum().backward())
    assert "_softmax" not in counts["ops"] and "bmm" not in counts["ops"]
    assert counts["tflop"] > 0  # the fused kernels' FLOPs are counted
    torch.testing.assert_close(block(x), expected)


def test_grouped_mlp_equals_one_mlp_per_group():
    torch.manual_seed(0)
    mlp = GroupedMLP(3, (5, 7, 4))
    x = torch.randn(2, 6, 3, 5)
    expected = torch.stack(
        [
            F.linear(
                F.relu(F.linear(x[..., g, :], mlp.weights[0][g].T, mlp.biases[0][g])),
                mlp.weights[1][g].T,
                mlp.biases[1][g],
            )
            for g in range(3)
        ],
        dim=-2,
    )
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.grouped(x).shape == (3, 12, 4)


@pytest.mark.parametrize("size", [32, 64])
def test_lpips_equals_the_packages_distance(size):
    torch.manual_seed(0)
    loss = LPIPSLoss("vgg", pretrained=False)
    x, y = (torch.rand(2, 3, size, size) * 2 - 1 for _ in range(2))
    torch.testing.assert_close(loss.per_image(x, y), loss.model(x, y).flatten())
    x.requires_grad_(True)
    (ours,) = torch.autograd.grad(loss(x, y), x)
    (package,) = torch.autograd.grad(loss.model(x, y).mean(), x)
    torch.testing.assert_close(ours, package)


def test_r1_gives_no_gradient_to_the_biases_it_does_not_depend_on():
    torch.manual_seed(0)
    disc = Discriminator(16, 8, 16)
    r1_penalty(disc, torch.randn(4, 3, 16, 16)).backward()
    grads = {n: p.grad for n, p in disc.named_parameters() if n.endswith("bias")}
    # After the minibatch statistics D is piecewise linear in those biases: R1 (its input
    # gradient's norm) does not depend on them, and they get none at all (PyTorch's own
    # leaky-ReLU double backward gave them zero-filled gradients through D's backward).
    for name in ("final_conv.bias", "final_linear.0.bias", "final_linear.1.bias"):
        assert grads[name] is None, name
    assert all(g.abs().max() > 0 for n, g in grads.items() if n.startswith(("from_rgb", "blocks")))
