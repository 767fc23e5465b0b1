# `make repro` and `make test` are the only commands a new machine needs: each creates .venv from
# pyproject.toml (pinned by requirements.lock) when it is missing or stale, then does its job.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test lint lock clean-outputs

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
	@set -o pipefail; $(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]' 2>&1 \
		| { grep -v "is ignored" || true; }
	@touch $@

repro: $(STAMP)
	dvc repro
	dvc metrics show

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
