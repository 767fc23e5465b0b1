"""The sweep's driver: check the params, the space, the inputs and the MLflow store; open the sweep's MLflow
run; run the trials on Ray Tune (ASHA or FIFO); print and record the trials, the best one and the
`dvc exp run` command that makes it a DVC experiment, and run that with --promote."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from gan_pipeline.config import experiment, parse_params, read_yaml
from gan_pipeline.errors import DataError, ParamsError, PipelineError
from gan_pipeline.io import write_json
from gan_pipeline.store import repo_root, sqlite_path, tracking_uri
from gan_pipeline.sweep.space import (
    Axis,
    check_space,
    dvc_set_args,
    parse_space,
    to_tune,
    trial_overrides,
    with_overrides,
)
from gan_pipeline.sweep.trial import CRASH_ENV, TrialSetup, run_trial

SUMMARY_FILE = "summary.json"
# A Ray started for one sweep on this machine: small, no dashboard, its sockets under a short path
# (Unix socket paths must stay under 108 characters).
LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2
# Ray Tune's own console output off (the legacy reporter honours verbose=0), and its warning about
# frequent experiment-state snapshots, which every report with a checkpoint triggers on small trials.
RAY_QUIET = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep that `args` (the CLI's) describe; return the summary it writes and prints."""
    root = repo_root()
    source = str(args.params)
    try:
        raw = read_yaml(Path(args.params).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{source}: file not found") from None
    params = parse_params(raw, source)
    exp = experiment(params, args.experiment)
    key = f"experiments.{args.experiment}"
    if exp.monitor.eval_every is None:
        raise ParamsError(f"{source}: {key}.monitor.eval_every: a sweep ranks its trials at the in-training "
                          "checks, got null (set a number of epochs)")  # fmt: skip
    if args.seeds is not None and args.seeds < 1:
        raise ParamsError(f"--seeds: expected a number >= 1, got {args.seeds}")
    axes = parse_space(args.space, args.experiment, args.seeds, exp.train.seed)
    check_space(raw, args.experiment, axes, source)
    uri = tracking_uri(root)
    _check_store_reachable(uri, args.address)
    inputs = _inputs(args, root, f"data/prepared/{exp.data}.h5")
    if not args.pull:
        _check_inputs(inputs if params.evaluate.inception_n else inputs[:-1])  # inception_n 0: not read
    name = args.name or f"{args.experiment}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    storage = (root / args.storage).resolve() if not args.storage.is_absolute() else args.storage

    from gan_pipeline import tracking

    sweep_params = {
        "sweep.experiment": args.experiment,
        "sweep.space": " ".join(a.text for a in axes),
        "sweep.samples": args.samples,
        "sweep.scheduler": args.scheduler,
        "sweep.grace_checks": args.grace_checks,
        "sweep.reduction_factor": args.reduction_factor,
        "sweep.address": args.address,
    }
    tags = {"experiment": args.experiment, "mlflow.source.name": "gan_pipeline.sweep", "sweep": name}
    started = time.monotonic()
    with tracking.run(params.tracking, name, sweep_params, tags, root=root) as parent:
        trials_out = storage / name / "trials"
        setup = TrialSetup(args.experiment, raw, source, root, *inputs, trials_out, uri, parent.id,
                           name, args.pull)  # fmt: skip
        results = _tune(args, setup, axes, _reports_per_trial(raw, args.experiment, axes), storage, name)
        trials = [_trial_row(r, axes) for r in results]
        _end_trial_runs(params.tracking, root, trials)
        metric = exp.monitor.score
        best = _best(trials, metric)
        command = _promote_command(raw, args.experiment, name, best, args.targets)
        summary = {
            "name": name,
            "experiment": args.experiment,
            "metric": metric,
            "seconds": round(time.monotonic() - started, 1),
            "trials": trials,
            "best": best,
            "promote": command,
            "mlflow_run_id": parent.id,
        }
        write_json(storage / name / SUMMARY_FILE, summary)
        if best is not None:
            parent.log_metrics({f"best_{metric}": best["metric"]})
            parent.set_tags({"best_trial": best["trial_id"], "best_run_id": best["run_id"],
                             "promote_command": shlex.join(command)})  # fmt: skip
    for line in _summary_lines(summary, axes):
        print(line)
    if args.promote and best is not None:
        _promote(command, root)
    return summary


class _TrialFailed(Exception):
    """Raised inside a reopened trial run so that it ends FAILED."""


def _end_trial_runs(cfg: Any, root: Path, trials: list[dict[str, Any]]) -> None:
    """End the runs of the trials that did not finish: Tune ends a stopped trial's process soon after its
    last report, and a failed trial's process died, sometimes before its run was marked ended. Reopened,
    tagged, and ended FINISHED (stopped by the scheduler) or FAILED."""
    from gan_pipeline import tracking

    for trial in trials:
        if trial["completed"] or not trial["run_id"]:
            continue
        stopped = trial["stopped_early"]
        tags = {"sweep.stopped_early": str(stopped).lower()}
        if stopped:
            tags["sweep.stopped_at_step"] = str(trial["steps"])
        try:
            with tracking.run(cfg, trial["trial_id"], {}, {}, trial["run_id"], root) as run:
                run.set_tags(tags)
                if not stopped:
                    raise _TrialFailed
        except _TrialFailed:
            pass


def _check_store_reachable(uri: str, address: str) -> None:
    """On a cluster every node logs its trials: a local store (SQLite, a file store) is one node's."""
    if address == "local":
        return
    if sqlite_path(uri) is not None or uri.startswith("file:") or "://" not in uri:
        raise PipelineError(
            f"MLflow store {uri}: a sweep on the Ray cluster at --address {address} logs its trials from "
            "every node, and this local store is on this machine alone: run an MLflow server that every "
            "node reaches (mlflow server --host 0.0.0.0 --backend-store-uri sqlite:///mlflow.db) and set "
            "MLFLOW_TRACKING_URI=http://<its host>:5000"
        )


def _inputs(args: argparse.Namespace, root: Path, data: str) -> tuple[Path, ...]:
    """The trials' input files as absolute paths (the same on every node): data, stats, classifier, its
    metrics, the Inception reference."""
    data_path = args.data or Path(data)
    stats = args.stats or data_path.with_name(data_path.name.removesuffix(".h5") + ".stats.json")
    paths = (data_path, stats, args.classifier, args.classifier_metrics, args.inception_reference)
    return tuple(p if p.is_absolute() else (Path.cwd() / p).resolve() for p in paths)


def _check_inputs(paths: tuple[Path, ...]) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(
            f"{', '.join(missing)}: not found (make them with `dvc repro reference`, fetch them with "
            "`dvc pull`, or let each node pull them with --pull)"
        )


def _reports_per_trial(raw: dict, name: str, axes: list[Axis]) -> int:
    """The most reports a trial makes (its checks; the last one at the final step is the final report):
    ASHA's max_t, over the grid's and the distributions' corners of epochs and eval_every."""
    most = 1
    for axis in [a for a in axes if a.key in ("train.epochs", "monitor.eval_every")] or [None]:
        for value in axis.corners() if axis else [None]:
            overrides = {axis.key: value} if axis else {}
            exp = with_overrides(raw, name, overrides, "params").experiments[name]
            epochs, every = exp.train.epochs, exp.monitor.eval_every
            most = max(most, epochs // every + (1 if epochs % every else 0))
    return most


def _tune(args: argparse.Namespace, setup: TrialSetup, axes: list[Axis], max_t: int, storage: Path,
          name: str) -> list[Any]:  # fmt: skip
    """Run (or with --resume, go on with) the trials on Ray; their Tune results."""
    for key, value in RAY_QUIET.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import tune

    temp = _start_ray(args)
    try:
        threads = parse_params(setup.raw_params, setup.params_source).runtime.threads
        gpus = args.gpus_per_trial
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, setup=setup), {"cpu": threads, "gpu": gpus}
        )
        path = storage / name
        if args.resume:
            if not tune.Tuner.can_restore(str(path)):
                raise PipelineError(f"--resume: {path} holds no sweep to go on with")
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True, param_space=to_tune(axes))
        else:
            if (path / "tuner.pkl").exists():
                raise PipelineError(f"--name {name}: {path} holds a sweep already (--resume goes on with it)")
            tuner = tune.Tuner(trainable, param_space=to_tune(axes), tune_config=_tune_config(args, max_t),
                               run_config=_run_config(args, storage, name))  # fmt: skip
        return list(tuner.fit())
    finally:
        ray.shutdown()
        if temp is not None:  # the local Ray's sessions and logs; the sweep's state is in `storage`
            shutil.rmtree(temp, ignore_errors=True)


