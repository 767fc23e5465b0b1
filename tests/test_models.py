"""Every registered GAN builds by name and maps latents to images of its shape (28x28 digits, RGB faces) and
images to one logit each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gan_pipeline.models import GAN_MODELS, build_gan, init_weights

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(GAN_MODELS))
def test_shapes_and_output_range(name):
    spec = GAN_MODELS[name]
    generator, discriminator = build_gan(name, latent_dim=100)
    torch.manual_seed(0)
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
        "convgan128": False,
        "dcgan64": False,
        "dcgan96": False,
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


def test_convgan128_follows_the_tutorial_celeba_gan():
    generator, discriminator = build_gan("convgan128", 100)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (3, 256, (8, 8), (2, 2)),
        (256, 256, (8, 8), (2, 2)),
        (256, 3, (8, 8), (2, 2)),
    ]
    (head,) = [m for m in discriminator.modules() if isinstance(m, nn.Linear)]
    assert (head.in_features, head.out_features) == (300, 1)  # 3 x 10 x 10 after three k8 s2 convs of 128
    assert not any(isinstance(m, nn.Sigmoid) for m in discriminator.modules())  # logits out
    (seed,) = [m for m in generator.modules() if isinstance(m, nn.Linear)]
    assert (seed.in_features, seed.out_features) == (100, 3 * 11 * 11)
    last = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
    assert (last.out_channels, last.padding) == (3, (1, 1))
    assert isinstance(list(generator.modules())[-1], nn.Sigmoid)


@pytest.mark.parametrize(("name", "outer"), [("dcgan64", (4, 2)), ("dcgan96", (5, 3))])
def test_face_dcgans_are_the_standard_dcgan_with_their_outer_layers(name, outer):
    generator, discriminator = build_gan(name, 100)
    g = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    d = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in g] == [512, 256, 128, 64, 3]
    assert [m.out_channels for m in d] == [64, 128, 256, 512, 1]
    assert (g[-1].kernel_size[0], g[-1].stride[0]) == outer == (d[0].kernel_size[0], d[0].stride[0])
    assert all(m.kernel_size == (4, 4) for m in g[:-1] + d[1:])
    assert isinstance(list(generator.modules())[-1], nn.Tanh)
    assert sum(isinstance(m, nn.LeakyReLU) for m in discriminator.modules()) == 4


def test_every_card_has_a_builder_and_every_builder_a_card():
    from gan_pipeline.model_cards import MODEL_CARDS

    assert set(GAN_MODELS) == set(MODEL_CARDS)
    for name, spec in GAN_MODELS.items():
        assert spec.card is MODEL_CARDS[name]  # test_shapes_and_output_range checks the card's facts


def test_reading_params_loads_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from gan_pipeline.config import load_params; load_params('params.yaml');"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def _normed_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize("name", sorted(GAN_MODELS))
def test_spectral_norm_makes_the_largest_singular_value_of_each_d_weight_one(name):
    """With weights ~ N(0, 0.5) every plain weight's spectral norm is well above 1; normalized, it is 1 once
    the power iteration (one step per use of the weight in training mode) has converged."""
    torch.manual_seed(0)
    plain = build_gan(name, 8, init_std=0.5)[1]
    torch.manual_seed(0)
    generator, normed = build_gan(name, 8, init_std=0.5, spectral_norm=True)
    assert not any(parametrize.is_parametrized(m) for m in generator.modules())
    layers = _normed_layers(normed)
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    normed.train()
    for _ in range(150):
        for layer in layers:
            layer.weight  # noqa: B018 -- each access in training mode is one power iteration
    normed.eval()
    for layer, before in zip(layers, _normed_layers(plain), strict=True):
        assert torch.linalg.matrix_norm(before.weight.flatten(1), ord=2).item() > 2
        assert torch.linalg.matrix_norm(layer.weight.flatten(1), ord=2).item() == pytest.approx(1.0, abs=1e-2)


def test_spectral_norm_comes_after_the_init_and_keeps_ds_batchnorm():
    torch.manual_seed(0)
    _, plain = build_gan("dcgan28", 8, init_std=0.02)
    torch.manual_seed(0)
    _, normed = build_gan("dcgan28", 8, init_std=0.02, spectral_norm=True)
    originals = [m.parametrizations.weight.original for m in _normed_layers(normed)]
    assert all(torch.equal(a, m.weight) for a, m in zip(originals, _normed_layers(plain), strict=True))
    batchnorms = [type(m) for m in normed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms == [nn.BatchNorm2d, nn.BatchNorm2d]


def test_a_spectral_normed_d_saves_its_power_iteration_vectors_and_loads_them_back(tmp_path):
    from gan_pipeline.io import load_weights, save_weights

    torch.manual_seed(0)
    _, normed = build_gan("dcgan28", 8, init_std=0.02, spectral_norm=True)
    normed.train()
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    normed(images)  # one power iteration per layer: u and v move on from their start
    save_weights(tmp_path / "d.safetensors", normed, {"name": "dcgan28"})
    state, _ = load_weights(tmp_path / "d.safetensors")
    assert {k.rsplit(".", 1)[-1] for k in state if ".parametrizations.weight." in k} == {
        "original",
        "_u",
        "_v",
    }
    assert sum(k.endswith("._u") for k in state) == len(_normed_layers(normed))
    torch.manual_seed(1)  # other start vectors, replaced by the loaded ones
    _, fresh = build_gan("dcgan28", 8, init_std=0.02, spectral_norm=True)
    fresh.load_state_dict(state)
    normed.eval(), fresh.eval()
    assert torch.equal(normed(images), fresh(images))
