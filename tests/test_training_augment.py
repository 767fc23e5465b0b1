"""DiffAugment: each transform against hand-computed images, the draws replayed from the generator, the
gradient through it, and the GAN step that applies it to everything D sees."""

from __future__ import annotations

import pytest
import torch
from configs import experiment_config

from gan_pipeline.config.schema import DIFFAUGMENT_POLICIES
from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.training.augment import (
    POLICIES,
    DiffAugment,
    brightness,
    contrast,
    cutout,
    saturation,
    translate,
)
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.losses import Bce
from gan_pipeline.training.steps import StepBatch, gan_step

IMAGE = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).view(1, 1, 3, 3)


def test_the_schema_knows_the_policies_that_augment_implements():
    assert tuple(POLICIES) == DIFFAUGMENT_POLICIES


@pytest.mark.parametrize(
    ("shift_x", "shift_y", "expected"),
    [
        (0, 0, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
        (1, 0, [[0, 1, 2], [0, 4, 5], [0, 7, 8]]),
        (-1, 0, [[2, 3, 0], [5, 6, 0], [8, 9, 0]]),
        (0, 1, [[0, 0, 0], [1, 2, 3], [4, 5, 6]]),
        (1, -1, [[0, 4, 5], [0, 7, 8], [0, 0, 0]]),
        (3, 0, [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
    ],
)
def test_translate_moves_a_known_image_by_the_shift_and_fills_what_it_uncovers(shift_x, shift_y, expected):
    moved = translate(IMAGE, torch.tensor([shift_x]), torch.tensor([shift_y]), fill=0.0)
    assert torch.equal(moved, torch.tensor(expected, dtype=torch.float32).view(1, 1, 3, 3))


def test_translate_shifts_each_image_of_a_batch_and_each_channel_alike_by_its_own_shift():
    batch = torch.cat([IMAGE, -IMAGE]).repeat(1, 2, 1, 1)  # (2, 2, 3, 3): two images, two equal channels
    moved = translate(batch, torch.tensor([1, 0]), torch.tensor([0, -1]), fill=0.5)
    first = torch.tensor([[0.5, 1, 2], [0.5, 4, 5], [0.5, 7, 8]])
    second = torch.tensor([[-4.0, -5, -6], [-7, -8, -9], [0.5, 0.5, 0.5]])
    assert torch.equal(moved, torch.stack([first, first, second, second]).view(2, 2, 3, 3))


@pytest.mark.parametrize(
    ("center_x", "center_y", "size", "hole"),
    [
        # centre (row 1, col 2) of a 2x2 square: top-left corner (0, 1)
        (2, 1, (2, 2), [(0, 1), (0, 2), (1, 1), (1, 2)]),
        # clipped at the top-left corner: rows -1..0, cols -1..0
        (0, 0, (2, 2), [(0, 0)]),
        # clipped at the bottom-right: centre (4, 4) of a 4x4 image, rows 3..4, cols 3..4
        (4, 4, (2, 2), [(3, 3)]),
        # an odd 3x1 rectangle around (row 2, col 1): rows 1..3, col 1
        (1, 2, (3, 1), [(1, 1), (2, 1), (3, 1)]),
    ],
)
def test_cutout_sets_exactly_the_expected_rectangle(center_x, center_y, size, hole):
    image = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    expected = image.clone()
    for row, col in hole:
        expected[0, 0, row, col] = -3.0
    out = cutout(image, torch.tensor([center_x]), torch.tensor([center_y]), size, fill=-3.0)
    assert torch.equal(out, expected)


def test_brightness_contrast_and_saturation_of_2x2_images_equal_the_hand_values():
    gray = torch.tensor([[0.0, 1.0], [2.0, 5.0]]).view(1, 1, 2, 2)
    assert torch.equal(
        brightness(gray, torch.tensor([0.25])), torch.tensor([[0.25, 1.25], [2.25, 5.25]]).view(1, 1, 2, 2)
    )
    # the image's mean is 2: (x - 2) * 0.5 + 2
    assert torch.equal(
        contrast(gray, torch.tensor([0.5])), torch.tensor([[1.0, 1.5], [2.0, 3.5]]).view(1, 1, 2, 2)
    )
    # RGB pixels (0, 3, 6), (1, 1, 1), (2, 0, 4), (-3, 0, 3): channel means 3, 1, 2, 0
    rgb = torch.tensor([[[0.0, 1.0], [2.0, -3.0]], [[3.0, 1.0], [0.0, 0.0]], [[6.0, 1.0], [4.0, 3.0]]])
    spread = saturation(rgb[None], torch.tensor([2.0]))[0]
    assert torch.equal(
        spread,
        torch.tensor([[[-3.0, 1.0], [2.0, -6.0]], [[3.0, 1.0], [-2.0, 0.0]], [[9.0, 1.0], [6.0, 6.0]]]),
    )
    grayed = saturation(rgb[None], torch.tensor([0.0]))[0]
    assert torch.equal(grayed, torch.tensor([[3.0, 1.0], [2.0, 0.0]]).expand(3, 2, 2))
    # one channel: its mean is the pixel, saturation the identity
    assert torch.equal(saturation(gray, torch.tensor([1.7])), gray)


def test_brightness_contrast_and_saturation_act_per_image():
    images = torch.tensor([[0.0, 2.0], [4.0, 6.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    out = contrast(brightness(images, torch.tensor([1.0, -1.0])), torch.tensor([1.0, 0.0]))
    assert torch.equal(out[0], images[0] + 1)
    assert torch.equal(out[1], torch.full((1, 2, 2), 2.0))  # contrast 0: every pixel the image's mean


def _replay(seed: int):
    return torch.Generator().manual_seed(seed)


def test_color_draws_brightness_saturation_and_contrast_per_image_scaled_to_the_value_range():
    rgb = torch.rand(4, 3, 5, 5, generator=_replay(9))
    for low, high in ((-1.0, 1.0), (0.0, 1.0)):
        out = DiffAugment("color", (low, high))(rgb, _replay(0))
        g = _replay(0)
        offset = (torch.rand(4, generator=g) - 0.5) * (high - low) / 2
        factor_s = torch.rand(4, generator=g) * 2
        factor_c = torch.rand(4, generator=g) + 0.5
        expected = contrast(saturation(brightness(rgb, offset), factor_s), factor_c)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_color_on_one_channel_skips_saturation_and_draws_nothing_for_it():
    gray = torch.rand(4, 1, 5, 5, generator=_replay(9))
    g = _replay(0)
    out = DiffAugment("color", (-1.0, 1.0))(gray, g)
    replay = _replay(0)
    offset = torch.rand(4, generator=replay) - 0.5
    factor_c = torch.rand(4, generator=replay) + 0.5
    torch.testing.assert_close(out, contrast(brightness(gray, offset), factor_c), rtol=1e-6, atol=1e-6)
    assert torch.equal(g.get_state(), replay.get_state())


def test_translation_shifts_by_up_to_an_eighth_filled_with_the_middle_of_the_value_range():
    images = torch.rand(64, 1, 28, 28, generator=_replay(9))
    for value_range, middle in (((-1.0, 1.0), 0.0), ((0.0, 1.0), 0.5)):
        out = DiffAugment("translation", value_range)(images, _replay(0))
        g = _replay(0)
        shift_x = torch.randint(-4, 5, (64,), generator=g)  # int(28 / 8 + 0.5) = 4
        shift_y = torch.randint(-4, 5, (64,), generator=g)
        assert torch.equal(out, translate(images, shift_x, shift_y, middle))
        assert set(shift_x.tolist()) == set(range(-4, 5))  # the whole range is drawn


def test_cutout_cuts_half_the_size_at_a_drawn_centre_filled_with_the_middle_of_the_value_range():
    images = torch.rand(64, 3, 28, 28, generator=_replay(9))
    out = DiffAugment("cutout", (0.0, 1.0))(images, _replay(0))
    g = _replay(0)
    center_x = torch.randint(0, 29, (64,), generator=g)  # a side of 14 (even): centres 0..28
    center_y = torch.randint(0, 29, (64,), generator=g)
    assert torch.equal(out, cutout(images, center_x, center_y, (14, 14), 0.5))
    holes = (out == 0.5).all(dim=1).sum(dim=(1, 2))
    assert holes.max().item() == 14 * 14  # a square fully inside
    assert holes.min().item() >= 7 * 7  # at worst a quarter of it, at a corner


def test_policies_apply_in_the_order_given_and_unknown_ones_are_refused():
    images = torch.rand(8, 3, 8, 8, generator=_replay(9))
    out = DiffAugment("cutout, translation", (-1.0, 1.0))(images, _replay(0))
    g = _replay(0)
    cut = DiffAugment("cutout", (-1.0, 1.0))(images, g)
    assert torch.equal(out, DiffAugment("translation", (-1.0, 1.0))(cut, g))
    with pytest.raises(
        ValueError, match="unknown DiffAugment policy 'flip' \\(expected color, translation, cutout\\)"
    ):
        DiffAugment("translation,flip", (-1.0, 1.0))


def test_the_gradient_flows_through_every_policy():
    x = torch.rand(4, 3, 8, 8, generator=_replay(9), requires_grad=True)
    DiffAugment("color,translation,cutout", (-1.0, 1.0))(x, _replay(0)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum().item() > 0
    # translate and cutout pass each kept pixel's gradient on and none of the others'
    image = IMAGE.clone().requires_grad_(True)
    cutout(
        translate(image, torch.tensor([1]), torch.tensor([0]), 0.0),
        torch.tensor([1]),
        torch.tensor([0]),
        (1, 1),
        0.0,
    ).sum().backward()
    # column 2 leaves the image, and (0, 1) (the pixel from (0, 0)) is cut out
    assert torch.equal(
        image.grad, torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    )


def test_augment_works_on_the_images_device_and_dtype():
    images = torch.rand(4, 3, 8, 8, generator=_replay(9)).to(torch.bfloat16)
    out = DiffAugment("color,translation,cutout", (-1.0, 1.0))(images, _replay(0))
    assert (out.dtype, out.device, out.shape) == (torch.bfloat16, images.device, images.shape)


class _Recorder:
    """An augment callable that records what it is given and transforms with a fixed function."""

    def __init__(self, transform=lambda x: x):
        self.transform, self.seen = transform, []

    def __call__(self, images, rng):
        self.seen.append((images.shape, images.requires_grad))
        return self.transform(images)


def _step_objects(name="dcgan28", seed=0):
    torch.manual_seed(seed)
    generator, discriminator = build_gan(name, 8, init_std=0.02)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    return generator, discriminator, opt_g, opt_d


def test_the_step_augments_the_reals_and_the_fakes_in_ds_update_and_gs():
    generator, discriminator, opt_g, opt_d = _step_objects()
    real, z = torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 8)
    for update_g, calls in ((False, 2), (True, 3)):
        recorder = _Recorder()
        gan_step(
            generator,
            discriminator,
            opt_g,
            opt_d,
            StepBatch(real, (), (), z, update_g, augment=recorder),
            Bce(),
        )
        assert len(recorder.seen) == calls
        # the reals, the detached fakes and, for G's update, the fakes with their graph back to G
        assert [grad for _, grad in recorder.seen] == [False, False, True][:calls]


def test_gs_gradient_flows_through_the_augmentation():
    """An augmentation that sends every image to 0 leaves G no gradient: G's loss goes through it."""
    real, z = torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 8)
    for transform, moves in ((lambda x: x, True), (lambda x: x * 0, False)):
        generator, discriminator, opt_g, opt_d = _step_objects()
        batch = StepBatch(real, (), (), z, augment=_Recorder(transform))
        gan_step(generator, discriminator, opt_g, opt_d, batch, Bce())
        grads = [p.grad for p in generator.parameters()]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum().item() > 0 for g in grads) == moves


def _augmented_step(seed: int, policy: str | None):
    generator, discriminator, opt_g, opt_d = _step_objects()
    real, z = torch.rand(8, 1, 28, 28, generator=_replay(5)) * 2 - 1, torch.randn(8, 8, generator=_replay(6))
    augment = DiffAugment(policy, (-1.0, 1.0)) if policy else None
    rng = _replay(seed)
    stats = gan_step(
        generator, discriminator, opt_g, opt_d, StepBatch(real, (), (), z, rng=rng, augment=augment), Bce()
    )
    return stats, generator.state_dict(), rng.get_state()


def test_a_step_with_diffaugment_is_deterministic_for_a_fixed_generator():
    policy = "color,translation,cutout"
    stats, weights, state = _augmented_step(0, policy)
    again, weights_again, state_again = _augmented_step(0, policy)
    other, _, _ = _augmented_step(1, policy)
    plain, _, plain_state = _augmented_step(0, None)
    assert stats == again
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert torch.equal(state, state_again)
    assert stats != other and stats != plain
    assert torch.equal(plain_state, _replay(0).get_state())  # off: no random number drawn


@pytest.mark.parametrize("name", ["mlp_gan", "cgan", "dcgan28"])
def test_diffaugment_trains_the_mlp_gans_too_whose_d_flattens_the_image(name):
    """Every G makes (N, C, H, W) images and every D takes them (the MLPs flatten inside), so translation
    and cutout need no reshaping for any model."""
    low, high = GAN_MODELS[name].value_range
    g = _replay(1)
    images = to_float(torch.randint(0, 256, (32, 28, 28), generator=g, dtype=torch.uint8), (low, high))
    exp = experiment_config(
        name, latent_dim=8, epochs=1, lr=2e-4, batch_size=16, diffaugment="color,translation,cutout"
    )
    result = train_gan(exp, TensorBatches(images, torch.arange(32) % 10, 16))
    assert result.steps == 2
    assert all(torch.isfinite(torch.tensor(row["loss_d"])) for row in result.history)
