"""BRICS autoencoder: presets, shapes, key codes, relaxed precision, gradients, persistence."""

import json

import pytest
import torch
import torch.nn.functional as F

from gridcodes.levels import GridConfig, level_resolutions
from models import PRESETS, BRICSAutoencoder, BRICSConfig, build_optimizers, get_preset
from models.retrieval import combined_key_code, tile
from tests.helpers import DEVICE
from train.core.metrics import psnr

TINY = get_preset("tiny-32")


def photo_patches(size: int = 32, count: int = 4) -> torch.Tensor:
    """Real photograph patches from scikit-image, (count, 3, size, size) in [-1, 1]."""
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 127.5 - 1
    corners = [(100, 100), (200, 150), (300, 250), (0, 300), (400, 50), (50, 400)]
    patches = [image[:, y : y + 2 * size : 2, x : x + 2 * size : 2] for y, x in corners[:count]]
    return torch.stack(patches)


def batch_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of a batch of images in [-1, 1], taken as one image."""
    return psnr(a.reshape(1, -1), b.reshape(1, -1)).item()


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_has_the_expected_shapes(name):
    config = PRESETS[name]
    with torch.device("meta"):  # no real allocation for the full-size presets
        model = BRICSAutoencoder(config, grid_backend="torch")
        images = torch.empty(2, 3, config.image_size, config.image_size)
        key_codes = model.encode(images)
        features = model.feature_block(key_codes)
        out = model.decoder(features)
    hz, cz = config.code_size, config.code_channels
    assert key_codes.shape == (2, cz, hz, hz)
    assert features.shape == (2, config.decoder_channels, config.tile_size, config.tile_size)
    assert out.shape == images.shape
    assert model.retrieval.grids.config.in_dim == config.key_length + 2
    assert model.retrieval.grids.config.n_groups == config.n_groups


def test_paper_presets_follow_the_tables():
    assert PRESETS["church-64x64x4"] == BRICSConfig()
    # The authors' grid geometry: r_max 64 for every paper preset (the text's 32 for Hz <= 32
    # stays available as max_resolution=None / the -text-grid preset).
    assert PRESETS["church-64x64x4"].r_max == 64 and PRESETS["ffhq-16x16x16"].r_max == 64
    assert get_preset("ffhq-16x16x16", max_resolution=None).r_max == 32
    assert PRESETS["church-64x64x4-ckey2"].n_groups == 2
    assert PRESETS["church-32x32x8-hd32"].tile_size == 32
    assert PRESETS["church-64x64x4-hash14"].grid_type == "hash"
    assert PRESETS["church-64x64x4-hash14"].log2_table_size == 14


# Grid parameters of the paper's Tables 3, 7, 8 (millions) that the authors' geometry reproduces;
# bench/results/complexity.md explains the two rows it does not (32x32x4, 16x16x16).
PAPER_GRID_PARAMS = {
    "church-64x64x4": 18.6,
    "church-64x64x4-ckey2": 30.5,
    "ffhq-16x16x8": 21.2,
    "church-32x32x8": 21.2,
    "church-32x32x8-hd32": 21.2,
}


def grid_parameters(config: BRICSConfig) -> int:
    grid = GridConfig(
        in_dim=config.key_length + 2,
        n_groups=config.n_groups,
        n_levels=config.n_levels,
        n_features=config.n_features,
        log2_table_size=config.log2_table_size,
        resolutions=config.grid_resolutions,
        grid_type=config.grid_type,
    )
    return grid.n_groups * grid.offsets[-1] * grid.n_features


@pytest.mark.parametrize("name", list(PAPER_GRID_PARAMS))
def test_grid_parameters_match_the_papers_tables(name):
    assert grid_parameters(PRESETS[name]) / 1e6 == pytest.approx(PAPER_GRID_PARAMS[name], abs=0.05)


def test_authors_and_text_grid_geometries():
    authors, text = PRESETS["church-64x64x4"], PRESETS["church-64x64x4-text-grid"]
    # ceil(r_min b^l) cells + 1 vertices: 16 -> 64 cells; the text's round(r_min b^l) vertices
    assert authors.grid_resolutions[0] == 17 and authors.grid_resolutions[-1] == 65
    assert text.grid_resolutions[0] == 4 and text.grid_resolutions[-1] == 64
    assert text.grid_resolutions == level_resolutions(4, 64, 16)  # MultiResGrid's own rule
    assert grid_parameters(text) / 1e6 == pytest.approx(9.84, abs=0.005)  # the first release
    assert authors.relaxed_precision_std == text.relaxed_precision_std == 1 / (4 * 64)
    with pytest.raises(ValueError, match="grid_resolution_rule"):
        get_preset("tiny-32", grid_resolution_rule="paper")


def decoder_parameters(config: BRICSConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in BRICSAutoencoder(config, "torch").decoder.parameters())


def test_decoder_has_the_authors_extra_conv_per_upsampled_resolution():
    config = PRESETS["church-64x64x4"]
    with torch.device("meta"):
        decoder = BRICSAutoencoder(config, "torch").decoder
    assert [len(block) for block in decoder.blocks] == [3, 3]  # 128^2 and 256^2
    without = get_preset("church-64x64x4", decoder_extra_conv=False)
    # one modulated 3x3 conv of 256 channels at 128^2 and of 128 channels at 256^2
    extra = decoder_parameters(config) - decoder_parameters(without)
    assert extra == pytest.approx(0.9e6, rel=0.05)


def test_decoder_channels_follow_the_absolute_resolution():
    from models.synthesis import synthesis_channels

    assert [synthesis_channels(512, 64, r) for r in (32, 64, 128, 256)] == [512, 512, 256, 128]
    assert [synthesis_channels(512, 32, r, "relative") for r in (32, 64, 128, 256)] == [
        512,
        256,
        128,
        64,
    ]
    # Table 8: the Hd = 32 decoder is the costlier one (85.1 vs 63.5 GFlops in the paper);
    # channels relative to Hd made it the cheaper one.
    assert decoder_macs(PRESETS["church-32x32x8-hd32"]) > decoder_macs(PRESETS["church-32x32x8"])
    relative = {"decoder_channel_rule": "relative"}
    assert decoder_macs(get_preset("church-32x32x8-hd32", **relative)) < decoder_macs(
        get_preset("church-32x32x8", **relative)
    )


def decoder_macs(config: BRICSConfig) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        decoder = BRICSAutoencoder(config, "torch").decoder
        block = torch.empty(1, config.decoder_channels, config.tile_size, config.tile_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            decoder(block)
    return counter.get_total_flops() // 2


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"church-64x64x4.*tiny-32"):
        get_preset("lsun")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(code_channels=5, key_length=2), "multiple of key_length"),
        (dict(code_size=48), "power of two"),
        (dict(tile_size=4), "code_size <= tile_size"),
        (dict(key_regularization="vq"), "'vq'"),
        (dict(encoder_channels=48), "multiple of 32"),
        (dict(decoder_channels=63), "multiple of the number of groups"),
    ],
)
def test_bad_configs_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_preset("tiny-32", **overrides)


def test_bad_inputs_name_expected_and_got():
    model = BRICSAutoencoder(TINY, grid_backend="torch")
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(2, 3, 64, 64\)"):
        model.encode(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        model.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"torch\.uint8"):
        model.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\)"):
        model.decode(torch.zeros(2, 8, 8, 8))


def test_key_codes_lie_in_the_unit_interval():
    model = BRICSAutoencoder(TINY, grid_backend="torch").eval()
    codes = model.encode(photo_patches() * 3)  # even for out-of-range pixels
    assert codes.min() >= 0 and codes.max() <= 1
    assert codes.var() > 0


def test_tiling_and_coordinates():
    z = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2) / 100
    tiled = tile(z, 8)
    assert tiled.shape == (2, 4, 8, 8)
    assert torch.equal(tiled[:, :, :4, :4], z[:, :, :1, :1].expand(2, 4, 4, 4))
    q = combined_key_code(tiled, key_length=2)  # 2 groups of Ckey = 2
    assert q.shape == (2, 8, 8, 2, 4)
    assert torch.equal(q[0, 3, 5, 1, :2], tiled[0, 2:4, 3, 5])
    assert q[0, 3, 5, 0, 2].item() == (3 + 0.5) / 8 and q[0, 3, 5, 1, 3].item() == (5 + 0.5) / 8


def test_relaxed_precision_noise_only_in_training_and_of_the_stated_scale():
    model = BRICSAutoencoder(get_preset("tiny-32", noise_placement="tiled"), grid_backend="torch")
    key_code = torch.full((8, 4, 8, 8), 0.5)
    model.eval()
    assert torch.equal(
        model.retrieval.queries(key_code)[..., :1], torch.full((8, 16, 16, 4, 1), 0.5)
    )
    model.train()
    q = model.retrieval.queries(key_code)
    noise = q[..., 0] - 0.5
    std = 1 / (4 * TINY.r_max)  # r_max = 32 for Hz <= 32
    # 8192 independent samples: the sample std is within 3% of sigma with overwhelming probability
    assert abs(noise.std().item() / std - 1) < 0.03
    assert noise.abs().max() < 6 * std
    torch.testing.assert_close(q[..., 1:], model.eval().retrieval.queries(key_code)[..., 1:])
    no_noise = BRICSAutoencoder(
        get_preset("tiny-32", key_regularization="none"), grid_backend="torch"
    )
    assert torch.equal(
        no_noise.train().retrieval.queries(key_code)[..., 0], key_code.new_full((8, 16, 16, 4), 0.5)
    )


def test_relaxed_precision_noise_is_drawn_per_code_cell_by_default():
    key_code = torch.full((64, 4, 8, 8), 0.5)
    authors = BRICSAutoencoder(TINY, grid_backend="torch").train()  # noise_placement "code"
    noise = authors.retrieval.queries(key_code)[..., 0] - 0.5  # (B, Hd, Wd, Nh)
    blocks = noise.unflatten(1, (8, 2)).unflatten(3, (8, 2))  # (B, Hz, 2, Wz, 2, Nh)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))  # one draw per cell
    # 16384 code cells: the sample std is within 3% of sigma
    assert abs(blocks[:, :, 0, :, 0].std().item() * 4 * TINY.r_max - 1) < 0.03
    text = BRICSAutoencoder(get_preset("tiny-32", noise_placement="tiled"), "torch").train()
    noise = text.retrieval.queries(key_code)[..., 0].unflatten(1, (8, 2))
    assert not torch.equal(noise[:, :, 0], noise[:, :, 1])


def test_gradients_reach_the_encoder_through_the_grid_lookup():
    model = BRICSAutoencoder(TINY, grid_backend="torch")
    images = photo_patches()
    key_code = model.encode(images)
    key_code.retain_grad()
    out = model.decoder(model.retrieval(key_code))
    F.mse_loss(out, images).backward()
    assert key_code.grad.abs().sum() > 0
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in encoder_grads)
    assert sum(g.abs().sum() for g in encoder_grads) > 0
    assert model.retrieval.grids.params.grad.abs().sum() > 0


def test_reference_and_triton_backends_reconstruct_the_same():
    torch.manual_seed(0)
    reference = BRICSAutoencoder(TINY, grid_backend="torch").eval()
    triton = BRICSAutoencoder(TINY, grid_backend="triton").eval()
    with torch.no_grad():
        reference.retrieval.grids.params.normal_()  # non-trivial grids
    triton.load_state_dict(reference.state_dict())
    images = photo_patches(count=2)
    with torch.no_grad():
        torch.testing.assert_close(triton(images).reconstruction, reference(images).reconstruction)


def test_save_and_load_round_trip_bit_exactly(tmp_path):
    model = BRICSAutoencoder(TINY, grid_backend="torch")
    with torch.no_grad():
        model.retrieval.grids.params.normal_()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = BRICSAutoencoder.from_pretrained(tmp_path, grid_backend="torch")
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    images = photo_patches(count=2)
    with torch.no_grad():
        assert torch.equal(
            model.eval()(images).reconstruction, loaded.eval()(images).reconstruction
        )


def test_loading_with_a_different_config_names_the_field(tmp_path):
    BRICSAutoencoder(TINY, grid_backend="torch").save_pretrained(tmp_path)
    other = get_preset("tiny-32", n_levels=6)
    with pytest.raises(ValueError, match="n_levels: 6 != 8"):
        BRICSAutoencoder.from_pretrained(tmp_path, config=other)


def test_models_saved_without_todays_fields_name_them(tmp_path):
    # A config.json written before grid_resolution_rule and decoder_extra_conv existed: this
    # version names them rather than guess how the model was built.
    model = BRICSAutoencoder(TINY, grid_backend="torch")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["grid_resolution_rule"], saved["decoder_extra_conv"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="saved by an earlier version") as error:
        BRICSAutoencoder.from_pretrained(tmp_path, grid_backend="torch")
    assert "['decoder_extra_conv', 'grid_resolution_rule']" in str(error.value)
    # Asked for under another preset, the error names every field that differs.
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"image_size: 256 != 32") as error:
        BRICSAutoencoder.from_pretrained(tmp_path, config=PRESETS["church-64x64x4"])
    assert "decoder_channel_rule" in str(error.value)


def test_key_value_usage_rate_is_app_e_histogram_at_the_finest_resolution():
    model = BRICSAutoencoder(TINY, grid_backend="torch")  # r_max 32
    key_codes = torch.zeros(2, 4, 8, 8)
    key_codes[:, 0] = 0.5  # slot 16 and 17
    key_codes[:, 1] = 1.0  # clipped to slot 31, and 32
    key_codes[:, 2, :4] = 0.1  # slot 3 (0.1 * 32 = 3.2) and 4; the rest slot 0 and 1
    hits = model.key_value_hits(key_codes)
    assert hits.shape == (4, 33) and hits.sum().item() == 2 * 4 * 128
    assert hits[0, 16] == hits[0, 17] == 128 and hits[1, 31] == hits[1, 32] == 128
    assert hits[2, [0, 1, 3, 4]].tolist() == [64, 64, 64, 64]
    rate = model.key_value_usage_rate(model.key_value_hits(key_codes, hits.clone()))
    torch.testing.assert_close(rate, torch.tensor([2, 2, 4, 2]) / 33)
    # The grid occupancy of the same codes is another number (coarse levels are nearly full)
    occupancy = model.grid_usage_rate(model.grid_hit_counts(key_codes))
    assert occupancy[:, 0].min() > rate.max()


def test_kl_variant_samples_in_training_and_is_deterministic_in_eval():
    model = BRICSAutoencoder(get_preset("tiny-32", key_regularization="kl"), grid_backend="torch")
    images = photo_patches(count=2)
    out = model.train()(images)
    assert out.mean.shape == out.key_code.shape == out.logvar.shape == (2, 4, 8, 8)
    assert not torch.equal(model(images).key_code, out.key_code)
    model.eval()
    torch.testing.assert_close(model.encode(images), torch.sigmoid(model(images).mean))
    assert torch.equal(model.encode(images), model.encode(images))


@pytest.mark.parametrize(
    "overrides", [dict(grid_type="hash", log2_table_size=8), dict(key_length=2)]
)
def test_hashed_and_two_value_key_variants_run(overrides):
    config = get_preset("tiny-32", **overrides)
    model = BRICSAutoencoder(config, grid_backend="torch")
    assert model(photo_patches(count=2)).reconstruction.shape == (2, 3, 32, 32)
    grids = model.retrieval.grids.config
    assert grids.in_dim == config.key_length + 2 and grids.grid_type == config.grid_type


def test_optimizers_follow_appendix_a2():
    model = BRICSAutoencoder(TINY, grid_backend="torch")
    from models import Discriminator

    ae_opt, d_opt = build_optimizers(model, Discriminator(32, 32, 64))
    assert ae_opt.defaults["betas"] == (0.0, 0.99) and ae_opt.defaults["eps"] == 1e-15
    assert d_opt.defaults["betas"] == (0.0, 0.99) and d_opt.defaults["eps"] == 1e-8
    assert ae_opt.defaults["lr"] == d_opt.defaults["lr"] == 2e-3
    assert {id(p) for p in ae_opt.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    # lazy R1 every 16 steps: D's lr x 16/17 and betas ^ (16/17) (StyleGAN2)
    _, lazy = build_optimizers(model, Discriminator(32, 32, 64), disc_reg_interval=16)
    assert lazy.defaults["lr"] == pytest.approx(2e-3 * 16 / 17)
    assert lazy.defaults["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))


def overfit(backend: str, steps: int) -> tuple[float, float, list[float]]:
    torch.manual_seed(0)
    model = BRICSAutoencoder(TINY, grid_backend=backend).to(DEVICE)
    optimizer, _ = build_optimizers(model, None)
    images = photo_patches().to(DEVICE)
    with torch.no_grad():
        before = batch_psnr(model.eval()(images).reconstruction, images)
    model.train()
    losses = []
    for _ in range(steps):
        loss = 20 * F.mse_loss(model(images).reconstruction, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = batch_psnr(model.eval()(images).reconstruction, images)
    return before, after, losses


def test_small_preset_overfits_four_photo_patches():
    # Measured (CPU, torch 2.14, seeds 0-3): PSNR 10-10.5 dB -> 18.8-20.0 dB after 100 L2 steps.
    before, after, _ = overfit("torch", steps=100)
    assert after > before + 5.0, (before, after)


def test_triton_backend_training_reduces_the_loss():
    # The interpreter is slow: a few steps, the loss of the last three below the first three.
    _, _, losses = overfit("triton", steps=12)
    assert sum(losses[-3:]) < sum(losses[:3]), losses


@pytest.mark.slow
def test_compiled_autoencoder_gives_the_eager_outputs_and_gradients():
    # train/ae.py --compile: torch.compile of the generator side (Module.compile, in place).
    # Compared in eval mode: compiled code draws its noise from another generator.
    import copy

    torch.manual_seed(0)
    eager = BRICSAutoencoder(TINY).eval()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    images = photo_patches(32, 2)
    outputs = []
    for model in (eager, compiled):
        rec = model(images).reconstruction
        (rec - images).square().mean().backward()
        outputs.append((rec, {n: p.grad for n, p in model.named_parameters()}))
    (rec_e, grads_e), (rec_c, grads_c) = outputs
    torch.testing.assert_close(rec_c, rec_e, rtol=1e-4, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()  # the state dict keeps its names
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-6, msg=name)
