# `make repro` and `make test` are the only commands a new machine needs: each creates .venv from
# pyproject.toml (pinned by requirements.lock) when it is missing or stale, then does its job.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro smoke full-mnist test lint lock clean-outputs

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
	@( set -o pipefail; $(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]' \
		2>&1 | { grep -v "is ignored" || true; } ) & pip=$$!; \
	t=0; while kill -0 $$pip 2>/dev/null; do sleep 1; t=$$((t + 1)); \
		if [ $$((t % 15)) = 0 ] && kill -0 $$pip 2>/dev/null; then echo "  still installing ($$t s)"; fi; done; \
	wait $$pip
	@touch $@

repro: $(STAMP)
	dvc repro
	dvc metrics show

# The whole pipeline on tiny settings (1 epoch per GAN with one in-training check at its end, a 1-epoch
# classifier, 200 samples, 20 Inception images), as a DVC experiment in a temporary copy: the workspace's
# outputs stay as they are. Its MLflow runs land in this folder's store; `dvc exp show` lists it,
# `dvc exp apply <name>` brings its outputs (grids, reports/index.html) into the workspace.
SMOKE_EXPERIMENTS = $(shell $(BIN)/python -c "import yaml; print(*yaml.safe_load(open('params.yaml'))['experiments'])")
SMOKE_SET = -S classifier.epochs=1 -S sample.n_samples=200 -S train_defaults.batch_size=256 \
	-S monitor_defaults.n_samples=100 -S evaluate.inception_n=20 \
	$(foreach exp,$(SMOKE_EXPERIMENTS),-S experiments.$(exp).train.epochs=1 -S ++experiments.$(exp).train.batch_size=256 \
		-S ++experiments.$(exp).monitor.eval_every=1)
smoke: $(STAMP)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
		dvc exp run --temp --name smoke-$$(date +%Y%m%d-%H%M%S) $(SMOKE_SET)

# The published protocol on the full MNIST (README, "Full MNIST"): dcgan28 trained on the 60,000 training
# digits and scored by TF Inception FID of 10,000 samples against the 10,000 test digits, as a DVC
# experiment in the workspace (`dvc exp show` lists it; `git checkout . && dvc checkout` goes back to the
# committed outputs). MNIST_IDX: a folder with the four idx files, copied into data/raw/mnist once.
# MONITOR_SCORE=fid_inception MONITOR_N=2000: keep-best ranks the checks by the Inception FID of MONITOR_N
# samples against the reference's 10,000 training digits (MONITOR_N images through Inception per check).
MNIST_IDX ?= ../shared/data/mnist
SEED ?= 0
MONITOR_SCORE ?= fid_classifier
MONITOR_N ?= 500
FULL_MNIST_SET = -S datasets.mnist.source=idx -S datasets.mnist.path=data/raw/mnist \
	-S datasets.mnist.split=official -S sample.n_samples=10000 -S evaluate.inception_n=10000 \
	-S runtime.threads=2 -S experiments.dcgan28.train.precision=auto \
	-S experiments.dcgan28.train.epochs=30 -S experiments.dcgan28.monitor.eval_every=1 \
	-S ++experiments.dcgan28.train.seed=$(SEED) -S ++experiments.dcgan28.monitor.score=$(MONITOR_SCORE) \
	-S ++experiments.dcgan28.monitor.n_samples=$(MONITOR_N)
FULL_MNIST_NAME = full-mnist-s$(SEED)$(if $(filter-out fid_classifier,$(MONITOR_SCORE)),-$(MONITOR_SCORE))
full-mnist: $(STAMP)
	@test -f data/raw/mnist/train-images-idx3-ubyte.gz || test -f data/raw/mnist/train-images-idx3-ubyte \
		|| { mkdir -p data/raw/mnist && cp $(MNIST_IDX)/*-ubyte* data/raw/mnist/; }
	dvc exp run --name $(FULL_MNIST_NAME) $(FULL_MNIST_SET) evaluate@dcgan28

# In CI (CI set, as root with apt) the real Fashion-MNIST idx files are installed for the 60,000-image
# test, and Debian's chromium for the browser checks of the plots, the report and the MLflow UI; elsewhere
# those tests say they skip and how to enable them (in CI the browser tests fail instead of skipping).
FASHION_MNIST := /usr/share/datasets/fashion-mnist
CI_APT = apt-get install -y -qq $(1) || { apt-get update -qq && apt-get install -y -qq $(1); }
test: $(STAMP)
	@if [ -n "$$CI" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		if [ ! -d $(FASHION_MNIST) ]; then \
			{ $(call CI_APT,dataset-fashion-mnist); } >/dev/null 2>&1 \
				|| echo "note: could not install dataset-fashion-mnist; its test will skip"; \
		fi; \
		if ! command -v chromium >/dev/null; then \
			{ $(call CI_APT,chromium); } >/dev/null 2>&1 || echo "note: could not install chromium"; \
		fi; \
	fi
	pytest

lint: $(STAMP)
	ruff check src stages tests
	ruff format --check src stages tests

# Refresh the pins after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^gan-pipeline' > requirements.lock
