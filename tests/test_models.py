"""Every registered GAN builds by name and maps latents to 28x28 images and images to one logit each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_pipeline.models import GAN_MODELS, build_gan, init_weights


@pytest.mark.parametrize("name", sorted(GAN_MODELS))
def test_shapes_and_output_range(name):
    spec = GAN_MODELS[name]
    generator, discriminator = build_gan(name, latent_dim=100)
    z, labels = torch.randn(6, 100), torch.arange(6)
    cond = (labels,) if spec.conditional else ()
    images = generator(z, *cond)
    assert images.shape == (6, *spec.image_shape)
    low, high = spec.value_range
    assert images.min() >= low and images.max() <= high
    assert discriminator(images, *cond).shape == (6,)


def test_registry_holds_the_tutorial_models():
    assert {n: s.conditional for n, s in GAN_MODELS.items()} == {
        "mlp_gan": False,
        "cgan": True,
        "dcgan28": False,
    }


def test_mlp_gan_layer_sizes_follow_the_tutorial():
    generator, discriminator = build_gan("mlp_gan", 100)
    g_sizes = [(m.in_features, m.out_features) for m in generator.modules() if isinstance(m, nn.Linear)]
    d_sizes = [(m.in_features, m.out_features) for m in discriminator.modules() if isinstance(m, nn.Linear)]
    assert g_sizes == [(100, 256), (256, 512), (512, 1024), (1024, 784)]
    assert d_sizes == [(784, 1024), (1024, 512), (512, 256), (256, 1)]


def test_cgan_label_changes_the_image_and_embedding_option_learns_the_code():
    torch.manual_seed(0)
    generator, _ = build_gan("cgan", 100)
    z = torch.randn(1, 100)
    assert not torch.equal(generator(z, torch.tensor([3])), generator(z, torch.tensor([7])))
    embedded, _ = build_gan("cgan", 100, label_embedding="embedding")
    assert any(isinstance(m, nn.Embedding) for m in embedded.modules())
    assert not any(isinstance(m, nn.Embedding) for m in generator.modules())


def test_init_weights_draws_from_n_0_std():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(500, 500), nn.BatchNorm1d(500))
    init_weights(layer, 0.02)
    weight = layer[0].weight
    assert weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert torch.equal(layer[0].bias, torch.zeros(500))
    assert layer[1].weight.mean().item() == pytest.approx(1.0, abs=5e-3)