def _start_ray(args: argparse.Namespace) -> str | None:
    """Connect to the cluster at --address, or start a Ray on this machine (local): the local Ray's
    temporary folder, None for a cluster."""
    import ray

    passed = {k: os.environ[k] for k in ("GAN_PIPELINE_PROGRESS", CRASH_ENV) if k in os.environ}
    runtime_env = {"env_vars": passed}
    if args.address != "local":
        ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
        return None
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, runtime_env=runtime_env,
             object_store_memory=LOCAL_OBJECT_STORE_BYTES, _temp_dir=temp, _node_ip_address="127.0.0.1",
             log_to_driver=False)  # fmt: skip
    return temp


def _tune_config(args: argparse.Namespace, max_t: int) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if args.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=args.grace_checks,
                                  reduction_factor=args.reduction_factor)  # fmt: skip
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(metric="score", mode="min", scheduler=scheduler, num_samples=args.samples,
                           max_concurrent_trials=args.max_concurrent)  # fmt: skip


def _run_config(args: argparse.Namespace, storage: Path, name: str) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the trial's last report is where it resumes
        verbose=0,  # the trials' progress goes to stderr (_Progress), the summary to stdout
        callbacks=[_progress_callback()],
    )


def _progress_callback() -> Any:
    """A Tune callback printing each trial's reports and end as progress lines on stderr."""
    from ray import tune

    from gan_pipeline.runtime import progress_line

    class _Progress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress_line(
                f"sweep: trial {trial.trial_id} step {result.get('step')}: score {result.get('score')}"
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress_line(f"sweep: trial {trial.trial_id} ended")

        def on_trial_error(self, iteration, trials, trial, **info):
            progress_line(f"sweep: trial {trial.trial_id} failed (restarted up to --max-failures times)")

    return _Progress()


def _trial_row(result: Any, axes: list[Axis]) -> dict[str, Any]:
    """One trial as the summary lists it: params, last score, steps, whether ASHA stopped it, its run."""
    metrics = result.metrics or {}
    completed = bool(metrics.get("completed"))
    overrides = trial_overrides(result.config)
    return {
        "trial_id": metrics.get("trial_id") or Path(result.path).name,
        "params": {a.key: overrides.get(a.key) for a in axes},
        "score": metrics.get("score"),
        "steps": metrics.get("step"),
        "reports": metrics.get("training_iteration"),
        "resumed_from": metrics.get("resumed_from"),  # the step its last attempt started from (0: scratch)
        "stopped_early": not completed and result.error is None,
        "completed": completed,
        "error": None if result.error is None else str(result.error).strip().splitlines()[-1],
        "metrics": {k: v for k, v in metrics.items() if k in _EVALUATE_KEYS or k.startswith("best_")},
        "run_id": metrics.get("mlflow_run_id"),
    }


# The evaluate scores a summary keeps of each finished trial (the rest are in its MLflow run).
_EVALUATE_KEYS = ("fid_classifier", "kid_classifier", "coverage", "kl_from_uniform", "label_accuracy",
                  "fid_inception")  # fmt: skip


def _best(trials: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The finished trial with the lowest evaluate `metric` (the experiment's monitor.score, lower is
    better), with that value as `metric`; None when no trial finished."""
    scored = [t for t in trials if t["completed"] and _number(t["metrics"].get(metric, t["score"]))]
    if not scored:
        return None
    best = min(scored, key=lambda t: t["metrics"].get(metric, t["score"]))
    return {**best, "metric": best["metrics"].get(metric, best["score"])}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))


def _promote_command(raw: dict, experiment: str, name: str, best: dict[str, Any] | None,
                     targets: list[str]) -> list[str]:  # fmt: skip
    """The `dvc exp run` that trains the best trial's params as DVC experiment `name` (the sweep's)."""
    if best is None:
        return []
    return ["dvc", "exp", "run", "--name", name, *dvc_set_args(raw, experiment, best["params"]), *targets]


def _summary_lines(summary: dict[str, Any], axes: list[Axis]) -> list[str]:
    keys = [a.key for a in axes]
    metric = summary["metric"]
    header = ["trial", *keys, f"monitor {metric}", f"evaluate {metric}", "steps", "ended"]
    rows = []
    for t in summary["trials"]:
        ended = "ran to the end" if t["completed"] else "stopped early" if t["stopped_early"] else "failed"
        evaluated = t["metrics"].get(metric)
        rows.append([t["trial_id"], *(_cell(t["params"][k]) for k in keys), _cell(t["score"]),
                     _cell(evaluated), _cell(t["steps"]), ended])  # fmt: skip
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"sweep {summary['name']}: {len(rows)} trials in {summary['seconds']:.0f} s "
             f"(MLflow run {summary['mlflow_run_id']})"]  # fmt: skip
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
    best = summary["best"]
    if best is None:
        lines.append("no trial ran to its end: no best trial")
        return lines
    lines.append(
        f"best: trial {best['trial_id']} ({metric} {_cell(best['metric'])}, MLflow run {best['run_id']})"
    )
    lines.append(f"make it a DVC experiment: {shlex.join(summary['promote'])}")
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _promote(command: list[str], root: Path) -> None:
    """Run the best trial's `dvc exp run` in the repository; PipelineError when it fails."""
    print(f"promoting: {shlex.join(command)}", flush=True)
    proc = subprocess.run(command, cwd=root)
    if proc.returncode != 0:
        raise PipelineError(f"{shlex.join(command)} failed (exit {proc.returncode})")
    print("the experiment is in `dvc exp show`", flush=True)
