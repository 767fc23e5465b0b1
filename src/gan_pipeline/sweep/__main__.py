"""python -m gan_pipeline.sweep: search one experiment's hyperparameters on Ray Tune, on this machine or a Ray
cluster, each trial the experiment trained, sampled and scored as the stages do, ASHA ending the losing
trials at the in-training checks, every trial an MLflow run nested under the sweep's run. It ends by printing
the best trial and the `dvc exp run -S ...` command that makes it a versioned DVC experiment (run for you
with --promote).

    python -m gan_pipeline.sweep --experiment cgan -S train.lr=1e-4,2e-4,5e-4 -S train.d_steps=1,2 --seeds 2
    python -m gan_pipeline.sweep --experiment cgan -S 'train.lr=loguniform(1e-4,1e-3)' --samples 8 \\
        --address auto --pull --promote

-S takes the grammar of `dvc exp run -S`, keys under experiments.<experiment> (train.lr or
experiments.cgan.train.lr): `KEY=VALUE`, `KEY=V1,V2,...` (a grid), `KEY=range(start,stop[,step])` (a grid),
and Ray Tune's `choice(...)`, `uniform(a,b)`, `quniform(a,b,q)`, `loguniform(a,b)`, `qloguniform(a,b,q)`,
`randn(mean,sd)`, `randint(a,b)`, `qrandint(a,b,q)`, `lograndint(a,b)` (drawn --samples times per grid
point). The trials rank by the experiment's monitor.score at each check (monitor.eval_every epochs; lower is
better); the best is the finished trial with the lowest evaluate score of that name. Each trial takes
runtime.threads CPUs and, where the cluster has GPUs, one GPU.

Needs the prepared data, the classifier and the Inception reference (`dvc repro reference`), at the same
paths on every node (a shared filesystem) or pulled there from the DVC remote with --pull. On a cluster the
MLflow store must be a server that every node reaches (MLFLOW_TRACKING_URI=http://...). Trials write their
outputs to STORAGE/NAME/trials/<trial id>/ on their node; Ray Tune's state and checkpoints go to
STORAGE/NAME, from which --resume goes on with an interrupted sweep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gan_pipeline.cli import run_stage
from gan_pipeline.errors import exit_on_error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gan_pipeline.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--experiment", required=True, help="a key of `experiments` in params.yaml")
    p.add_argument("-S", "--set", dest="space", action="append", default=[], metavar="KEY=VALUES",
                   help="a key of the search space (repeatable; grammar above)")  # fmt: skip
    p.add_argument("--seeds", type=int, help="N training seeds per point: train.seed and the next N-1")
    p.add_argument(
        "--samples", type=int, default=1, help="trials per grid point (draws of the distributions)"
    )
    p.add_argument("--address", default="local",
                   help="Ray: local (a Ray started on this machine for the sweep), auto (the cluster this "
                        "node belongs to), HOST:PORT or ray://HOST:10001")  # fmt: skip
    p.add_argument("--cpus", type=int, help="with --address local: the CPUs that Ray may use (default: all)")
    p.add_argument("--max-concurrent", type=int, help="trials at once at most (default: as resources allow)")
    p.add_argument("--gpus-per-trial", type=float, help="default: 1 where the cluster has GPUs, else 0")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha: end the trials that lose at a check; fifo: all run to the end")  # fmt: skip
    p.add_argument("--grace-checks", type=int, default=1, help="ASHA: checks every trial gets before a cut")
    p.add_argument("--reduction-factor", type=float, default=3, help="ASHA: 1/this of the trials go on")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of a trial whose process died")
    p.add_argument("--name", help="the sweep's name (default: <experiment>-<UTC time>)")
    p.add_argument("--storage", type=Path, default=Path("sweeps"), help="folder of the sweeps' state")
    p.add_argument("--resume", action="store_true", help="go on with the interrupted sweep --name")
    p.add_argument("--pull", action="store_true", help="`dvc pull` the inputs a node lacks from the remote")
    p.add_argument("--promote", action="store_true", help="run the best trial's `dvc exp run` at the end")
    p.add_argument("--targets", nargs="+", default=[], help="the stages that --promote's `dvc exp run` runs")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--data", type=Path, help="prepared HDF5 file (default: data/prepared/<its data>.h5)")
    p.add_argument("--stats", type=Path, help="its stats JSON (default: beside it, .stats.json)")
    p.add_argument("--classifier", type=Path, default=Path("models/classifier.safetensors"))
    p.add_argument("--classifier-metrics", type=Path, default=Path("metrics/classifier.json"))
    p.add_argument("--inception-reference", type=Path, default=Path("data/reference/inception_test.npz"))
    return p


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.resume and not args.name:
        parser().error("--resume: name the sweep to go on with (--name)")
    # Ray, torch and mlflow load after parsing, so that --help answers at once.
    from gan_pipeline.sweep.driver import sweep

    sweep(args)


if __name__ == "__main__":
    run_stage(main)
