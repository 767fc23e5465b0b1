"""evaluate: score one experiment's samples against the test split of a prepared file (its reference set:
params.yaml's references.<experiment>, which dvc.yaml passes as --data), each metric named after its
feature backend. Digits (with --classifier, --classifier-metrics and --inception-reference): the digit
classifier's features (fid_classifier beside the real-vs-real floor, KID,
precision/recall/density/coverage, for conditional models intra-class FID), the standard TF Inception's
(fid_inception, kid_inception, prdc_inception_*, on evaluate.inception_n samples against the reference
stage's test features), digit coverage, the class histogram and its KL from uniform, and for conditional
models label accuracy. Faces: the Inception metrics on evaluate.inception_n samples vs as many seeded test
faces of the reference set, and the per-channel mean/std of samples vs real; the info names the reference
set and how many of its images were scored and, beside an FID of 2,048 images a side or fewer, says that
it is rank-deficient. Writes the scores as DVC metrics, what describes them (sample sizes, feature
backends, the environment; no timings, since info files are kept in git) as an info file and, for digits,
the class histogram (with each digit's intra-class FID for conditional models) as a DVC plot; logs the
scores to the MLflow run as metrics (linked to its generator model and the reference set, a dataset input of
the run), the evaluate params, the info (throughput included) as tags and the histogram as an artifact, and
registers the generator as a version of the experiment's registered model, moving its `champion` alias when
the score beats the champion's (README: "MLflow")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This checkout's own package first: the editable install points at the workspace's src/, which a
# `dvc exp run --temp/--queue` copy must not run (README, "Sweeps with the DVC queue").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gan_pipeline.cli import run_stage
from gan_pipeline.errors import exit_on_error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (evaluate, sample.seed, tracking)")
    p.add_argument(
        "--data", type=Path, required=True, help="prepared HDF5 file whose test split scores the samples"
    )
    p.add_argument("--samples", type=Path, required=True, help="samples .npz from the sample stage")
    p.add_argument("--run", type=Path, required=True, help="run.json from the train stage")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write (scores only)")
    p.add_argument(
        "--info", type=Path, required=True, help="info JSON to write (sizes, backends, environment)"
    )
    digits = p.add_argument_group("digits only")
    digits.add_argument("--classifier", type=Path, help="classifier weights")
    digits.add_argument("--classifier-metrics", type=Path, help="classifier metrics JSON (its FID floor)")
    digits.add_argument("--inception-reference", type=Path, help="reference stage's Inception features .npz")
    digits.add_argument("--class-histogram", type=Path, help="CSV to write: digit, count[, fid_classifier]")
    return p


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.classifier is not None and args.class_histogram is None:
        p.error("--class-histogram: digits (--classifier) need a CSV to write their class histogram to")
    # torch and mlflow load after parsing, so that --help answers at once.
    from gan_pipeline import tracking
    from gan_pipeline.config import flatten, load_params
    from gan_pipeline.data.loading import prepared_dataset
    from gan_pipeline.runtime import use_threads

    params = load_params(args.params)
    use_threads(params.runtime.threads)
    # The run and its store are checked before anything is computed or replaced; what fails to reach the
    # store later waits in the journal beside the model.
    run = tracking.read_run_record(args.run)
    journal = args.run.parent / tracking.JOURNAL_NAME
    with tracking.attach(params.tracking, run["run_id"], journal=journal, source=str(args.run)) as mlflow_run:
        from gan_pipeline.evaluation import summary  # the metrics' libraries: seconds, once they are needed

        reference = prepared_dataset(args.data, "test")  # the reference set's name and hash, no images
        mlflow_run.log_stage_params(flatten(params.evaluate, "evaluate."))
        mlflow_run.log_dataset(reference, "evaluation")
        result, info = _evaluate_and_write(args, params, run)
        # the scores go to the run and its generator model, which is then registered (see tracking.py)
        mlflow_run.log_scores(result.metrics, run["steps"], reference)
        mlflow_run.set_tags(tracking.info_tags(info))
        mlflow_run.register_generator(tracking.registered_model_name(params.tracking, run["experiment"]),
                                      result.metrics)  # fmt: skip
        if result.classes is not None:
            mlflow_run.log_artifact(args.class_histogram)
        for line in summary(run["experiment"], result, params.evaluate.inception_n):
            print(line)


def _evaluate_and_write(args, params, run):
    """Score the samples and write the metrics (with the kept check's step and score from run.json), the
    info and the class histogram: (the Evaluation, info)."""
    from gan_pipeline.evaluation import evaluate_samples
    from gan_pipeline.io import read_json, write_csv, write_json
    from gan_pipeline.provenance import environment, without_timings

    floor = None
    if args.classifier_metrics is not None:
        floor = read_json(args.classifier_metrics)["fid_classifier_real_floor"]
    result = evaluate_samples(args.data, args.samples, params.evaluate, params.sample.seed,
                              args.classifier, floor, args.inception_reference)  # fmt: skip
    result.metrics.update(run.get("best_metrics") or {})  # train's kept check: best_step, its score
    info = {**result.info, "environment": environment()}
    write_json(args.metrics, result.metrics)
    write_json(args.info, without_timings(info))
    if args.class_histogram is not None:  # faces have no classes: the file holds the header alone
        write_csv(args.class_histogram, result.classes or [], None if result.classes else ["digit", "count"])
    return result, info


if __name__ == "__main__":
    run_stage(main)
