"""Remote storage against a real S3 API (moto's server on 127.0.0.1): DVC pushes the reproduced outputs,
loses its cache and outputs, pulls them back bit for bit; MLflow artifacts go to the same kind of store."""

from __future__ import annotations

import shutil

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer
from pipeline_helpers import clone_reproduced, mlflow_server, run

from gan_pipeline import tracking
from gan_pipeline.config import TrackingConfig
from gan_pipeline.provenance import file_md5

BUCKET = "gan-pipeline"


@pytest.fixture
def s3_endpoint(monkeypatch) -> str:
    """An S3 API on 127.0.0.1 with an empty bucket; credentials in the environment (as CI secrets are)."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _objects(endpoint: str, prefix: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_dvc_s3_remote_push_then_pull_into_an_empty_cache(reproduced_project, tmp_path, s3_endpoint):
    repo = clone_reproduced(reproduced_project[0], tmp_path / "project")
    run(["dvc", "remote", "add", "--local", "s3", f"s3://{BUCKET}/dvc"], repo)
    run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", s3_endpoint], repo)
    in_git = set(run(["git", "ls-files"], repo).stdout.split())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    # The outputs DVC keeps in its cache (not `cache: false` ones such as the persisted checkpoints).
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    cached = {
        o["path"]: o["md5"]
        for s in lock.values()
        for o in s.get("outs", [])
        if o["path"] not in in_git and (cache / o["md5"][:2] / o["md5"][2:]).is_file()
    }
    assert {"data/prepared/mnist.h5", "models/cgan/generator.safetensors", "reports/index.html"} <= set(
        cached
    )

    assert any(md5.endswith(".dir") for md5 in cached.values())  # a folder out: the check grids
    before = _contents(repo, cached)

    run(["dvc", "push", "-r", "s3"], repo)
    assert len(_objects(s3_endpoint, "dvc/")) >= len(cached)
    shutil.rmtree(repo / ".dvc" / "cache")
    for path in cached:
        target = repo / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    run(["dvc", "pull", "-r", "s3"], repo)
    assert _contents(repo, cached) == before
    assert {p: file_md5(repo / p) for p, md5 in cached.items() if not md5.endswith(".dir")} == {
        p: md5 for p, md5 in cached.items() if not md5.endswith(".dir")
    }


def _contents(repo, paths) -> dict[str, object]:
    """Each output's md5, or for a folder the md5 of each file in it."""
    return {
        path: {f.name: file_md5(f) for f in sorted((repo / path).iterdir())}
        if (repo / path).is_dir()
        else file_md5(repo / path)
        for path in paths
    }


def test_mlflow_artifacts_go_to_s3_through_a_tracking_server(tmp_path, s3_endpoint, monkeypatch):
    server_env = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    args = ["server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    args += ["--artifacts-destination", f"s3://{BUCKET}/mlartifacts"]
    with mlflow_server(args, tmp_path, env=server_env) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        cfg = TrackingConfig(experiment_name="gan-pipeline", retries=2, retry_backoff_s=1)
        with tracking.run(cfg, "mlp_gan", {"train.lr": 0.0002}, {}, root=tmp_path) as run:
            (tmp_path / "grid.png").write_bytes(b"\x89PNG not really")
            run.log_artifact(tmp_path / "grid.png")
    keys = _objects(s3_endpoint, "mlartifacts/")
    assert any(key.endswith(f"{run.id}/artifacts/grid.png") for key in keys), keys
