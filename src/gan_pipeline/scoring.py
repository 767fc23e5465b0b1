"""The sample and evaluate stages' work in one process: a trained generator's fixed-seed samples, scored
against the prepared file's test split as the evaluate stage scores them (no MLflow, no DVC outputs). For
code that trains in-process and needs the stages' numbers: benchmarks and sweep trials."""

from __future__ import annotations

from pathlib import Path

from gan_pipeline.config import Params
from gan_pipeline.evaluation import Evaluation, evaluate_samples
from gan_pipeline.io import read_json
from gan_pipeline.sampling import generate, load_generator, save_samples


def sample_and_score(params: Params, generator: Path, samples: Path, data: Path, classifier: Path,
                     classifier_metrics: Path, inception_reference: Path) -> Evaluation:  # fmt: skip
    """Draw params.sample.n_samples images from the generator weights file `generator` with sample.seed,
    write them to `samples` (the sample stage's .npz) and score them with the evaluate params."""
    module, spec, model = load_generator(generator)
    images, labels = generate(module, spec, model["latent_dim"], params.sample.n_samples, params.sample.seed)
    save_samples(samples, images, labels)
    floor = read_json(classifier_metrics)["fid_classifier_real_floor"]
    return evaluate_samples(data, samples, params.evaluate, params.sample.seed, classifier, floor,
                            inception_reference)  # fmt: skip
